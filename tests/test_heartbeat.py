"""One heartbeat, in process, against a real tmux server: work is constant in sessions."""

from __future__ import annotations

import pathlib

import pytest

from gtd.config import AgentConfig, Config, TmuxConfig
from gtd.daemon import Daemon
from gtd.notify import Notifier
from tests.conftest import FakeAgent, TmuxServer, proc_comm
from tests.sandbox import retry_until

pytestmark = pytest.mark.integration


def make_daemon(tmp_path: pathlib.Path, server: TmuxServer, agent: FakeAgent) -> Daemon:
    config = Config(
        town_root=tmp_path / "town",
        agent=AgentConfig(command=agent.command(), alive_commands=("node",), ui="plain"),
        tmux=TmuxConfig(socket=server.socket),
    )

    def no_systemd() -> None:
        msg = "the test's tmux server is already running"
        raise AssertionError(msg)

    return Daemon(config, notifier=Notifier(env={}), start_tmux=no_systemd, env={})


POKE = {"send-keys", "display-message"}
"""The poke's own calls: typing, and watching the cursor line until the text left it."""


def calls_per_heartbeat(daemon: Daemon) -> tuple[dict[str, int], int]:
    """Count the tmux calls of one heartbeat: (listing/spawning calls by subcommand, poke calls)."""
    before = daemon.tmux.calls.copy()
    daemon.heartbeat()
    made = daemon.tmux.calls - before
    return {k: v for k, v in made.items() if k not in POKE}, sum(made[k] for k in POKE)


def test_tmux_calls_per_heartbeat_do_not_grow_with_sessions(
    tmp_path: pathlib.Path, tmux_server: TmuxServer, fake_agent: FakeAgent
) -> None:
    """A heartbeat costs as many tmux calls with 40 other sessions as with none."""
    daemon = make_daemon(tmp_path, tmux_server, fake_agent)
    daemon.prepare()
    daemon.heartbeat()  # starts the deacon
    assert retry_until(lambda: daemon.tmux.cursor_line("=gt-deacon:") == ">", 5)
    alone, poke_alone = calls_per_heartbeat(daemon)
    for i in range(40):
        tmux_server.cmd("new-session", "-d", "-s", f"gt-rig{i}-witness", "sleep 600")
    crowded, poke_crowded = calls_per_heartbeat(daemon)
    assert {"list-panes": 1} == alone == crowded
    # The poke's calls depend on how fast the agent echoes, never on the session count.
    assert poke_alone < 20
    assert poke_crowded < 20


def test_upstream_shell_session_gets_the_agent(
    tmp_path: pathlib.Path, tmux_server: TmuxServer, fake_agent: FakeAgent
) -> None:
    """A gt-deacon session whose pane runs something else (a shell) gets the agent respawned."""
    tmux_server.cmd("new-session", "-d", "-s", "gt-deacon", "/bin/sh")
    daemon = make_daemon(tmp_path, tmux_server, fake_agent)
    daemon.prepare()
    daemon.heartbeat()
    panes = daemon.tmux.list_panes()
    assert 1 == len(panes)
    assert retry_until(lambda: proc_comm(daemon.tmux.list_panes()[0].pane_pid) == "node", 5)
    assert "deacon" == daemon.tmux.list_panes()[0].agent


def test_no_pid_file_or_log_file(
    tmp_path: pathlib.Path, tmux_server: TmuxServer, fake_agent: FakeAgent
) -> None:
    """The daemon's directory holds state.json and nothing like a PID or log file."""
    daemon = make_daemon(tmp_path, tmux_server, fake_agent)
    daemon.prepare()
    daemon.heartbeat()
    names = {p.name for p in (tmp_path / "town" / "daemon").iterdir()}
    assert not {n for n in names if n.endswith((".pid", ".log"))}
    assert "state.json" in names
