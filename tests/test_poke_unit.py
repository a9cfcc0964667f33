"""The poke protocol (gtd.poke) against a simulated agent and the fake agent in real tmux."""

from __future__ import annotations

import dataclasses
import datetime
import doctest
import logging
import typing as t

import pytest

from gtd import poke as poke_mod
from gtd.poke import PokeOutcome, poke
from gtd.screen import Condition, PlainPrompt, Reading, Screen
from gtd.tmux import Tmux
from tests.conftest import FAKE_AGENT, FakeAgent, TmuxServer
from tests.sandbox import retry_until


class SimUI:
    """Reads the simulated agent's two rows: ``state: <condition>`` and ``> <input>``."""

    name = "sim"

    def read(self, screen: Screen) -> Reading:
        state = screen.line(0).removeprefix("state: ")
        box = screen.line(1)
        text = box[2:] if box.startswith("> ") else None
        return Reading(Condition(state), "" if state == "idle" else f"sim {state}", text)

    def resets_at(self, reading: Reading, seen: datetime.datetime) -> datetime.datetime | None:
        return None


@dataclasses.dataclass
class SimAgent:
    """An agent whose every key is recorded; knobs for what real agents do to pokes."""

    condition: str = "idle"
    box: str = ""
    in_mode: bool = False
    swallow: int = 0
    """Enter presses ignored before one submits."""
    person: str = ""
    """Typed by a person right after the poke's text lands (the race)."""
    busy_after_typing: bool = False
    echo: bool = True
    submitted: list[str] = dataclasses.field(default_factory=list)
    keys: list[str] = dataclasses.field(default_factory=list)

    def screen(self, target: str) -> Screen:
        rows = (f"state: {self.condition}", f"> {self.box}")
        return Screen(rows, len(rows[1]), 1, 80, 2, in_mode=self.in_mode)

    def send_literal(self, target: str, text: str) -> None:
        self.keys.append(f"literal:{text}")
        if self.echo:
            self.box += text + self.person
        if self.busy_after_typing:
            self.condition = "busy"

    def send_key(self, target: str, *keys: str) -> None:
        for key in keys:
            self.keys.append(key)
            if key == "BSpace":
                self.box = self.box[:-1]
            elif key == "Enter" and self.swallow:
                self.swallow -= 1
            elif key == "Enter" and self.box:
                self.submitted.append(self.box)
                self.box = ""


