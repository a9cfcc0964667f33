"""What an agent's pane shows, and what that means: pure, and the same for every agent.

:class:`Screen` is one snapshot of a pane (its text, which cells are faint, the
cursor, the pane's title and whether tmux's copy mode covers it), read in one tmux
call by :meth:`gtd.tmux.Tmux.screen`. An :class:`AgentUI` adapter (``gtd.claude``
for Claude Code) turns it into a :class:`Reading`: a :class:`Condition` (SPEC's
``gtd status`` values), a detail a person understands, and the input box's text.
Nothing here runs a process or reads a clock.
"""

# ruff: noqa: RUF002 - the examples show what Claude Code draws (U+276F and others)

from __future__ import annotations

import dataclasses
import datetime
import enum
import re
import typing as t
import unicodedata

NORMAL, FAINT, REVERSE = "0", "1", "2"
"""Style marks in :attr:`Screen.styles`: one per character of the line."""


class Condition(enum.Enum):
    """What an agent is doing, as ``gtd status --json`` names it (SPEC)."""

    IDLE = "idle"
    """At its prompt with nothing running: a poke may go in."""
    BUSY = "busy"
    """A turn or a tool is running."""
    DIALOG = "dialog"
    """Waiting at a dialog, a menu or a login screen: it gets no keystroke."""
    LIMITED = "limited"
    """At a usage or rate limit."""
    STARTING = "starting"
    """Started, its prompt not shown yet."""
    BACKOFF = "backoff"
    """Not running; the crash-loop guard holds its restart back (set by the daemon)."""
    DEAD = "dead"
    """Its process is gone (set by the daemon)."""
    STOPPED = "stopped"
    """Not supervised or stopped on purpose (set by the daemon)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Screen:
    """One snapshot of a pane.

    ``lines`` hold the text (trailing blanks trimmed by tmux); ``styles[i]`` has one
    mark per character of ``lines[i]`` (:data:`FAINT`, :data:`REVERSE`, :data:`NORMAL`,
    or their sum as a digit). The cursor is in cells, 0-based, as tmux reports it.
    """

    lines: tuple[str, ...]
    cursor_x: int
    cursor_y: int
    width: int
    height: int
    styles: tuple[str, ...] = ()
    title: str = ""
    in_mode: bool = False
    """tmux copy mode (a person scrolling): keys go to tmux, not the agent."""

    def line(self, y: int) -> str:
        """Row *y*, or ``""`` past the end."""
        return self.lines[y] if 0 <= y < len(self.lines) else ""

    def style(self, y: int) -> str:
        """The style marks of row *y* (``NORMAL`` where none were recorded)."""
        marks = self.styles[y] if 0 <= y < len(self.styles) else ""
        return marks.ljust(len(self.line(y)), NORMAL)

    def text(self) -> str:
        """The whole screen as text, one row a line (what a person sees)."""
        return "\n".join(self.lines)

    @classmethod
    def plain(
        cls, text: str, *, cursor: tuple[int, int] = (0, 0), width: int = 0, title: str = ""
    ) -> Screen:
        """A screen from plain text (no styles), for tests and examples."""
        lines = tuple(text.split("\n"))
        return cls(
            lines,
            cursor[0],
            cursor[1],
            width or max(map(cells, lines), default=0),
            len(lines),
            title=title,
        )

    @classmethod
    def from_capture(
        cls,
        capture: str,
        *,
        cursor_x: int,
        cursor_y: int,
        width: int,
        height: int,
        title: str = "",
        in_mode: bool = False,
    ) -> Screen:
        r"""Parse ``capture-pane -p -e`` output (text with SGR escapes) into a screen.

        >>> s = Screen.from_capture("\x1b[2mhint\x1b[0m ok\n", cursor_x=0, cursor_y=0,
        ...                         width=10, height=2)
        >>> s.lines, s.styles
        (('hint ok', ''), ('1111000', ''))
        """
        rows = capture.split("\n")
        if rows and rows[-1] == "" and capture.endswith("\n"):
            rows.pop()
        parsed = [parse_sgr_line(row) for row in rows]
        parsed += [("", "")] * (height - len(parsed))
        return cls(
            tuple(p[0] for p in parsed),
            cursor_x,
            cursor_y,
            width,
            height,
            tuple(p[1] for p in parsed),
            title,
            in_mode,
        )


_ESCAPE = re.compile(r"\x1b(?:\[([0-9;:?]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def parse_sgr_line(row: str) -> tuple[str, str]:
    r"""Split one captured row into its text and one style mark per character.

    Only faint (SGR 2) and reverse (SGR 7) are kept; colours and other escapes are
    dropped. Attributes carry over from earlier rows in a real terminal, but tmux's
    capture restates them on every row, so each row starts plain.

    >>> parse_sgr_line("\x1b[38;5;246m❯\xa0\x1b[7mP\x1b[0;2m\x1b[39mress up")
    ('❯\xa0Press up', '0021111111')
    >>> parse_sgr_line("a\x1b[1;2mb\x1b[22mc\x1b[7;2md\x1b[27me")
    ('abcde', '01031')
    """
    text: list[str] = []
    marks: list[str] = []
    faint = reverse = False
    pos = 0
    for match in _ESCAPE.finditer(row):
        chunk = row[pos : match.start()]
        mark = str(int(faint) + 2 * int(reverse))
        text.append(chunk)
        marks.append(mark * len(chunk))
        pos = match.end()
        if match.group(2) != "m":
            continue
        faint, reverse = _apply_sgr(match.group(1) or "0", faint, reverse)
    chunk = row[pos:]
    text.append(chunk)
    marks.append(str(int(faint) + 2 * int(reverse)) * len(chunk))
    return "".join(text), "".join(marks)


def _apply_sgr(params: str, faint: bool, reverse: bool) -> tuple[bool, bool]:
    """Apply one SGR parameter list to the faint and reverse flags."""
    codes = [int(p) if p.isdigit() else 0 for p in re.split("[;:]", params)]
    i = 0
    while i < len(codes):
        code = codes[i]
        if code == 0:
            faint = reverse = False
        elif code == 2:
            faint = True
        elif code == 22:
            faint = False
        elif code == 7:
            reverse = True
        elif code == 27:
            reverse = False
        elif code in (38, 48, 58) and i + 1 < len(codes):
            # Extended colours carry their own arguments: 5;N or 2;R;G;B.
            i += 2 if codes[i + 1] == 5 else 4
        i += 1
    return faint, reverse


def cells(text: str) -> int:
    """Terminal columns *text* takes (wide East Asian characters and emoji take two).

    >>> cells("ab"), cells("日本"), cells("e\u0301")
    (2, 4, 1)
    """
    return sum(char_cells(c) for c in text)


def char_cells(char: str) -> int:
    """Columns one character takes: 0 for combining marks, 2 for wide ones."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def index_at_cell(text: str, cell: int) -> int:
    """The index of the character that covers column *cell* (``len(text)`` past the end).

    >>> index_at_cell("ab日c", 3), index_at_cell("ab日c", 4), index_at_cell("ab", 5)
    (2, 3, 2)
    """
    width = 0
    for i, char in enumerate(text):
        width += char_cells(char)
        if width > cell:
            return i
    return len(text)


