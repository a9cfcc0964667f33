"""Claude Code: how its screen reads, and how a user trusts the town's workdirs for it.

:class:`ClaudeCode` is the :class:`gtd.screen.AgentUI` adapter, written from the
screens of the version the real-agent tests pin (``scripts/claude-code``; the screens
are kept in ``tests/screens/<version>/``; ``docs/agents.md`` has the facts):

- The input box is a row starting ``❯`` + U+00A0 (no-break space) between two rules
  of ``─``; more rows of input (wrapped or new lines) are indented by two blanks.
  A hint in an empty box (``Press up to edit queued messages``, ``Once fixed, resend
  your message``) is drawn faint, behind the inverse-video cursor cell.
- Busy: a spinner row above the box (``✻ Orbiting… (16s)``), ``esc to interrupt``
  under it, or a spinner in the pane title (``◐ Claude Code``; ``✳`` when idle).
- Dialogs and menus (folder trust, the bypass-permissions warning, rewind,
  ``/rate-limit-options``) replace the input box; their selection row is ``❯`` and a
  plain blank, and they end with ``Enter to confirm · Esc to cancel`` or the like.
- Limits: ``⚠ Usage limit reached · limit resets 6:12pm`` under the box while
  Claude Code waits to continue by itself; ``You've hit your 5-hour limit · resets
  6:12pm (UTC)`` or ``API Error: Request rejected (429)`` as the last answer.

The trust functions write the folder-trust answer into Claude Code's own config
(``~/.claude.json``, or ``$CLAUDE_CONFIG_DIR/.claude.json``), keeping every other key.
"""

# ruff: noqa: RUF001, RUF002 - Claude Code draws U+276F, box rules and ellipses; we match them

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import re
import typing as t

from gtd.exc import TrustError
from gtd.screen import FAINT, REVERSE, Condition, Reading, Screen
from gtd.store import atomic_write

PROMPT = "❯\u00a0"
"""The input box's prompt: U+276F and a no-break space (transcript echoes use a blank)."""
RULE = "─"
INDENT = "  "
BUSY_TITLE = frozenset("◐◑◒◓⠂⠐")
"""First characters of the pane title while a turn runs (``✳`` when idle)."""
_SPINNER = re.compile(r"^(?P<glyph>[^\w\s❯●⎿│╭╰▐▝▘])\s+\S[^…]*…(?:\s+\(.*\))?\s*$")
_RESETS = re.compile(r"resets (?P<when>.+?)\s*(?:·|$)")
DIALOG_FOOTERS = ("Enter to confirm", "Enter to continue", "Enter to select", "Esc to cancel")


@dataclasses.dataclass(frozen=True, slots=True)
class InputBox:
    """Where the input box is on a screen."""

    top: int
    """Row of the rule above it."""
    bottom: int
    """Row of the rule below it."""
    text: str
    """What it holds, rows joined by newlines, the prompt, indents and a hint left out."""


class ClaudeCode:
    r"""The Claude Code adapter (:class:`gtd.screen.AgentUI`).

    >>> box = "─" * 20
    >>> idle = Screen.plain(f"● OK.\n{box}\n❯\u00a0\n{box}\n  ⏵⏵ bypass", cursor=(2, 2))
    >>> ClaudeCode().read(idle)
    Reading(condition=<Condition.IDLE: 'idle'>, detail='', input='', resets=None)
    """

    name = "Claude Code"

    def resets_at(self, reading: Reading, seen: datetime.datetime) -> datetime.datetime | None:
        """When the limit resets, from what the screen says (:func:`reset_at`)."""
        return reset_at(reading.resets, seen) if reading.resets else None

    def read(self, screen: Screen) -> Reading:
        """Judge one screen (pure; an unknown screen reads as ``starting``)."""
        box = input_box(screen)
        if box is None:
            return _without_box(screen)
        above = [screen.line(y) for y in range(box.top)]
        below = [screen.line(y) for y in range(box.bottom + 1, len(screen.lines))]
        last = _last_answer(above)
        if any("Not logged in" in line for line in (*above[-3:], *last)):
            return Reading(Condition.DIALOG, "not logged in (run /login)", box.text)
        busy = _busy(screen, above, below, box)
        if busy:
            return Reading(Condition.BUSY, busy, box.text)
        limit = _limit(below, last)
        if limit is not None:
            return dataclasses.replace(limit, input=box.text)
        return Reading(Condition.IDLE, "", box.text)


