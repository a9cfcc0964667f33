"""``gtd run`` itself supervising and poking the real Claude Code (issue 7 point 1).

The daemon runs in the foreground as the test user, with the agents' tmux server
started as ``gastown-tmux.service`` starts it; every assertion is on what the
stand-in API received and on what gtd reported (its log, STATUS=, ``state.json``,
``gtd status``).
"""

from __future__ import annotations

import time

from gtd.screen import Condition
from tests import fakeapi
from tests.fakeapi import FakeAPI
from tests.realagent.conftest import StartGtd


def heartbeat_turns(api: FakeAPI) -> list[str]:
    """Every request's text that carries a heartbeat, in any message or block."""
    return [str(r.body) for r in api.requests() if "HEARTBEAT" in str(r.body)]


def test_folder_trust_dialog_waits_for_gtd_trust(api: FakeAPI, start_gtd: StartGtd) -> None:
    """In the workdir gtd made, Claude Code asks to trust it; gtd presses nothing and says so.

    Across heartbeats the same Claude Code stays at the dialog (an Enter would have
    answered "No, exit" and ended it); STATUS=, ``gtd status`` and one log line say
    it waits there, and ``gtd status`` points at ``gtd trust``. ``gtd trust deacon``
    answers for the user and restarts it; the next heartbeat's poke reaches the model.
    """
    town = start_gtd(heartbeat="1s", trusted=False)
    pid = town.wait_deacon()
    town.agent.wait_text("trust this folder")
    town.wait(lambda: town.deacon().get("condition") == "dialog", "the dialog in state.json")
    town.wait_heartbeats(3)
    assert pid == town.deacon()["pid"]
    assert (0, "dialog") == (town.deacon()["restarts"], town.deacon()["condition"])
    assert "trust this folder" in town.agent.screen().text(), town.screen_text()
    assert [] == heartbeat_turns(api)
    assert "deacon" in town.statuses()[-1]
    assert "folder-trust dialog" in town.statuses()[-1]
    row = town.deacon_status()
    assert ("dialog", "folder-trust dialog") == (row["condition"], row["detail"])
    assert row["hint"].startswith("gtd trust deacon")
    assert "-> gtd trust deacon" in town.gtd("status", check=False).stdout
    said = [line for line in town.lines() if "folder-trust dialog" in line]
    assert 1 == len(said), said

    out = town.gtd("trust", "deacon").stdout
    assert f"trusted: {town.town / 'deacon'}" in out
    assert "deacon: was waiting at the folder-trust dialog; restarted" in out
    api.wait_for(lambda a: len(a.user_turns()) >= 1, 60, "a poke after gtd trust")
    town.stop_daemon()
    delivered = town.delivered()
    api.wait_for(lambda a: len(a.user_turns()) >= len(delivered), 60, "the delivered pokes")
    assert delivered == api.user_turns(), town.log()
    assert (0, True) == (town.deacon()["restarts"], pid != town.deacon()["pid"])
    assert "dialog" not in (town.deacon()["condition"], town.deacon_status()["condition"])


def test_usage_limit_is_neither_restarted_nor_poked(api: FakeAPI, start_gtd: StartGtd) -> None:
    """The subscription's limit answers the first poke: gtd waits and says until when.

    Claude Code shows the limit and that it continues by itself at the reset; across
    the next heartbeats gtd sends nothing (the model gets no further turn), restarts
    nothing, and STATUS=, ``state.json`` and ``gtd status`` say it is limited and
    until when; one log line says so when it begins.
    """
    api.reply(fakeapi.usage_limit(time.time() + 2 * 3600))
    town = start_gtd(heartbeat="1s", login="oauth")
    town.wait_deacon()
    api.wait_for(lambda a: len(a.user_turns()) == 1, 60, "the first poke")
    town.wait(lambda: town.deacon().get("condition") == "limited", "the limit in state.json")
    pid = town.wait_running()
    town.wait_heartbeats(2)
    assert town.delivered() == api.user_turns(), town.log()
    assert 1 == len(heartbeat_turns(api))
    record = town.deacon()
    assert (0, "limited") == (record["restarts"], record["condition"])
    assert pid == town.claude_pid()
    shown = town.agent.read()[1]
    assert Condition.LIMITED is shown.condition, town.screen_text()
    assert shown.resets, town.screen_text()
    assert f"resets {shown.resets}" in record["detail"]
    assert ", until " in record["detail"]
    assert f"deacon running (pid {pid}), {record['detail']}" in town.statuses()[-1]
    row = town.deacon_status()
    assert ("limited", True) == (row["condition"], f"resets {shown.resets}" in row["detail"])
    said = [line for line in town.lines() if "usage limit" in line]
    assert 1 == len(said), said
    assert said[0].startswith("deacon waits: limited: usage limit, resets")