@dataclasses.dataclass(frozen=True, slots=True)
class Reading:
    """What an adapter made of a screen."""

    condition: Condition
    detail: str = ""
    """For a person: ``"folder-trust dialog"``, ``"usage limit, resets 6:12pm"`` ..."""
    input: str | None = None
    """The input box's text (``""`` when empty or showing only a hint); None when no
    input box is visible."""
    resets: str | None = None
    """When a limit resets, as the agent shows it (``"6:12pm"``, ``"Nov 28, 6pm"``)."""

    def describe(self) -> str:
        """``condition`` and detail in one phrase, for STATUS= and logs.

        >>> Reading(Condition.DIALOG, "folder-trust dialog").describe()
        'dialog: folder-trust dialog'
        >>> Reading(Condition.IDLE).describe()
        'idle'
        """
        value = self.condition.value
        return f"{value}: {self.detail}" if self.detail else value


class AgentUI(t.Protocol):
    """An adapter that reads one kind of agent's screen."""

    name: str
    """The agent's name in messages (``"Claude Code"``)."""

    def read(self, screen: Screen) -> Reading:
        """Judge *screen*; pure, never raises for an unknown screen."""
        ...

    def resets_at(self, reading: Reading, seen: datetime.datetime) -> datetime.datetime | None:
        """When the limit *reading* shows resets, first seen at *seen*; None if unknown."""
        ...


class PlainPrompt:
    """A line-reading agent whose prompt is ``> ``: the cursor's row is its input line.

    Idle when that row starts with the prompt (its input is the rest of the row);
    anything else reads as starting. It knows no busy, dialog or limit screens: a
    template for adapting gtd to another agent, and the stand-in agent of the tests.

    >>> PlainPrompt().read(Screen.plain("> half typed", cursor=(12, 0)))
    Reading(condition=<Condition.IDLE: 'idle'>, detail='', input='half typed', resets=None)
    >>> PlainPrompt().read(Screen.plain("loading", cursor=(7, 0))).condition
    <Condition.STARTING: 'starting'>
    """

    name = "plain prompt"
    prompt = "> "

    def read(self, screen: Screen) -> Reading:
        """The cursor's row: the prompt and what follows it, or no prompt yet."""
        row = screen.line(screen.cursor_y)
        if row == self.prompt.rstrip() or row.startswith(self.prompt):
            return Reading(Condition.IDLE, "", row[len(self.prompt) :])
        return Reading(Condition.STARTING, "no prompt yet")

    def resets_at(self, reading: Reading, seen: datetime.datetime) -> datetime.datetime | None:
        """A plain agent shows no limits."""
        return None


ADAPTERS = ("claude-code", "plain")
"""The ``[agent] ui`` values: which adapter reads the agents' screens."""


def adapter(name: str) -> AgentUI:
    """The adapter for an ``[agent] ui`` value (one of :data:`ADAPTERS`)."""
    if name == "plain":
        return PlainPrompt()
    from gtd.claude import ClaudeCode

    return ClaudeCode()