def is_rule(line: str) -> bool:
    """A row that is only ``─`` (at least ten).

    >>> is_rule("─" * 12), is_rule("── x ──"), is_rule("")
    (True, False, False)
    """
    stripped = line.strip()
    return len(stripped) >= 10 and set(stripped) == {RULE}


def input_box(screen: Screen) -> InputBox | None:
    """The lowest input box on the screen, or None when none is wholly visible."""
    for y in range(len(screen.lines) - 1, 0, -1):
        if not (screen.line(y).startswith(PROMPT) and is_rule(screen.line(y - 1))):
            continue
        bottom = next((b for b in range(y + 1, len(screen.lines)) if is_rule(screen.line(b))), None)
        if bottom is None:
            return None
        return InputBox(y - 1, bottom, _box_text(screen, y, bottom))
    return None


def _box_text(screen: Screen, first: int, bottom: int) -> str:
    """The text of box rows ``first..bottom-1``; ``""`` when all of it is a faint hint."""
    rows, faint, plain = [], 0, 0
    for y in range(first, bottom):
        line, style = screen.line(y), screen.style(y)
        skip = len(PROMPT) if y == first else len(INDENT) if line.startswith(INDENT) else 0
        for char, mark in zip(line[skip:], style[skip:], strict=True):
            if char.isspace() or int(mark) & int(REVERSE):
                continue  # blanks and the cursor cell say nothing about who wrote it
            if int(mark) & int(FAINT):
                faint += 1
            else:
                plain += 1
        rows.append(line[skip:].rstrip())
    if faint and not plain:
        return ""
    return "\n".join(rows).strip("\n")


def _last_answer(above: list[str]) -> list[str]:
    """The rows after the last echoed user turn (``❯`` and a blank), or all of *above*."""
    for y in range(len(above) - 1, -1, -1):
        if above[y].startswith("❯ "):
            return above[y + 1 :]
    return above


def _busy(screen: Screen, above: list[str], below: list[str], box: InputBox) -> str:
    """Why the screen says a turn runs (``""`` when it does not)."""
    # The spinner row sits right above the box, or above a tip or a to-do list under it.
    near = [line for line in above[-16:] if line.strip()]
    for line in near[-12:]:
        match = _SPINNER.match(line)
        if match:
            return f"working: {line[match.end('glyph') :].strip()}"
    if any("esc to interrupt" in line for line in below):
        return "working (esc to interrupt)"
    if screen.title[:1] in BUSY_TITLE:
        return f"working (title {screen.title!r})"
    first = screen.line(box.top + 1)[len(PROMPT) :].strip()
    if first.startswith("Press up to edit queued messages"):
        return "working, messages queued"
    return ""


def _limit(below: list[str], last: list[str]) -> Reading | None:
    """A usage or rate limit shown under the box or as the last answer."""
    for line in below:
        if "limit reached" in line or "limit resets" in line:
            when = _RESETS.search(line)
            resets = when.group("when") if when else None
            auto = any("Continuing automatically" in row for row in below)
            detail = "usage limit" + (f", resets {resets}" if resets else "")
            return Reading(Condition.LIMITED, detail + (", continues by itself" if auto else ""),
                           resets=resets)  # fmt: skip
    for line in last:
        if not line.lstrip().startswith(("●", "⎿")):
            continue  # only the agent's answers and notes; never the banner or a path
        if "You've hit your" in line:
            when = _RESETS.search(line)
            resets = when.group("when") if when else None
            what = line.split("You've hit your", 1)[1].split("·")[0].strip()
            return Reading(Condition.LIMITED, what + (f", resets {resets}" if resets else ""),
                           resets=resets)  # fmt: skip
        if "API Error" in line and "(429)" in line:
            return Reading(Condition.LIMITED, "rate limited (API error 429)")
    return None


def _without_box(screen: Screen) -> Reading:
    """A screen with no input box: a known dialog, another menu, or not started yet."""
    text = screen.text()
    if "Yes, I trust this folder" in text or "one you trust" in text:
        return Reading(Condition.DIALOG, "folder-trust dialog")
    if "Bypass Permissions mode" in text and "Yes, I accept" in text:
        return Reading(Condition.DIALOG, "bypass-permissions warning")
    if "Unable to connect to Anthropic services" in text:
        return Reading(Condition.DIALOG, "login: cannot reach Anthropic (first run, no key)")
    if "Select login method" in text or "Paste code here" in text:
        return Reading(Condition.DIALOG, "login")
    if "Choose the text style" in text:
        return Reading(Condition.DIALOG, "first-run setup (theme)")
    if "wait for limit to reset" in text:
        limit = _limit([], _last_answer(list(screen.lines)))
        resets = limit.resets if limit else None
        detail = f"usage limit, resets {resets}" if resets else "usage limit"
        return Reading(
            Condition.LIMITED, detail + ", at the rate-limit options menu", resets=resets
        )
    if any(f in text for f in DIALOG_FOOTERS):
        return Reading(Condition.DIALOG, _menu_title(screen))
    return Reading(Condition.STARTING, "no prompt yet")


