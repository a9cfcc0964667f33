"""The poke contract against the real Claude Code, judged by what reached the stand-in API.

Every poke reported delivered reached the model exactly once as its own user turn and
none arrived unreported; a person's input is never sent, merged or lost; a busy agent,
a dialog, menu or login screen, a limit and a just-started agent get no keystroke.
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing as t

import pytest

from gtd import claude, poke
from gtd.screen import Condition, Screen
from tests import fakeapi
from tests.fakeapi import FakeAPI
from tests.realagent.conftest import StartAgent
from tests.realagent.harness import RealAgent

if t.TYPE_CHECKING:
    from gtd.tmux import Tmux


def heartbeat(n: int) -> str:
    return f"HEARTBEAT: test message {n}"


def poke_agent(
    agent: RealAgent, text: str, keyboard: poke.Keyboard | None = None
) -> poke.PokeOutcome:
    return poke.poke(keyboard or agent.tmux, agent.pane, text, agent.ui)


@dataclasses.dataclass
class Recorder:
    """tmux as the poke sees it, recording every key it sends."""

    tmux: Tmux
    sent: list[tuple[str, ...]] = dataclasses.field(default_factory=list)

    def screen(self, target: str) -> Screen:
        return self.tmux.screen(target)

    def send_literal(self, target: str, text: str) -> None:
        self.sent.append(("literal", text))
        self.tmux.send_literal(target, text)

    def send_key(self, target: str, *keys: str) -> None:
        self.sent.append(keys)
        self.tmux.send_key(target, *keys)


def no_heartbeat_reached(api: FakeAPI) -> bool:
    """Not one request carried a poke's text, in any message, tool result or note."""
    return not any("HEARTBEAT" in str(r.body) for r in api.requests())


def test_idle_pokes_each_arrive_once_as_their_own_turn(
    api: FakeAPI, start_agent: StartAgent
) -> None:
    """Three pokes to an idle agent: three delivered, three turns, in order, nothing else."""
    agent = start_agent()
    agent.wait_for(Condition.IDLE)
    outcomes = []
    for n in range(3):
        outcomes.append(poke_agent(agent, heartbeat(n)))
        count = n + 1
        api.wait_for(lambda a: len(a.user_turns()) == count, 60, f"turn {n}")  # noqa: B023
        agent.wait_for(Condition.IDLE)
    assert [True] * 3 == [o.delivered for o in outcomes]
    assert [heartbeat(n) for n in range(3)] == api.user_turns()


def test_busy_agent_is_not_poked_into_its_queue(api: FakeAPI, start_agent: StartAgent) -> None:
    """While a turn runs the poke is refused, and the model never sees it."""
    agent = start_agent()
    agent.wait_for(Condition.IDLE)
    gate = api.hold()
    agent.submit("work on something")
    assert gate.reached.wait(30)
    agent.wait_for(Condition.BUSY)
    outcome = poke_agent(agent, heartbeat(1))
    assert (False, "busy", 0) == (outcome.delivered, outcome.reason, outcome.enters)
    gate.release()
    agent.wait_for(Condition.IDLE)
    assert ["work on something"] == api.user_turns()
    assert no_heartbeat_reached(api)


def test_agent_running_a_tool_is_not_poked(api: FakeAPI, start_agent: StartAgent) -> None:
    """During a tool call the poke is refused: it does not ride along in the tool turn."""
    agent = start_agent()
    agent.wait_for(Condition.IDLE)
    api.reply(fakeapi.tool_use("sleep 3; echo tool-done"))
    agent.submit("run the tool")
    agent.wait_text("sleep 3")
    agent.wait_for(Condition.BUSY)
    assert "busy" == poke_agent(agent, heartbeat(1)).reason
    api.wait_for(lambda a: len(a.main_requests()) == 2, 60, "the tool result")
    agent.wait_for(Condition.IDLE)
    results = fakeapi.tool_results(api.main_requests()[1].last_user_message()["content"])  # type: ignore[index]
    assert (["run the tool"], ["tool-done"]) == (api.user_turns(), results)
    assert no_heartbeat_reached(api)
    assert poke_agent(agent, heartbeat(2))
    api.wait_for(lambda a: len(a.user_turns()) == 2, 60, "the poke after the tool")
    assert ["run the tool", heartbeat(2)] == api.user_turns()