@dataclasses.dataclass
class FakeClock:
    """Time that passes only when the poke sleeps, so the simulated tests are exact."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(
    agent: SimAgent, text: str = "HEARTBEAT: hi", clock: FakeClock | None = None, **kw: t.Any
) -> PokeOutcome:
    clock = clock or FakeClock()
    return poke(agent, "%1", text, SimUI(), settle=0.2, clock=clock, sleep=clock.sleep, **kw)


class Refused(t.NamedTuple):
    test_id: str
    agent: SimAgent
    reason: str


REFUSED = [
    Refused("busy", SimAgent(condition="busy"), "busy"),
    Refused("dialog", SimAgent(condition="dialog", box=""), "dialog"),
    Refused("limited", SimAgent(condition="limited"), "limited"),
    Refused("starting", SimAgent(condition="starting"), "starting"),
    Refused("copy-mode", SimAgent(in_mode=True), "copy-mode"),
    Refused("person-text", SimAgent(box="half typed"), "input"),
]


@pytest.mark.parametrize(Refused._fields, REFUSED, ids=[c.test_id for c in REFUSED])
def test_refused_pokes_send_no_key(test_id: str, agent: SimAgent, reason: str) -> None:
    """Anything but an idle agent with an empty box gets no keystroke at all."""
    box = agent.box
    outcome = run(agent)
    assert (False, reason, [], [], box) == (
        outcome.delivered,
        outcome.reason,
        agent.keys,
        agent.submitted,
        agent.box,
    )


def test_idle_agent_gets_one_turn() -> None:
    """Typed, seen, one Enter, the box empties: delivered once."""
    agent = SimAgent()
    outcome = run(agent)
    assert (True, 1, ["HEARTBEAT: hi"]) == (outcome.delivered, outcome.enters, agent.submitted)
    assert ["literal:HEARTBEAT: hi", "Enter"] == agent.keys


@pytest.mark.parametrize("swallow", [1, 2])
def test_swallowed_enters_are_pressed_again_and_land_once(swallow: int) -> None:
    """An Enter that leaves the text in the box is pressed again; one submit in the end."""
    agent = SimAgent(swallow=swallow)
    outcome = run(agent)
    assert (True, swallow + 1, ["HEARTBEAT: hi"]) == (
        outcome.delivered,
        outcome.enters,
        agent.submitted,
    )


def test_enters_that_never_take_are_not_confirmed_and_erased() -> None:
    """After *tries* swallowed Enters the text is erased, nothing sent, and it says so."""
    agent = SimAgent(swallow=9)
    outcome = run(agent, tries=3)
    assert (False, "not-confirmed", 3, [], "") == (
        outcome.delivered,
        outcome.reason,
        outcome.enters,
        agent.submitted,
        agent.box,
    )


def test_person_typing_in_the_same_instant_keeps_their_text() -> None:
    """The poke's own characters are erased; the person's stay, nothing is sent."""
    agent = SimAgent(person="ab")
    outcome = run(agent)
    assert (False, "disturbed", [], "HEARTBEAT: hiab") == (
        outcome.delivered,
        outcome.reason,
        agent.submitted,
        agent.box,
    )
    assert "Enter" not in agent.keys


def test_person_typing_before_the_poke_lands_loses_nothing() -> None:
    """Text a person typed first (box = theirs + poke) keeps theirs after the back-off."""

    class Before(SimAgent):
        def send_literal(self, target: str, text: str) -> None:
            self.box = "ab"
            super().send_literal(target, text)

    agent = Before()
    outcome = run(agent)
    assert (False, "disturbed", [], "ab") == (
        outcome.delivered,
        outcome.reason,
        agent.submitted,
        agent.box,
    )


def test_agent_turning_busy_during_the_poke_gets_no_enter() -> None:
    """A turn that starts between typing and Enter: the text is erased, not queued."""
    agent = SimAgent(busy_after_typing=True)
    outcome = run(agent)
    assert (False, "busy", [], "") == (
        outcome.delivered,
        outcome.reason,
        agent.submitted,
        agent.box,
    )
    assert "Enter" not in agent.keys


def test_text_that_never_shows_is_not_echoed() -> None:
    """No echo within settle: no Enter (it could send someone else's text)."""
    agent = SimAgent(echo=False)
    outcome = run(agent)
    assert (False, "not-echoed", ["literal:HEARTBEAT: hi"]) == (
        outcome.delivered,
        outcome.reason,
        agent.keys,
    )


def test_text_echoed_late_is_erased() -> None:
    """A stalled agent that shows the text only after *settle* gets it erased, not left."""
    clock = FakeClock()

    class Late(SimAgent):
        pending = ""

        def send_literal(self, target: str, text: str) -> None:
            self.keys.append(f"literal:{text}")
            self.pending = text

        def screen(self, target: str) -> Screen:
            if self.pending and clock.now > 0.3:  # after the first settle of 0.2 s
                self.box, self.pending = self.pending, ""
            return super().screen(target)

    agent = Late()
    outcome = run(agent, clock=clock)
    assert ("not-echoed", [], "") == (outcome.reason, agent.submitted, agent.box)
    assert ["literal:HEARTBEAT: hi", *["BSpace"] * len("HEARTBEAT: hi")] == agent.keys


def test_copy_mode_during_the_poke_stops_it_without_keys() -> None:
    """Copy mode entered between typing and Enter: no further key (it would go to tmux)."""

    class Scrolling(SimAgent):
        def send_literal(self, target: str, text: str) -> None:
            super().send_literal(target, text)
            self.in_mode = True

    agent = Scrolling()
    outcome = run(agent)
    assert ("copy-mode", ["literal:HEARTBEAT: hi"], []) == (
        outcome.reason,
        agent.keys,
        agent.submitted,
    )


def test_allow_limited_pokes_an_empty_limited_box() -> None:
    """The caller may judge a limit over; an empty box at a limit then gets the poke."""
    agent = SimAgent(condition="limited")
    assert run(agent, allow_limited=True)
    assert ["HEARTBEAT: hi"] == agent.submitted


@pytest.mark.parametrize("text", ["", "   ", "a\nb", "tab\there", "x" * 501])
def test_text_that_cannot_be_typed_as_one_line_is_refused(text: str) -> None:
    """Empty, multi-line, control characters or too long: a programming error, no keys."""
    agent = SimAgent()
    with pytest.raises(ValueError, match="poke text"):
        run(agent, text)
    assert [] == agent.keys


def test_doctests() -> None:
    """The examples in gtd.poke hold."""
    assert 0 == doctest.testmod(poke_mod).failed


# -- the fake agent in real tmux ------------------------------------------------------


def start_fake(server: TmuxServer, agent: FakeAgent, *options: str) -> tuple[Tmux, str]:
    argv = [str(agent.exe), str(FAKE_AGENT), "--log", str(agent.log), *options]
    server.cmd("new-session", "-d", "-s", "agent", "-x", "120", "-y", "20", "--", *argv)
    target = server.cmd("display-message", "-p", "-t", "=agent:", "#{pane_id}").stdout.strip()
    tmux = Tmux(server.socket)
    assert retry_until(lambda: PlainPrompt().read(tmux.screen(target)).input == "", 5)
    return tmux, target


@pytest.mark.integration
@pytest.mark.parametrize("swallow", [0, 1, 2])
def test_fake_agent_gets_the_poke_once_through_swallowed_enters(
    swallow: int, tmux_server: TmuxServer, fake_agent: FakeAgent
) -> None:
    """In real tmux, an agent dropping Enters still gets the line exactly once."""
    tmux, target = start_fake(tmux_server, fake_agent, "--raw", "--swallow-enters", str(swallow))
    outcome = poke(tmux, target, "HEARTBEAT: hi", PlainPrompt(), settle=2.0)
    assert (True, swallow + 1) == (outcome.delivered, outcome.enters)
    tmux.send_literal(target, "END")
    tmux.send_key(target, "Enter")
    assert retry_until(lambda: fake_agent.received()[-1:] == ["END"], 5)
    assert ["HEARTBEAT: hi", "END"] == fake_agent.received()


@pytest.mark.integration
def test_fake_agent_with_half_typed_text_is_left_alone(
    tmux_server: TmuxServer, fake_agent: FakeAgent, caplog: pytest.LogCaptureFixture
) -> None:
    """A person's text in the box defers the poke: no key, their text still theirs."""
    tmux, target = start_fake(tmux_server, fake_agent, "--raw")
    tmux.send_literal(target, "half typed")
    assert retry_until(lambda: PlainPrompt().read(tmux.screen(target)).input == "half typed", 5)
    with caplog.at_level(logging.DEBUG):
        outcome = poke(tmux, target, "HEARTBEAT: x", PlainPrompt(), settle=2.0)
    assert ("input", 0) == (outcome.reason, outcome.enters)
    tmux.send_key(target, "Enter")
    assert retry_until(lambda: fake_agent.received() == ["half typed"], 5)
