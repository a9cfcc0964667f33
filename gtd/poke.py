"""The poke: type a line into an agent's input box and submit it as its own turn, or not at all.

The protocol (SPEC "The real agent", issue 7 point 3), agent-neutral: what the screen
means comes from an :class:`gtd.screen.AgentUI` adapter.

1. Read the pane. Anything but an idle agent with an empty input box gets no
   keystroke at all: busy (no poke into the agent's queue), a dialog, menu or login
   screen, a limit, a start not finished, tmux's copy mode, or a person's text in the
   box (the poke waits for the next heartbeat rather than touch it).
2. Type the text literally and wait until the box holds exactly it. If it then holds
   anything else (a person typed in the same instant) or the agent left the idle
   state, the poke's own characters are erased with backspaces (the person's stay)
   and it is reported not delivered.
3. Read once more and press Enter only while the box holds exactly the text and the
   agent is idle. The box emptying is the proof of a submit. An Enter that was
   swallowed (the text still there after *settle*) is pressed again, up to *tries*;
   one taken as a new line is backspaced first. Enter is never pressed on anything
   but the poke's own text, so a late Enter cannot send it twice.

What remains: a person's key that lands in the few milliseconds between the last
read and the Enter goes with the poke (or, between typing and the check, makes the
poke back off and erase only its own characters).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import typing as t

from gtd.screen import AgentUI, Condition, Reading, Screen

logger = logging.getLogger(__name__)

MAX_TEXT = 500
"""Longest poke text: agents collapse long typed bursts (Claude Code: 800 characters)."""
POLL = 0.02

DELIVERED = ""
BUSY = "busy"
DIALOG = "dialog"
LIMITED = "limited"
STARTING = "starting"
INPUT = "input"
"""A person's text is in the input box: the poke waits (their text is never touched)."""
COPY_MODE = "copy-mode"
DISTURBED = "disturbed"
"""The box changed under the poke (a person typed): it erased its own text and stopped."""
NOT_ECHOED = "not-echoed"
"""The typed text never showed in the box within *settle*."""
NOT_CONFIRMED = "not-confirmed"
"""Enter was pressed *tries* times and the text stayed: it was erased, not sent."""
WAITING = frozenset({BUSY, DIALOG, LIMITED, STARTING, INPUT, COPY_MODE})
"""Reasons that are the agent's (or a person's) state, not a failed poke: no keystroke
was sent, and the next heartbeat tries again."""


class Keyboard(t.Protocol):
    """What the poke needs of tmux (:class:`gtd.tmux.Tmux` has it)."""

    def screen(self, target: str) -> Screen:
        """The pane now, in one call."""
        ...

    def send_literal(self, target: str, text: str) -> None:
        """Type *text* literally."""
        ...

    def send_key(self, target: str, *keys: str) -> None:
        """Press named keys."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class PokeOutcome:
    """What one :func:`poke` did; true exactly when it was seen submitted as its own turn."""

    delivered: bool
    reason: str
    """``""`` when delivered, else one of this module's reason constants."""
    detail: str
    """For a person: what the agent waits for, what was in the way."""
    reading: Reading
    """The last reading of the pane."""
    enters: int = 0
    """Enter presses sent (more than one: the agent swallowed some)."""

    def __bool__(self) -> bool:
        return self.delivered

    def describe(self) -> str:
        """One phrase for the journal.

        >>> PokeOutcome(False, BUSY, "working: Orbiting…", Reading(Condition.BUSY)).describe()
        'not delivered (busy: working: Orbiting…)'
        """
        if self.delivered:
            return "delivered" + (f" after {self.enters} Enter presses" if self.enters > 1 else "")
        return f"not delivered ({self.reason}: {self.detail})" if self.detail else self.reason


def check_text(text: str) -> None:
    """Refuse a text the protocol cannot type as one literal line.

    Raises
    ------
    ValueError
        Empty, longer than :data:`MAX_TEXT`, or holding a control character.
    """
    if not text.strip():
        msg = "poke text is empty"
        raise ValueError(msg)
    if len(text) > MAX_TEXT:
        msg = f"poke text is {len(text)} characters; at most {MAX_TEXT}"
        raise ValueError(msg)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        msg = f"poke text holds a control character: {text!r}"
        raise ValueError(msg)


