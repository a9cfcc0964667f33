"""[supervise] under the real user manager: several agents kept alive, each on its own."""

from __future__ import annotations

import json
import os
import re
import signal
import typing as t

from tests.sandbox import retry_until
from tests.system.towns import Town

SUPERVISE = '[supervise]\nagents = ["deacon", "mayor", "gastown-witness"]\npoke = ["deacon"]\n'


def live_panes(town: Town) -> dict[str, int]:
    """Agent pane pids by session, for panes that are not dead."""
    out = town.um.run(
        "tmux", "-L", town.socket, "list-panes", "-a",
        "-F", "#{session_name} #{pane_pid} #{pane_dead}", check=False,
    ).stdout  # fmt: skip
    rows = (line.split() for line in out.splitlines() if line.strip())
    return {name: int(pid) for name, pid, dead in rows if dead == "0"}


def status_json(town: Town) -> dict[str, t.Any]:
    out = town.um.run(str(town.gtd), "status", "--json", check=False).stdout
    report: dict[str, t.Any] = json.loads(out)
    return report


def test_deacon_mayor_and_witness_are_each_kept_alive(town: Town) -> None:
    """Three supervised agents start with the service; each one killed comes back by itself.

    Only the deacon is poked. `gtd status --json` lists all three with SPEC's keys, and
    the restart counts say which agent was restarted.
    """
    town.um.write_file(f"{town.name}/gastown/.rig", "")  # the witness works in <town>/gastown
    town.write_config(town.config_text() + SUPERVISE)
    town.start()
    sessions = {"gt-deacon", "gt-mayor", "gt-gastown-witness"}
    assert retry_until(lambda: sessions <= live_panes(town).keys(), 10), live_panes(town)
    first = live_panes(town)
    for victim in ("gt-mayor", "gt-gastown-witness"):
        os.kill(first[victim], signal.SIGKILL)

        def back(victim: str = victim) -> bool:
            return live_panes(town).get(victim) not in (None, first[victim])

        assert retry_until(back, 5), (victim, live_panes(town), town.messages()[-5:])
    assert first["gt-deacon"] == live_panes(town)["gt-deacon"]

    def restarts_recorded() -> bool:
        rows = {row["identity"]: row for row in status_json(town)["agents"]}
        return [rows[i]["restarts"] for i in ("deacon", "mayor", "gastown-witness")] == [0, 1, 1]

    assert retry_until(restarts_recorded, 10), status_json(town)["agents"]
    report = status_json(town)
    assert "active" == report["service"]["active_state"]
    rows = {row["identity"]: row for row in report["agents"]}
    for identity, session in (("deacon", "gt-deacon"), ("mayor", "gt-mayor"),
                              ("gastown-witness", "gt-gastown-witness")):  # fmt: skip
        row = rows[identity]
        assert (session, True, live_panes(town)[session]) == (
            row["session"],
            row["alive"],
            row["pid"],
        )
        assert row["supervised"] is True
    assert [True, False, False] == [
        rows[i]["poked"] for i in ("deacon", "mayor", "gastown-witness")
    ]
    status_text = town.show("StatusText")["StatusText"]
    for identity in ("deacon", "mayor", "gastown-witness"):
        pid = rows[identity]["pid"]
        assert re.search(rf"{identity} (running|starting) \(pid {pid}\)", status_text), status_text