class PersonInput(t.NamedTuple):
    test_id: str
    keys: tuple[tuple[str, ...], ...]
    """Each item: ("type", text) or ("key", name...)."""
    box: str
    """What the adapter reads in the box afterwards."""
    sent: str
    """What the model gets when the person presses Enter."""
    cursor_x: int | None = None
    """Where the cursor ends up (the box's text starts at column 2), when it is certain."""


LONG = "y" * 850
PERSON_INPUTS = [
    PersonInput("plain", (("type", "half typed"),), "half typed", "half typed", 12),
    PersonInput(
        "cursor-mid",
        (("type", "half typed"), ("key", "Left", "Left", "Left")),
        "half typed",
        "half typed",
        9,
    ),
    PersonInput("cursor-home", (("type", "2parser"), ("key", "Home")), "2parser", "2parser", 2),
    PersonInput(
        "two-lines",
        (("type", "line one"), ("key", "C-j"), ("type", "line two")),
        "line one\nline two",
        "line one\nline two",
    ),
    PersonInput("pasted-800", (("type", LONG),), "[Pasted text #1]", LONG),
]


@pytest.mark.parametrize(PersonInput._fields, PERSON_INPUTS, ids=[c.test_id for c in PERSON_INPUTS])
def test_person_input_is_never_sent_merged_or_lost(
    test_id: str,
    keys: tuple[tuple[str, ...], ...],
    box: str,
    sent: str,
    cursor_x: int | None,
    api: FakeAPI,
    start_agent: StartAgent,
) -> None:
    """With a person's text in the box, wherever the cursor is, the poke waits.

    Their text stays exactly as it was and reaches the model as they send it; the
    next poke, once the box is empty, is a turn of its own.
    """
    agent = start_agent()
    agent.wait_for(Condition.IDLE)
    for kind, *args in keys:
        if kind == "type":
            agent.type(args[0])
        else:
            agent.keys(*args)
    # Wait for the person's last key too (the text shows before the cursor moves back).
    before = agent.wait(
        lambda s: agent.ui.read(s).input == box and cursor_x in (None, s.cursor_x),
        f"input box {box!r} with the cursor at column {cursor_x}",
    )
    keyboard = Recorder(agent.tmux)
    outcome = poke_agent(agent, heartbeat(1), keyboard)
    assert (False, "input", []) == (outcome.delivered, outcome.reason, keyboard.sent)
    after = agent.screen()
    assert (before.cursor_x, before.cursor_y, box) == (
        after.cursor_x,
        after.cursor_y,
        agent.input(),
    )
    agent.keys("Enter")
    api.wait_for(lambda a: len(a.user_turns()) == 1, 60, "the person's turn")
    agent.wait_for(Condition.IDLE)
    assert [sent] == [fakeapi.unpaste(turn) for turn in api.user_turns()]
    assert no_heartbeat_reached(api)
    assert poke_agent(agent, heartbeat(2))
    api.wait_for(lambda a: len(a.user_turns()) == 2, 60, "the next poke")
    assert [sent, heartbeat(2)] == [fakeapi.unpaste(turn) for turn in api.user_turns()]


@dataclasses.dataclass
class RacingPerson:
    """tmux as the poke sees it, with a person who types the instant the poke's text lands.

    The person's keys arrive before the poke can check the box: the race it must survive.
    """

    tmux: Tmux
    person: str
    typed: bool = False

    def screen(self, target: str) -> Screen:
        return self.tmux.screen(target)

    def send_literal(self, target: str, text: str) -> None:
        self.tmux.send_literal(target, text)
        if not self.typed:
            self.typed = True
            self.tmux.send_literal(target, self.person)

    def send_key(self, target: str, *keys: str) -> None:
        self.tmux.send_key(target, *keys)


