"""What a valid config value is: one pure parser per kind of value.

Each parser takes the raw TOML value, the :class:`Source` it came from and the
dotted key, and returns the typed value or raises :class:`~gtd.exc.ConfigError`
naming the file, the key and what is wrong. :mod:`gtd.config` declares which key
uses which parser.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shlex
import typing as t
import unicodedata

from gtd.exc import ConfigError, IdentityError
from gtd.identities import Identity, parse_identity

MAX_COMM_LENGTH = 15
"""The kernel's comm name limit, which is all a process name shows."""

_DURATION = re.compile(r"(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?|([0-9]+)")
_SOCKET = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_TYPE_NAMES = {bool: "boolean", int: "integer", str: "string", list: "array", dict: "table"}
_T = t.TypeVar("_T")
_Path = pathlib.Path | None


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    """Where config text came from, and what ``~`` and ``GT_TOWN_ROOT`` mean there."""

    path: pathlib.Path | None
    env: t.Mapping[str, str]
    home: pathlib.Path


def type_name(value: object) -> str:
    """TOML's name for the type of *value* (for messages)."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def expect(value: object, typ: type[_T], what: str, path: _Path, key: str) -> _T:
    """*value* if it has exactly type *typ*; else a ConfigError saying what was expected."""
    if type(value) is not typ:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ConfigError(path, key, f"expected {what}, got {type_name(value)} {shown}")
    return value


def parse_duration(value: object, *, path: pathlib.Path | None, key: str) -> float:
    """Return a duration in seconds.

    Accepts an integer of seconds or a string: ``"90"``, ``"300s"``, ``"5m"``,
    ``"1h"``, ``"1h30m"`` (units in the order h, m, s, each at most once).

    Raises
    ------
    ConfigError
        For booleans, floats and other types, unknown syntax, and anything
        under one second or over one day. The message names ``key`` and the value.
    """
    if type(value) is int:
        seconds = value
    else:
        text = expect(value, str, "a duration like '5m' or an integer of seconds", path, key)
        match = _DURATION.fullmatch(text) if len(text) <= 32 else None
        if match is None or not any(match.groups()):
            msg = f"invalid duration {text[:60]!r}: use seconds or h/m/s, like 300, '5m', '1h30m'"
            raise ConfigError(path, key, msg)
        hours, minutes, secs, plain = (int(group or 0) for group in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs + plain
    if not 1 <= seconds <= 86400:
        msg = f"duration {value!r} is out of range: it must be from 1s to 1 day (86400s)"
        raise ConfigError(path, key, msg)
    return float(seconds)


def duration(value: object, src: Source, key: str) -> float:
    """A duration key (see :func:`parse_duration`)."""
    return parse_duration(value, path=src.path, key=key)


def control(text: str) -> str | None:
    """Return the first control or line-separator character as ``U+XXXX``, if any."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return f"U+{ord(char):04X}"
    return None


def command(value: object, src: Source, key: str, *, may_be_off: bool = False) -> str:
    """A command line that splits into words (shell quoting); blank is an error."""
    text = expect(value, str, "a string", src.path, key)
    if may_be_off and text == "":
        return text
    if "\0" in text:
        raise ConfigError(src.path, key, "contains a NUL character")
    try:
        words = shlex.split(text)
    except ValueError as exc:
        msg = f"cannot split {text[:80]!r} into words: {str(exc).lower()}"
        raise ConfigError(src.path, key, msg) from None
    if not words:
        blank = 'is blank (use "" to turn it off)' if may_be_off else "is blank"
        raise ConfigError(src.path, key, blank)
    return text


def optional_command(value: object, src: Source, key: str) -> str:
    """A command line, or ``""`` to turn the feature off."""
    return command(value, src, key, may_be_off=True)


def strings(value: object, src: Source, key: str) -> tuple[str, ...]:
    """An array of strings; each wrong item is named with its index."""
    items = expect(value, list, "an array of strings", src.path, key)
    return tuple(
        expect(item, str, "a string", src.path, f"{key}[{i}]") for i, item in enumerate(items)
    )