def poke(
    tmux: Keyboard,
    pane_id: str,
    text: str,
    ui: AgentUI,
    *,
    clock: t.Callable[[], float] = time.monotonic,
    sleep: t.Callable[[float], None] = time.sleep,
    settle: float = 3.0,
    tries: int = 3,
    allow_limited: bool = False,
) -> PokeOutcome:
    """Submit *text* to the agent in *pane_id* as its own turn, or leave the pane untouched.

    See the module's docstring for the protocol. *allow_limited* lets the caller poke
    an agent that still shows a limit with an empty box (it judged the limit over,
    e.g. past the reset time the reading gave). Each wait lasts at most *settle*
    seconds, so a poke takes at most about ``(tries + 2) * settle``; a refused poke
    takes one tmux call.

    Raises
    ------
    ValueError
        *text* cannot be typed as one line (:func:`check_text`).
    gtd.exc.TmuxError
        tmux failed or timed out; the poke may be half done (its text in the box).
    """
    check_text(text)
    screen = tmux.screen(pane_id)
    reading = ui.read(screen)
    refused = _refusal(screen, reading, allow_limited=allow_limited)
    if refused is not None:
        return refused
    waits = _Waits(tmux, pane_id, ui, text, settle, clock, sleep, allow_limited)
    tmux.send_literal(pane_id, text)
    echoed = waits.wait(lambda r: r.input != text and _could_become(r, text))
    if echoed.input != text or not _ready(echoed, allow_limited):
        return waits.back_off(echoed, 0)
    enters = 0
    last = echoed
    while enters < tries:
        screen = tmux.screen(pane_id)
        current = ui.read(screen)
        if screen.in_mode:
            # Keys would go to tmux's copy mode now, not to the agent: touch nothing.
            logger.warning("poke of %s: copy mode began during the poke; its text stays in the box",
                           pane_id, extra={"GTD_PANE": pane_id})  # fmt: skip
            return PokeOutcome(False, COPY_MODE, "copy mode began during the poke", current, enters)
        if current.input != text or not _ready(current, allow_limited):
            return waits.back_off(current, enters)
        tmux.send_key(pane_id, "Enter")
        enters += 1
        # A redraw may show no input box for a moment (a line agent between its echoed
        # newline and its next prompt): wait through it, up to settle, before judging.
        last = waits.wait(lambda r: r.input in (text, None))
        if last.input == "":
            return PokeOutcome(True, DELIVERED, "", last, enters)
        if last.input != text:
            return waits.back_off(last, enters)
    return waits.back_off(last, enters)


def _refusal(screen: Screen, reading: Reading, *, allow_limited: bool) -> PokeOutcome | None:
    """Why the pane gets no keystroke now, or None when it may be poked."""
    if screen.in_mode:
        return PokeOutcome(False, COPY_MODE, "the pane is in tmux copy mode", reading)
    if not _ready(reading, allow_limited):
        return PokeOutcome(False, reading.condition.value, reading.detail, reading)
    if reading.input:
        words = f"a person's text in the input box ({len(reading.input)} characters)"
        return PokeOutcome(False, INPUT, words, reading)
    return None


def _ready(reading: Reading, allow_limited: bool) -> bool:
    """Idle (or limited, when the caller allows it) with an input box."""
    if reading.input is None:
        return False
    return reading.condition is Condition.IDLE or (
        allow_limited and reading.condition is Condition.LIMITED
    )


def _could_become(reading: Reading, text: str) -> bool:
    """Whether the box is on its way to holding *text* (empty or a prefix of it)."""
    return reading.input is not None and text.startswith(reading.input)


@dataclasses.dataclass(frozen=True, slots=True)
class _Waits:
    """One poke's context: the pane, its reader, the text and the time it may take."""

    tmux: Keyboard
    pane_id: str
    ui: AgentUI
    text: str
    settle: float
    clock: t.Callable[[], float]
    sleep: t.Callable[[float], None]
    allow_limited: bool

    def wait(self, keep_waiting: t.Callable[[Reading], bool]) -> Reading:
        """Read every 20 ms while *keep_waiting* holds, at most *settle* seconds; the last."""
        deadline = self.clock() + self.settle
        while True:
            reading = self.ui.read(self.tmux.screen(self.pane_id))
            if not keep_waiting(reading) or self.clock() >= deadline:
                return reading
            self.sleep(POLL)

    def back_off(self, seen: Reading, enters: int) -> PokeOutcome:
        """Erase the poke's own text from the end of the box and say why it stopped.

        Only a box that ends with the poke's text is touched (backspaces, as many as
        its characters), so whatever a person typed before it stays. A box that
        changed otherwise is left alone and logged.
        """
        text = self.text
        if not _ready(seen, self.allow_limited):
            reason = seen.condition.value
            detail = f"{seen.detail or reason} (appeared during the poke)"
        elif seen.input == text:
            reason = NOT_CONFIRMED
            detail = f"the text stayed in the box after {enters} Enter presses"
        elif seen.input is not None and text.startswith(seen.input) and not enters:
            reason, detail = NOT_ECHOED, "the typed text did not show in the input box"
            # A stalled agent may still echo it: give it one more settle, then erase it.
            seen = self.wait(lambda r: r.input != text and _could_become(r, text))
        else:
            reason, detail = DISTURBED, "the input box changed during the poke"
        if seen.input is not None and seen.input.endswith(text):
            keep = seen.input[: -len(text)]
            self.tmux.send_key(self.pane_id, *["BSpace"] * len(text))
            seen = self.wait(lambda r: r.input != keep)
            if seen.input != keep:
                logger.warning(
                    "poke of %s: the input box holds %r after erasing the poke's text",
                    self.pane_id,
                    seen.input,
                    extra={"GTD_PANE": self.pane_id, "GTD_INPUT": seen.input or ""},
                )
        elif seen.input is not None and seen.input.startswith(text) and "\n" not in seen.input:
            # A person's keys landed right after the poke's: delete the poke's part from
            # the front, then put the cursor back at the end where theirs was.
            keep = seen.input[len(text) :]
            self.tmux.send_key(self.pane_id, "Home", *["DC"] * len(text), "End")
            seen = self.wait(lambda r: r.input != keep)
        elif seen.input and text in seen.input:
            logger.warning(
                "poke of %s: left %r in the input box (it changed around the poke's text)",
                self.pane_id,
                seen.input,
                extra={"GTD_PANE": self.pane_id, "GTD_INPUT": seen.input},
            )
        return PokeOutcome(False, reason, detail, seen, enters)