def test_person_typing_during_the_poke_keeps_their_text(
    api: FakeAPI, start_agent: StartAgent
) -> None:
    """A person's keys landing right after the poke's: the poke erases only its own text."""
    agent = start_agent()
    agent.wait_for(Condition.IDLE)
    outcome = poke_agent(agent, heartbeat(1), RacingPerson(agent.tmux, " and mine"))
    assert (False, "disturbed", 0) == (outcome.delivered, outcome.reason, outcome.enters)
    agent.wait_input(" and mine")
    agent.keys("Enter")
    api.wait_for(lambda a: len(a.user_turns()) == 1, 60, "the person's turn")
    assert ["and mine"] == [turn.strip() for turn in api.user_turns()]
    assert no_heartbeat_reached(api)


@dataclasses.dataclass
class SwallowingAgent:
    """tmux as the poke sees it, with the first *swallow* Enter presses lost on the way."""

    tmux: Tmux
    swallow: int

    def screen(self, target: str) -> Screen:
        return self.tmux.screen(target)

    def send_literal(self, target: str, text: str) -> None:
        self.tmux.send_literal(target, text)

    def send_key(self, target: str, *keys: str) -> None:
        if keys == ("Enter",) and self.swallow:
            self.swallow -= 1
            return
        self.tmux.send_key(target, *keys)


@pytest.mark.parametrize("swallow", [1, 2])
def test_swallowed_enters_neither_lose_nor_double_the_poke(
    swallow: int, api: FakeAPI, start_agent: StartAgent
) -> None:
    """Enters lost on the way are pressed again; the model gets the poke exactly once."""
    agent = start_agent()
    agent.wait_for(Condition.IDLE)
    outcome = poke.poke(SwallowingAgent(agent.tmux, swallow), agent.pane, heartbeat(1), agent.ui)
    assert (True, swallow + 1) == (outcome.delivered, outcome.enters)
    api.wait_for(lambda a: len(a.user_turns()) == 1, 60, "the poke")
    agent.wait_for(Condition.IDLE)
    agent.keys("Enter")  # an Enter arriving late, on the empty box, sends nothing
    agent.submit("sentinel")
    assert [heartbeat(1), "sentinel"] == api.user_turns()


class Screenful(t.NamedTuple):
    test_id: str
    options: dict[str, t.Any]
    reach: t.Callable[[RealAgent], object]
    detail: str


def _rewind(agent: RealAgent) -> None:
    agent.wait_for(Condition.IDLE)
    agent.submit("first")
    agent.wait_for(Condition.IDLE)
    agent.keys("Escape")
    agent.keys("Escape")
    agent.wait_text("Rewind")


def _not_logged_in(agent: RealAgent) -> None:
    agent.wait_for(Condition.IDLE)
    agent.type("hi")
    agent.wait_input("hi")
    agent.keys("Enter")
    agent.wait_text("Not logged in")


SCREENFULS = [
    Screenful(
        "folder-trust",
        {"trusted": False},
        lambda a: a.wait_text("trust this folder"),
        "folder-trust dialog",
    ),
    Screenful(
        "bypass-warning",
        {"bypass_accepted": False},
        lambda a: a.wait_text("Yes, I accept"),
        "bypass-permissions warning",
    ),
    Screenful(
        "first-run",
        {"onboarded": False},
        lambda a: a.wait_text("Choose the text style"),
        "first-run setup (theme)",
    ),
    Screenful("rewind-menu", {}, _rewind, "menu: Rewind"),
    Screenful("not-logged-in", {"login": "none"}, _not_logged_in, "not logged in (run /login)"),
]


@pytest.mark.parametrize(Screenful._fields, SCREENFULS, ids=[c.test_id for c in SCREENFULS])
def test_dialogs_menus_and_login_get_no_keystroke(
    test_id: str,
    options: dict[str, t.Any],
    reach: t.Callable[[RealAgent], object],
    detail: str,
    api: FakeAPI,
    start_agent: StartAgent,
) -> None:
    """The poke says what the agent waits for and leaves the screen exactly as it was."""
    agent = start_agent(**options)
    reach(agent)
    turns = api.user_turns()
    keyboard = Recorder(agent.tmux)
    outcome = poke_agent(agent, heartbeat(1), keyboard)
    assert (False, "dialog", detail, []) == (
        outcome.delivered,
        outcome.reason,
        outcome.detail,
        keyboard.sent,
    )
    assert detail == agent.read()[1].detail
    assert turns == api.user_turns()
    assert no_heartbeat_reached(api)


