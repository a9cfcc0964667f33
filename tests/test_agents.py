"""Starting, judging and poking agents in a real tmux server."""

from __future__ import annotations

import doctest
import os
import pathlib
import signal
import time

import libtmux
import pytest

from gtd import agents, poke
from gtd.config import AgentConfig, Config, TmuxConfig
from gtd.environment import IDENTITY_VARS
from gtd.exc import WorkdirMissing
from gtd.identities import DEACON, parse_identity
from gtd.screen import PlainPrompt
from gtd.tmux import Tmux
from tests.conftest import FakeAgent, TmuxServer, proc_comm, proc_environ
from tests.sandbox import retry_until

pytestmark = pytest.mark.integration


def make_config(town: pathlib.Path, agent: FakeAgent, server: TmuxServer, *extra: str) -> Config:
    return Config(
        town_root=town,
        agent=AgentConfig(command=agent.command(*extra), alive_commands=("node",)),
        tmux=TmuxConfig(socket=server.socket),
    )


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        ("deacon", {"GT_ROLE": "deacon", "BD_ACTOR": "deacon"}),
        ("mayor", {"GT_ROLE": "mayor", "BD_ACTOR": "mayor"}),
        ("gastown-witness", {"GT_ROLE": "gastown-witness", "BD_ACTOR": "gastown/witness",
                             "GT_RIG": "gastown"}),
        ("gastown/refinery", {"GT_ROLE": "gastown-refinery", "BD_ACTOR": "gastown/refinery",
                              "GT_RIG": "gastown", "GT_REFINERY": "1"}),
        ("gastown-crew-max", {"GT_ROLE": "gastown-crew-max", "BD_ACTOR": "gastown/crew/max",
                              "GT_RIG": "gastown"}),
    ],
    ids=["deacon", "mayor", "witness", "refinery", "crew"],
)  # fmt: skip
def test_agent_environment_in_proc_environ(
    identity: str,
    expected: dict[str, str],
    tmux_server: TmuxServer,
    fake_agent: FakeAgent,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every identity kind starts with SPEC's variables and none of the caller's identity."""
    for name, value in {"GT_ROLE": "daemon-leak", "GT_RIG": "leak", "GT_CREW": "leak",
                        "GT_POLECAT": "leak", "GT_SESSION": "leak", "BD_ACTOR": "leak",
                        "GT_REFINERY": "1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    town = tmp_path / "town"
    config = make_config(town, fake_agent, tmux_server)
    ident = parse_identity(identity)
    ident.workdir(town).mkdir(parents=True)
    pane = agents.start_agent(Tmux(tmux_server.socket), ident, config)
    assert retry_until(lambda: proc_comm(pane.pane_pid) == "node", 5)
    env = proc_environ(pane.pane_pid)
    got = {k: env[k] for k in (*IDENTITY_VARS, "GT_REFINERY") if k in env}
    assert expected == got
    assert pathlib.Path(f"/proc/{pane.pane_pid}/cwd").resolve() == ident.workdir(town).resolve()


def test_missing_workdir_is_an_error_not_a_session(
    tmux_server: TmuxServer, fake_agent: FakeAgent, tmp_path: pathlib.Path
) -> None:
    """A rig agent whose workdir is missing is refused; nothing is created."""
    config = make_config(tmp_path / "town", fake_agent, tmux_server)
    tmux = Tmux(tmux_server.socket)
    with pytest.raises(WorkdirMissing, match="gastown-witness"):
        agents.start_agent(tmux, parse_identity("gastown-witness"), config)
    assert tmux.list_panes() == []


def test_restart_keeps_a_persons_pane(
    tmux_server: TmuxServer, fake_agent: FakeAgent, tmp_path: pathlib.Path
) -> None:
    """Restarting the agent respawns its own pane; a pane a person split off stays.

    The person is played by libtmux, an independent client, which also sees the
    session gtd made the way any tmux user would.
    """
    config = make_config(tmp_path / "town", fake_agent, tmux_server)
    tmux = Tmux(tmux_server.socket)
    first = agents.start_agent(tmux, DEACON, config, create_workdir=True)
    session = libtmux.Server(socket_name=tmux_server.socket).sessions.get(session_name="gt-deacon")
    assert session is not None
    person = session.active_window.split(shell="sleep 600")  # noqa: S604 - tmux runs it, a fixed string
    second = agents.start_agent(tmux, DEACON, config)
    panes = {p.pane_id: p for p in tmux.list_panes()}
    assert second.pane_id == first.pane_id
    assert second.pane_pid != first.pane_pid
    assert str(person.pane_pid) == str(panes[str(person.pane_id)].pane_pid)
    assert {first.pane_id, person.pane_id} == {p.pane_id for p in session.panes}


def test_alive_follows_the_foreground_command(
    tmux_server: TmuxServer, fake_agent: FakeAgent, tmp_path: pathlib.Path
) -> None:
    """Alive while the agent runs; not alive once it died (the pane remains, dead)."""
    config = make_config(tmp_path / "town", fake_agent, tmux_server)
    tmux = Tmux(tmux_server.socket)
    pane = agents.start_agent(tmux, DEACON, config, create_workdir=True)
    assert retry_until(lambda: agents.view(tmux.list_panes(), DEACON, config).alive, 5)
    os.kill(pane.pane_pid, signal.SIGKILL)

    def dead_pane() -> bool:
        pane = agents.view(tmux.list_panes(), DEACON, config).pane
        return pane is not None and pane.dead

    assert retry_until(dead_pane, 5)
    view = agents.view(tmux.list_panes(), DEACON, config)
    assert view.pane is not None
    assert view.pane.dead
    assert not view.alive


def test_alive_from_the_first_instant_of_a_start(
    tmux_server: TmuxServer, fake_agent: FakeAgent, tmp_path: pathlib.Path
) -> None:
    """Read at once and again and again after each start, an agent is alive every time.

    The pane's process is inside ``execve`` (``env`` becoming the agent) for an
    instant, when its command line reads empty as a zombie's does; the daemon looks
    at that very moment (the poke of the heartbeat that started it, or an ensure
    woken by the previous agent's exit). About one start in three hit it here.
    """
    config = make_config(tmp_path / "town", fake_agent, tmux_server)
    tmux = Tmux(tmux_server.socket)
    misread = 0
    for _ in range(30):
        pane = agents.start_agent(tmux, DEACON, config, create_workdir=True)
        deadline = time.monotonic() + 0.05
        while time.monotonic() < deadline:
            if agents.agent_process(pane.pane_pid, ()) is None:
                misread += 1
                break
    assert 0 == misread


def test_process_names_doctests() -> None:
    assert 0 == doctest.testmod(agents).failed


def test_not_alive_when_another_command_runs(
    tmux_server: TmuxServer, tmp_path: pathlib.Path
) -> None:
    """A session whose pane runs a shell (upstream's agent exited) is not alive."""
    tmux_server.cmd("new-session", "-d", "-s", "gt-deacon", "/bin/sh")
    config = Config(town_root=tmp_path, tmux=TmuxConfig(socket=tmux_server.socket))
    tmux = Tmux(tmux_server.socket)
    assert retry_until(lambda: agents.view(tmux.list_panes(), DEACON, config).pane is not None, 5)
    view = agents.view(tmux.list_panes(), DEACON, config)
    assert view.pane is not None
    assert not view.alive


def test_poke_lands_once(
    tmux_server: TmuxServer, fake_agent: FakeAgent, tmp_path: pathlib.Path
) -> None:
    """The poke types the text, submits it, and it arrives exactly once."""
    config = make_config(tmp_path / "town", fake_agent, tmux_server)
    tmux = Tmux(tmux_server.socket)
    pane = agents.start_agent(tmux, DEACON, config, create_workdir=True)
    assert retry_until(lambda: tmux.cursor_line(pane.pane_id) == ">", 5)
    assert poke.poke(tmux, pane.pane_id, "HEARTBEAT: hello; it's me", PlainPrompt())
    assert retry_until(lambda: fake_agent.received() == ["HEARTBEAT: hello; it's me"], 5)


def test_poke_leaves_half_typed_text_alone(
    tmux_server: TmuxServer, fake_agent: FakeAgent, tmp_path: pathlib.Path
) -> None:
    """Text on the input line is never sent glued to the poke: the poke waits (issue 7)."""
    config = make_config(tmp_path / "town", fake_agent, tmux_server)
    tmux = Tmux(tmux_server.socket)
    pane = agents.start_agent(tmux, DEACON, config, create_workdir=True)
    assert retry_until(lambda: tmux.cursor_line(pane.pane_id) == ">", 5)
    tmux.send_literal(pane.pane_id, "half typed")
    assert retry_until(lambda: tmux.cursor_line(pane.pane_id) == "> half typed", 5)
    outcome = poke.poke(tmux, pane.pane_id, "HEARTBEAT: x", PlainPrompt())
    assert (False, poke.INPUT) == (outcome.delivered, outcome.reason)
    assert "> half typed" == tmux.cursor_line(pane.pane_id)
    tmux.send_key(pane.pane_id, "Enter")
    assert retry_until(lambda: fake_agent.received() == ["half typed"], 5)


def test_stop_agent_kills_only_its_pane_when_shared(
    tmux_server: TmuxServer, fake_agent: FakeAgent, tmp_path: pathlib.Path
) -> None:
    """Stopping an agent whose session a person split keeps the person's pane."""
    config = make_config(tmp_path / "town", fake_agent, tmux_server)
    tmux = Tmux(tmux_server.socket)
    pane = agents.start_agent(tmux, DEACON, config, create_workdir=True)
    tmux_server.cmd("split-window", "-d", "-t", pane.pane_id, "sleep 600")
    assert agents.stop_agent(tmux, DEACON)
    left = tmux.list_panes()
    assert [p.pane_id for p in left] != [pane.pane_id]
    assert len(left) == 1
    assert agents.stop_agent(tmux, DEACON, whole_session=True)
    assert tmux.list_panes() == []
    assert not agents.stop_agent(tmux, DEACON)
