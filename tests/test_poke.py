"""Poke delivery in real tmux: once, through swallowed Enters, keeping a person's text."""

from __future__ import annotations

import doctest
import logging
import time
import typing as t

import pytest

from gtd import agents
from gtd.tmux import Tmux
from tests.conftest import FAKE_AGENT, FakeAgent, TmuxServer
from tests.sandbox import retry_until

pytestmark = pytest.mark.integration

WIDTH = 200


class Pane(t.NamedTuple):
    """A fake agent in its own session, and how to reach it."""

    tmux: Tmux
    target: str
    agent: FakeAgent

    def line(self) -> str:
        return self.tmux.cursor_line(self.target)

    def type(self, text: str) -> None:
        """Type like a person, and wait until the agent echoed it."""
        self.tmux.send_literal(self.target, text)
        assert retry_until(lambda: self.line() == f"> {text}", 5)

    def submit_sentinel(self) -> None:
        """Submit ``END`` and wait for it: whatever was sent before has been read by then."""
        self.tmux.send_key(self.target, "C-u")
        self.tmux.send_literal(self.target, "END")
        self.tmux.send_key(self.target, "Enter")
        assert retry_until(lambda: self.agent.received()[-1:] == ["END"], 5)


def start(server: TmuxServer, agent: FakeAgent, *options: str, width: int = WIDTH) -> Pane:
    """Run the fake agent with *options* in a new session; wait for its prompt."""
    argv = [str(agent.exe), str(FAKE_AGENT), "--log", str(agent.log), *options]
    server.cmd("new-session", "-d", "-s", "agent", "-x", str(width), "-y", "20", "--", *argv)
    target = server.cmd("display-message", "-p", "-t", "=agent:", "#{pane_id}").stdout.strip()
    pane = Pane(Tmux(server.socket), target, agent)
    assert retry_until(lambda: pane.line() == ">", 5)
    return pane


MODES = {"raw": ("--raw",), "cooked": ()}


@pytest.mark.parametrize("swallow", [1, 2])
def test_poke_lands_once_through_swallowed_enters(
    swallow: int, tmux_server: TmuxServer, fake_agent: FakeAgent
) -> None:
    """An agent that drops the first Enters gets more, and the poke arrives exactly once."""
    pane = start(tmux_server, fake_agent, "--raw", "--swallow-enters", str(swallow))
    result = agents.poke(pane.tmux, pane.target, "HEARTBEAT: hi")
    assert result
    pane.submit_sentinel()
    assert ["HEARTBEAT: hi", "END"] == fake_agent.received()
    assert swallow == sum(ln.endswith(" SWALLOWED") for ln in fake_agent.lines())
    assert agents.PokeResult(submitted=True, enters=swallow + 1) == result


class HalfTyped(t.NamedTuple):
    test_id: str
    options: tuple[str, ...]
    enters: int


HALF_TYPED = [
    HalfTyped("raw", MODES["raw"], 1),
    HalfTyped("cooked", MODES["cooked"], 1),
    HalfTyped("raw-swallowing", (*MODES["raw"], "--swallow-enters", "1"), 2),
]


@pytest.mark.parametrize(HalfTyped._fields, HALF_TYPED, ids=[c.test_id for c in HALF_TYPED])
def test_poke_gives_back_half_typed_text(
    test_id: str,
    options: tuple[str, ...],
    enters: int,
    tmux_server: TmuxServer,
    fake_agent: FakeAgent,
) -> None:
    """A person's half-typed text is not glued to the poke, and is on their line again after."""
    pane = start(tmux_server, fake_agent, *options)
    pane.type("half typed")
    result = agents.poke(pane.tmux, pane.target, "HEARTBEAT: x")
    assert retry_until(lambda: pane.line() == "> half typed", 5)
    pane.tmux.send_key(pane.target, "Enter")
    assert retry_until(lambda: fake_agent.received() == ["HEARTBEAT: x", "half typed"], 5)
    assert agents.PokeResult(True, enters, restored="half typed") == result


def test_poke_keeps_trailing_blanks_of_half_typed_text(
    tmux_server: TmuxServer, fake_agent: FakeAgent
) -> None:
    """Blanks a person typed last (trimmed from tmux's capture) are given back too."""
    pane = start(tmux_server, fake_agent, "--raw")
    pane.tmux.send_literal(pane.target, "two  ")
    assert retry_until(lambda: pane.tmux.run("display-message", "-p", "-t", pane.target,
                                             "#{cursor_x}").stdout.strip() == "7", 5)  # fmt: skip
    assert "two  " == agents.poke(pane.tmux, pane.target, "HEARTBEAT: y").restored
    pane.tmux.send_literal(pane.target, "words")
    pane.tmux.send_key(pane.target, "Enter")
    assert retry_until(lambda: fake_agent.received() == ["HEARTBEAT: y", "two  words"], 5)


def test_poke_logs_text_it_cannot_give_back(
    tmux_server: TmuxServer, fake_agent: FakeAgent, caplog: pytest.LogCaptureFixture
) -> None:
    """Text wrapped past the prompt's row is not guessed at: it is logged, and the poke lands."""
    pane = start(tmux_server, fake_agent, "--raw", width=40)
    pane.tmux.send_literal(pane.target, "x" * 38 + "wrapped tail")
    assert retry_until(lambda: pane.line() == "wrapped tail", 5)
    with caplog.at_level(logging.WARNING, logger="gtd.agents"):
        result = agents.poke(pane.tmux, pane.target, "HEARTBEAT: z")
    assert agents.PokeResult(True, 1, cleared="wrapped tail") == result
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "wrapped tail" == record.__dict__["GTD_CLEARED_TEXT"]
    pane.submit_sentinel()
    assert ["HEARTBEAT: z", "END"] == fake_agent.received()


def test_poke_to_an_agent_that_never_echoes_is_not_confirmed(
    tmux_server: TmuxServer, fake_agent: FakeAgent
) -> None:
    """Text that never shows cannot be confirmed: not submitted, one Enter, bounded time."""
    pane = start(tmux_server, fake_agent, "--raw", "--no-echo")
    begun = time.monotonic()
    result = agents.poke(pane.tmux, pane.target, "HEARTBEAT: unseen", settle=0.5)
    took = time.monotonic() - begun
    assert agents.PokeResult(submitted=False, enters=1) == result
    assert not result
    assert took < (3 + 2) * 0.5 + 1
    pane.submit_sentinel()
    assert ["HEARTBEAT: unseen", "END"] == fake_agent.received()


@pytest.mark.parametrize("options", MODES.values(), ids=MODES.keys())
def test_poke_text_lands_literally(
    options: tuple[str, ...], tmux_server: TmuxServer, fake_agent: FakeAgent
) -> None:
    """Separators, quotes and substitutions reach the agent as typed, not interpreted."""
    text = """HEARTBEAT: a; b 'one' "two" $(id) `id` $HOME \\ C-u Enter ;"""
    pane = start(tmux_server, fake_agent, *options)
    assert agents.poke(pane.tmux, pane.target, text)
    assert retry_until(lambda: fake_agent.received() == [text], 5)


def test_prompt_splitting_examples() -> None:
    """The pure helpers that tell the prompt from a person's text do what their examples say."""
    assert 0 == doctest.testmod(agents).failed