def _menu_title(screen: Screen) -> str:
    """The first words of a menu: the row after its top border (``▔``), else the first row."""
    rows = list(screen.lines)
    start = 0
    for y, line in enumerate(rows):
        if line.strip() and set(line.strip()) <= {"▔", RULE}:
            start = y + 1
    title = next((r.strip() for r in rows[start:] if r.strip()), "")
    return f"menu: {title[:60]}" if title else "menu"


_WHEN = re.compile(
    r"^(?:(?P<mon>[A-Z][a-z]{2}) (?P<day>\d{1,2}), (?:(?P<year>\d{4}), )?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?(?P<ampm>am|pm)(?: \((?P<zone>[^)]+)\))?$"
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def reset_at(resets: str, seen: datetime.datetime) -> datetime.datetime | None:
    """When a limit resets, from the text Claude Code shows and when it was first seen.

    Claude Code writes ``6:22pm`` or ``6pm`` (within 24 hours), ``Nov 30, 3:11pm``
    (later), ``Jan 2, 2027, 6pm`` (another year), each maybe followed by its time zone
    (``(UTC)``, ``(Europe/Berlin)``); without a zone, *seen*'s is used. The answer is
    the first such moment not before *seen* (less a minute, as the text has no
    seconds). None when the text does not parse. *seen* must be timezone-aware.

    >>> seen = datetime.datetime(2026, 11, 27, 15, 2, tzinfo=datetime.UTC)
    >>> reset_at("6:12pm (UTC)", seen).isoformat()
    '2026-11-27T18:12:00+00:00'
    >>> reset_at("9am", seen).isoformat()
    '2026-11-28T09:00:00+00:00'
    >>> reset_at("Nov 30, 3:11pm (UTC)", seen).isoformat()
    '2026-11-30T15:11:00+00:00'
    >>> reset_at("Jan 2, 6pm", seen).isoformat()
    '2027-01-02T18:00:00+00:00'
    >>> reset_at("soon", seen) is None
    True
    """
    match = _WHEN.match(resets.strip())
    if match is None:
        return None
    zone: datetime.tzinfo | None = seen.tzinfo
    if match.group("zone"):
        import zoneinfo  # only for a limit naming its zone: it brings sysconfig, 0.4 MB

        try:
            zone = zoneinfo.ZoneInfo(match.group("zone"))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            return None
    local = seen.astimezone(zone)
    hour = int(match.group("hour")) % 12 + (12 if match.group("ampm") == "pm" else 0)
    minute = int(match.group("minute") or 0)
    earliest = local - datetime.timedelta(minutes=1)
    try:
        if match.group("mon"):
            month = _MONTHS.index(match.group("mon")) + 1
            year = int(match.group("year") or local.year)
            when = local.replace(year=year, month=month, day=int(match.group("day")),
                                 hour=hour, minute=minute, second=0, microsecond=0)  # fmt: skip
            if when < earliest and not match.group("year"):
                when = when.replace(year=year + 1)
            return when
        when = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    except ValueError:
        return None
    return when if when >= earliest else when + datetime.timedelta(days=1)


# -- the folder-trust answer, written by gtd on a user's explicit request ----------


def config_path(env: t.Mapping[str, str] | None = None) -> pathlib.Path:
    """The file Claude Code keeps its global state in (``projects`` with trust answers).

    ``$CLAUDE_CONFIG_DIR/.claude.json`` when that variable is set, else
    ``~/.claude.json``; but when that file is missing and a non-empty legacy
    ``<config dir>/.config.json`` exists, Claude Code reads the legacy one.

    >>> str(config_path({"HOME": "/h"})), str(config_path({"CLAUDE_CONFIG_DIR": "/c"}))
    ('/h/.claude.json', '/c/.claude.json')
    """
    env = os.environ if env is None else env
    home = pathlib.Path(env.get("HOME") or pathlib.Path.home())
    config_dir = env.get("CLAUDE_CONFIG_DIR")
    main = pathlib.Path(config_dir or home) / ".claude.json"
    legacy = pathlib.Path(config_dir or home / ".claude") / ".config.json"
    try:
        if not main.exists() and legacy.is_file() and legacy.stat().st_size > 0:
            return legacy
    except OSError:
        pass
    return main


def trusted(config: t.Mapping[str, t.Any], workdir: str) -> bool:
    """Whether *config* holds the trust answer for exactly *workdir*."""
    projects = config.get("projects")
    entry = projects.get(workdir) if isinstance(projects, dict) else None
    return isinstance(entry, dict) and entry.get("hasTrustDialogAccepted") is True


def with_trust(
    config: t.Mapping[str, t.Any], workdirs: t.Iterable[str]
) -> tuple[dict[str, t.Any], list[str]]:
    """*config* with each workdir marked trusted, and which ones were not before (pure).

    Every other key, and every other key of an existing project entry, is kept.

    Raises
    ------
    ValueError
        A workdir is not absolute and normalised, or ``projects`` is not an object.

    >>> cfg, added = with_trust({"theme": "dark", "projects": {"/a": {"x": 1}}}, ["/a", "/b"])
    >>> cfg == {"theme": "dark", "projects": {"/a": {"x": 1, "hasTrustDialogAccepted": True},
    ...                                       "/b": {"hasTrustDialogAccepted": True}}}, added
    (True, ['/a', '/b'])
    >>> with_trust(cfg, ["/a"])[1]
    []
    """
    out = dict(config)
    projects = out.get("projects", {})
    if not isinstance(projects, dict):
        msg = f"'projects' is a {type(projects).__name__}, not an object"
        raise ValueError(msg)  # noqa: TRY004 - a bad value in a file, reported as such
    projects = dict(projects)
    added = []
    for workdir in workdirs:
        if not os.path.isabs(workdir) or os.path.normpath(workdir) != workdir:
            msg = f"workdir must be an absolute, normalised path: {workdir!r}"
            raise ValueError(msg)
        entry = projects.get(workdir)
        entry = dict(entry) if isinstance(entry, dict) else {}
        if entry.get("hasTrustDialogAccepted") is not True:
            added.append(workdir)
        entry["hasTrustDialogAccepted"] = True
        projects[workdir] = entry
    out["projects"] = projects
    return out, added


MAX_CONFIG_BYTES = 256 << 20


def trust(
    workdirs: t.Iterable[pathlib.Path | str], *, path: pathlib.Path | None = None
) -> list[str]:
    """Mark *workdirs* trusted in Claude Code's config file; return the ones newly trusted.

    Each workdir is made absolute and, when it is reached through a symlink, is
    trusted under both its given and its real path (Claude Code looks the working
    directory up as it resolves it). The file is rewritten atomically (temp file,
    fsync, rename) with its mode kept, through a symlink to its target; a missing
    file is created with mode 0600. Idempotent: nothing is written when every
    workdir is already trusted. Claude Code reads the answer when it starts in that
    workdir; an agent already running keeps its own copy of the file in memory.

    Raises
    ------
    TrustError
        The file is not JSON, not an object, too big, or cannot be read or written.
    """
    target = (path or config_path()).resolve()
    names: list[str] = []
    for workdir in workdirs:
        given = os.path.normpath(os.path.abspath(workdir))
        for name in (given, os.path.realpath(given)):
            if name not in names:
                names.append(name)
    try:
        raw = target.read_bytes() if target.exists() else b"{}"
        if len(raw) > MAX_CONFIG_BYTES:
            msg = f"{target}: larger than {MAX_CONFIG_BYTES} bytes"
            raise TrustError(msg)
        config = json.loads(raw.decode("utf-8") or "{}")
        if not isinstance(config, dict):
            msg = f"{target}: not a JSON object"
            raise TrustError(msg)
        updated, added = with_trust(config, names)
        if not added:
            return []
        mode = target.stat().st_mode & 0o7777 if target.exists() else 0o600
        atomic_write(target, (json.dumps(updated, indent=2) + "\n").encode(), mode=mode)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        msg = f"{target}: not JSON: {err}"
        raise TrustError(msg) from None
    except ValueError as err:
        msg = f"{target}: {err}"
        raise TrustError(msg) from None
    except OSError as err:
        msg = f"{target}: {err.strerror or err}"
        raise TrustError(msg) from None
    return added
