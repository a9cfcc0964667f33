"""The tmux boundary against a real tmux server on a private socket."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

import pytest

from gtd.exc import NoServer, TmuxTimeout
from gtd.tmux import SEP, Tmux, env_argv, parse_panes
from tests.conftest import TmuxServer, exec_view
from tests.sandbox import wait_equal, wait_for

pytestmark = pytest.mark.integration

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_parse_panes_ignores_malformed_lines() -> None:
    """Lines with the wrong field count or a non-numeric pid are skipped, not guessed."""
    good = SEP.join(["gt-deacon", "%3", "77", "1", "deacon", "bash"])
    out = parse_panes(f"{good}\nbroken{SEP}line\n{good.replace('77', 'x')}\n")
    assert [(p.pane_id, p.pane_pid, p.dead, p.agent, p.current_command) for p in out] == [
        ("%3", 77, True, "deacon", "bash")
    ]


def test_env_argv_escapes_semicolons() -> None:
    """An argument ending in ';' would end the tmux command; it is escaped."""
    assert env_argv({}, [], ["a;", "b"])[-2:] == ["a\\;", "b"]


def test_no_server_is_reported_not_started(tmp_path: pathlib.Path) -> None:
    """Without a server, listings are empty, probes say no, and nothing starts one."""
    tmux = Tmux("gtd_test_absent_server")
    assert tmux.list_panes() == []
    assert tmux.server_running() is False
    with pytest.raises(NoServer):
        tmux.new_session("x", cwd=str(tmp_path), env={}, argv=SLEEPER)
    assert tmux.server_running() is False


def test_new_session_environment_reaches_the_process(
    tmux_server: TmuxServer, tmp_path: pathlib.Path
) -> None:
    """Variables given at pane creation are in the process's own /proc/PID/environ."""
    tmux = Tmux(tmux_server.socket)
    argv = env_argv({"GT_ROLE": "deacon", "BD_ACTOR": "deacon"}, ["GT_RIG"], SLEEPER)
    pane = tmux.new_session(
        "gt-deacon", cwd=str(tmp_path), env={"GT_ROLE": "deacon"}, argv=argv, tag="deacon"
    )
    expected = (pathlib.Path(SLEEPER[0]).name[:15], ("deacon", "deacon", None))
    assert expected == wait_equal(
        expected, lambda: exec_view(pane.pane_pid, "GT_ROLE", "BD_ACTOR", "GT_RIG")
    )
    assert pathlib.Path(f"/proc/{pane.pane_pid}/cwd").resolve() == tmp_path.resolve()
    [listed] = tmux.list_panes()
    assert (listed.pane_pid, listed.agent, listed.dead) == (pane.pane_pid, "deacon", False)


def test_dead_pane_remains_and_respawns_in_place(
    tmux_server: TmuxServer, tmp_path: pathlib.Path
) -> None:
    """A dead agent leaves its pane (remain-on-exit); respawn keeps the pane and its sibling."""
    tmux = Tmux(tmux_server.socket)
    pane = tmux.new_session(
        "gt-x", cwd=str(tmp_path), env={}, argv=[sys.executable, "-c", "pass"], tag="x"
    )
    tmux_server.cmd("split-window", "-d", "-t", "=gt-x:", "sleep 600")
    wait_for(tmux.list_panes, lambda panes: any(p.dead for p in panes), what="a dead pane")
    respawned = tmux.respawn_pane(pane.pane_id, cwd=str(tmp_path), env={}, argv=SLEEPER, tag="x")
    panes = tmux.list_panes()
    assert respawned.pane_id == pane.pane_id
    assert not respawned.dead
    assert len(panes) == 2
    assert respawned.pane_pid != pane.pane_pid


def test_listing_is_one_call_whatever_the_session_count(
    tmux_server: TmuxServer, tmp_path: pathlib.Path
) -> None:
    """list_panes costs one tmux process for 1 session and for 30."""
    tmux = Tmux(tmux_server.socket)
    for i in range(30):
        tmux_server.cmd("new-session", "-d", "-s", f"s{i}", "sleep 600")
    before = tmux.calls.total()
    assert len(tmux.list_panes()) == 30
    assert tmux.calls.total() - before == 1


def test_frozen_server_times_out(tmux_server: TmuxServer) -> None:
    """A SIGSTOPped server gives TmuxTimeout within the timeout, not a hang."""
    pid = int(tmux_server.cmd("display-message", "-p", "#{pid}").stdout.strip() or 0)
    if pid == 0:
        tmux_server.cmd("new-session", "-d", "-s", "z", "sleep 600")
        pid = int(tmux_server.cmd("display-message", "-p", "#{pid}").stdout.strip())
    tmux = Tmux(tmux_server.socket, timeout=0.5)
    subprocess.run(["kill", "-STOP", str(pid)], check=True)
    try:
        start = time.monotonic()
        with pytest.raises(TmuxTimeout):
            tmux.list_panes()
        assert time.monotonic() - start < 3
    finally:
        subprocess.run(["kill", "-CONT", str(pid)], check=True)


def test_cursor_line_and_literal_text(tmux_server: TmuxServer, tmp_path: pathlib.Path) -> None:
    """Text typed literally (with ; and quotes) shows on the cursor line of a shell."""
    tmux = Tmux(tmux_server.socket)
    pane = tmux.new_session(
        "t", cwd=str(tmp_path), env={}, argv=["env", "PS1=$ ", "/bin/sh"], tag=""
    )
    assert "$" == wait_equal("$", lambda: tmux.cursor_line(pane.pane_id))
    tmux.send_literal(pane.pane_id, "echo 'a b' $x;")
    typed = "$ echo 'a b' $x;"
    assert typed == wait_equal(typed, lambda: tmux.cursor_line(pane.pane_id))


def test_listing_with_a_prefix_reads_only_those_sessions(tmux_server: TmuxServer) -> None:
    """The daemon's listing (prefix gt-) leaves a person's sessions out, in the same one call."""
    for name in ("gt-deacon", "mine", "gtd-notes"):
        tmux_server.cmd("new-session", "-d", "-s", name, "sleep 600")
    tmux = Tmux(tmux_server.socket)
    assert ["gt-deacon"] == [p.session_name for p in tmux.list_panes(prefix="gt-")]
    assert {"gt-deacon", "mine", "gtd-notes"} == {p.session_name for p in tmux.list_panes()}