def test_trusting_the_workdir_first_skips_the_dialog(api: FakeAPI, start_agent: StartAgent) -> None:
    """`gtd.claude.trust` writes the answer Claude Code reads: no dialog, the poke lands."""
    agent = start_agent(trusted=False, launch=False)
    config = agent.home / ".claude.json"
    assert [str(agent.workdir)] == claude.trust([agent.workdir], path=config)
    os.chown(config, agent.pw.pw_uid, agent.pw.pw_gid)  # gtd runs as the user; this test as root
    agent.start(prepare=False)
    agent.wait_for(Condition.IDLE)
    assert poke_agent(agent, heartbeat(1))
    api.wait_for(lambda a: a.user_turns() == [heartbeat(1)], 60, "the poke")


def test_just_started_agent_is_poked_only_at_its_prompt(
    api: FakeAPI, start_agent: StartAgent
) -> None:
    """Pokes from the first instant are refused until the prompt shows; then one lands once."""
    agent = start_agent()
    refused: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        outcome = poke_agent(agent, heartbeat(1))
        if outcome.delivered:
            break
        refused.append(outcome.reason)
        assert time.monotonic() < deadline, f"never delivered; reasons {refused}"
    assert refused, "the first poke came after the prompt showed; nothing was proved"
    assert {"starting"} >= set(refused)
    api.wait_for(lambda a: len(a.user_turns()) == 1, 60, "the poke")
    agent.wait_for(Condition.IDLE)
    assert [heartbeat(1)] == api.user_turns()


def test_usage_limit_is_not_poked_and_says_until_when(
    api: FakeAPI, start_agent: StartAgent
) -> None:
    """At the subscription's limit the poke is refused with the reset time shown."""
    agent = start_agent(login="oauth")
    agent.wait_for(Condition.IDLE)
    api.reply(fakeapi.usage_limit(time.time() + 2 * 3600))
    agent.submit("over the limit")
    agent.wait_for(Condition.LIMITED)
    outcome = poke_agent(agent, heartbeat(1))
    assert (False, "limited", 0) == (outcome.delivered, outcome.reason, outcome.enters)
    assert outcome.reading.resets is not None
    assert outcome.reading.resets in outcome.detail
    assert ["over the limit"] == api.user_turns()
    assert no_heartbeat_reached(api)


def test_rate_limit_error_is_not_poked(api: FakeAPI, start_agent: StartAgent) -> None:
    """After a 429 that Claude Code gave up on, the poke is refused as limited."""
    agent = start_agent()
    agent.wait_for(Condition.IDLE)
    api.reply(fakeapi.rate_limit())
    agent.submit("too fast")
    agent.wait_for(Condition.LIMITED)
    outcome = poke_agent(agent, heartbeat(1))
    assert (False, "limited", "rate limited (API error 429)") == (
        outcome.delivered,
        outcome.reason,
        outcome.detail,
    )
    assert ["too fast"] == api.user_turns()
    assert poke.poke(agent.tmux, agent.pane, heartbeat(2), agent.ui, allow_limited=True)
    api.wait_for(lambda a: len(a.user_turns()) == 2, 60, "the allowed poke")
    # Claude Code keeps the failed message and sends the next input in the same user
    # message, as a block of its own (version-specific; docs/agents.md).
    last = api.main_requests()[-1].last_user_message()
    assert ["too fast\n", heartbeat(2)] == fakeapi.typed_blocks(last["content"])  # type: ignore[index]


@pytest.mark.parametrize("lang", ["", "C"], ids=["LANG-unset", "LANG-C"])
def test_screen_and_poke_work_without_a_utf8_locale(
    lang: str, api: FakeAPI, start_agent: StartAgent
) -> None:
    """With LANG unset or C (a bare user manager) the prompt reads and a poke lands intact.

    ``tmux -u`` makes the client's output UTF-8 whatever the locale of the server or
    the agent, so the prompt (U+276F) and non-ASCII text survive.
    """
    agent = start_agent(lang=lang)
    agent.wait_for(Condition.IDLE)
    text = "HEARTBEAT: ünïcode ✓ 日本"
    assert poke_agent(agent, text)
    api.wait_for(lambda a: len(a.user_turns()) == 1, 60, "the poke")
    assert [text] == api.user_turns()