def expand(text: str, home: pathlib.Path) -> pathlib.Path:
    """``~`` and ``~/x`` under *home*; anything else as written."""
    return home / text[2:] if text == "~" or text.startswith("~/") else pathlib.Path(text)


def town_root(value: object, src: Source, key: str) -> pathlib.Path:
    """The town root: the key, else ``GT_TOWN_ROOT``, else ``~/gt``; absolute after ``~``."""
    if value is not None:
        text, origin = expect(value, str, "a string", src.path, key), ""
    elif src.env.get("GT_TOWN_ROOT"):
        text, origin = src.env["GT_TOWN_ROOT"], " (from GT_TOWN_ROOT)"
    else:
        text, origin = "~/gt", ""
    if not text or "\0" in text:
        raise ConfigError(src.path, key, f"must be a non-empty path without NUL{origin}")
    root = expand(text, src.home)
    if not root.is_absolute():
        msg = f"{text!r}{origin} is not an absolute path (use /... or ~/...)"
        raise ConfigError(src.path, key, msg)
    return root


def alive(value: object, src: Source, key: str) -> tuple[str, ...]:
    """Process names: no ``/``, whitespace or control characters, 15 bytes at most."""
    names = strings(value, src, key)
    if not names:
        raise ConfigError(src.path, key, "must name at least one command")
    for i, name in enumerate(names):
        if not name or "/" in name or any(c.isspace() for c in name) or control(name):
            msg = f"{name!r} is not a process name (no '/', whitespace or control characters)"
            if "/" in name and (base := name.rsplit("/", 1)[1]):
                msg += f"; use {base!r}"
            raise ConfigError(src.path, f"{key}[{i}]", msg)
        if len(name.encode()) > MAX_COMM_LENGTH:
            msg = (
                f"{name!r} is {len(name.encode())} characters long, but tmux reports at most "
                f"{MAX_COMM_LENGTH} characters of a command name (the kernel's comm limit), "
                "so it could never match"
            )
            raise ConfigError(src.path, f"{key}[{i}]", msg)
    return names


def ui(value: object, src: Source, key: str) -> str:
    """The name of a screen adapter (:data:`gtd.screen.ADAPTERS`)."""
    from gtd.screen import ADAPTERS

    name = expect(value, str, "a string", src.path, key)
    if name not in ADAPTERS:
        msg = f"{name[:40]!r} is not one of: {', '.join(ADAPTERS)}"
        raise ConfigError(src.path, key, msg)
    return name


def socket(value: object, src: Source, key: str) -> str:
    """A ``tmux -L`` socket name, or ``""`` for the default server."""
    socket = expect(value, str, "a string", src.path, key)
    if socket and _SOCKET.fullmatch(socket) is None:
        msg = (
            f"{socket[:80]!r} is not a socket name: use 1-64 letters, digits, '_', '.', '-', "
            "not starting with '.' (or \"\" for the default server)"
        )
        raise ConfigError(src.path, key, msg)
    return socket


def messages(value: object, src: Source, key: str) -> tuple[str, ...]:
    """Heartbeat messages: 1 to 500 characters, no control or line-separator characters."""
    messages = strings(value, src, key)
    for i, message in enumerate(messages):
        where = f"{key}[{i}]"
        if not 1 <= len(message) <= 500:
            msg = f"must be 1 to 500 characters long, not {len(message)}"
            raise ConfigError(src.path, where, msg)
        if bad := control(message):
            msg = f"contains control character {bad}; a newline would submit the poke early"
            raise ConfigError(src.path, where, msg)
    return messages


def identities(value: object, src: Source, key: str) -> tuple[Identity, ...]:
    """Agent identities in any form, parsed at the edge; none twice."""
    found: list[Identity] = []
    for i, text in enumerate(strings(value, src, key)):
        try:
            identity = parse_identity(text)
        except IdentityError as err:
            raise ConfigError(src.path, f"{key}[{i}]", str(err)) from None
        if identity in found:
            raise ConfigError(src.path, f"{key}[{i}]", f"{identity.dash} is listed twice")
        found.append(identity)
    return tuple(found)


def dash_forms(identities: tuple[Identity, ...]) -> list[str]:
    """Identities as the file writes them (dash forms)."""
    return [i.dash for i in identities]
