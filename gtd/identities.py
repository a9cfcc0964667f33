"""Agent identities: SPEC's table of names, sessions, environments and paths.

Everything here is pure. Text from the outside (a CLI argument, a lifecycle
request, a tmux session name) becomes an :class:`Identity` only through
:func:`parse_identity`, which checks every character before any part of the
text can reach a path, a tmux target or a shell.
"""

from __future__ import annotations

import dataclasses
import enum
import pathlib
import re

from gtd.exc import IdentityError

MAX_IDENTITY_LENGTH = 200
"""Longest input :func:`parse_identity` looks at; longer text is rejected unread."""

SESSION_PREFIX = "gt-"
"""Every agent's tmux session is ``gt-`` plus the identity's dash form."""

RESERVED_RIGS = frozenset({"mayor", "deacon", "daemon"})
"""Town-level directories that a rig name would collide with."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,63}")
_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-/")
_METACHARACTERS = frozenset(";$()`|&<>*?'\"\\ :#{}%")


class Kind(enum.Enum):
    """The five agent roles that gtd can start."""

    MAYOR = "mayor"
    DEACON = "deacon"
    WITNESS = "witness"
    REFINERY = "refinery"
    CREW = "crew"


_TOWN_KINDS = frozenset({Kind.MAYOR, Kind.DEACON})


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """One agent: its role, its rig (rig kinds) and its crew name (crew only).

    Construction validates the parts, so an ``Identity`` always names a safe
    session and paths inside the town.

    Raises
    ------
    IdentityError
        When ``rig``/``name`` are missing, superfluous or not valid names.
    """

    kind: Kind
    rig: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        shown = f"{self.kind.value} rig={self.rig!r} name={self.name!r}"
        if self.kind in _TOWN_KINDS:
            if self.rig is not None or self.name is not None:
                raise IdentityError(shown, f"{self.kind.value} has no rig or crew name")
            return
        if self.rig is None:
            raise IdentityError(shown, f"{self.kind.value} needs a rig")
        _check_name(shown, self.rig, "rig")
        if self.kind is Kind.CREW:
            if self.name is None:
                raise IdentityError(shown, "crew needs a name")
            _check_name(shown, self.name, "crew")
        elif self.name is not None:
            raise IdentityError(shown, f"{self.kind.value} has no crew name")

    def _parts(self) -> tuple[str, ...]:
        """The words of both forms: ``(kind,)``, ``(rig, kind)``, ``(rig, "crew", name)``."""
        if self.kind in _TOWN_KINDS:
            return (self.kind.value,)
        if self.kind is Kind.CREW:
            return (str(self.rig), "crew", str(self.name))
        return (str(self.rig), self.kind.value)

    @property
    def dash(self) -> str:
        """The canonical form: ``mayor``, ``<rig>-witness``, ``<rig>-crew-<name>``."""
        return "-".join(self._parts())

    @property
    def slash(self) -> str:
        """The ``BD_ACTOR`` form: ``mayor``, ``<rig>/witness``, ``<rig>/crew/<name>``."""
        return "/".join(self._parts())

    @property
    def session(self) -> str:
        """The agent's tmux session name."""
        return SESSION_PREFIX + self.dash

    @property
    def gt_role(self) -> str:
        """The ``GT_ROLE`` value (the dash form)."""
        return self.dash

    @property
    def bd_actor(self) -> str:
        """The ``BD_ACTOR`` value (the slash form)."""
        return self.slash

    @property
    def presync(self) -> bool:
        """Whether a restart syncs the workdir (git fetch, pull, bd sync) first."""
        return self.kind in (Kind.REFINERY, Kind.CREW)

    def env(self) -> dict[str, str]:
        """Return the identity variables of the agent's own initial environment.

        Exactly ``GT_ROLE`` and ``BD_ACTOR``, plus ``GT_RIG`` for rig kinds and
        ``GT_REFINERY=1`` for the refinery.
        """
        env = {"GT_ROLE": self.gt_role, "BD_ACTOR": self.bd_actor}
        if self.rig is not None:
            env["GT_RIG"] = self.rig
        if self.kind is Kind.REFINERY:
            env["GT_REFINERY"] = "1"
        return env

    def workdir(self, town: pathlib.Path) -> pathlib.Path:
        """Return the directory the agent runs in, under ``town``."""
        match self:
            case Identity(kind=Kind.DEACON):
                return town / "deacon"
            case Identity(kind=Kind.WITNESS, rig=str(rig)):
                return town / rig
            case Identity(kind=Kind.REFINERY, rig=str(rig)):
                return town / rig / "refinery" / "rig"
            case Identity(kind=Kind.CREW, rig=str(rig), name=str(name)):
                return town / rig / "crew" / name
        return town  # the mayor works in the town root itself

    def state_file(self, town: pathlib.Path) -> pathlib.Path:
        """Return the agent's ``state.json`` (holds the ``requesting_<action>`` flags)."""
        match self:
            case Identity(kind=Kind.WITNESS | Kind.REFINERY, rig=str(rig)):
                return town / rig / self.kind.value / "state.json"
            case Identity(kind=Kind.CREW):
                return self.workdir(town) / "state.json"
        return town / self.kind.value / "state.json"  # mayor, deacon

    def __str__(self) -> str:
        return self.dash


MAYOR = Identity(Kind.MAYOR)
DEACON = Identity(Kind.DEACON)


def _check_name(identity: str, part: str, what: str) -> None:
    if not part:
        raise IdentityError(identity, f"empty {what} name")
    if _NAME.fullmatch(part) is None:
        raise IdentityError(
            identity,
            f"invalid {what} name {part!r}: use up to 64 letters, digits and '_', "
            "starting with a letter or digit",
        )
    if what == "rig" and part.lower() in RESERVED_RIGS:
        raise IdentityError(identity, f"{part!r} is reserved and cannot be a rig name")


def _check_characters(text: str) -> None:
    for char in text:
        if char in _ALLOWED:
            continue
        if not char.isascii():
            problem = f"non-ASCII character {char!r}"
        elif char == "\0":
            problem = "NUL character"
        elif char.isspace():
            problem = f"whitespace {char!r}"
        elif not char.isprintable():
            problem = f"control character {char!r}"
        elif char in _METACHARACTERS:
            problem = f"shell/tmux metacharacter {char!r}"
        else:
            problem = f"character {char!r} is not allowed"
        raise IdentityError(text, f"{problem} (identities use letters, digits, '_', '-', '/')")


_SHAPES = "mayor, deacon, <rig>-witness, <rig>-refinery, <rig>-crew-<name> or a slash form"


def _from_parts(text: str, parts: list[str]) -> Identity:
    """``[rig, witness|refinery]`` or ``[rig, "crew", name]``, whichever separator split them."""
    if len(parts) == 2 and parts[1] in ("witness", "refinery"):
        _check_name(text, parts[0], "rig")
        return Identity(Kind(parts[1]), parts[0])
    if len(parts) == 3 and parts[1] == "crew":
        _check_name(text, parts[0], "rig")
        _check_name(text, parts[2], "crew")
        return Identity(Kind.CREW, parts[0], parts[2])
    if any(not part for part in parts):
        raise IdentityError(text, f"empty part; expected {_SHAPES}")
    raise IdentityError(text, f"unknown shape; expected {_SHAPES}")


def parse_identity(text: str) -> Identity:
    """Parse an identity in its dash or slash form.

    ``mayor/`` and ``deacon/`` (upstream's mail identities) are accepted too.
    Every character is checked before the text is split, and nothing is built
    from it until all parts are valid names.

    Raises
    ------
    IdentityError
        For anything that is not one of SPEC's shapes: empty or over-long text,
        ``..``, metacharacters, whitespace, non-ASCII, empty parts, reserved rig
        names (``mayor``, ``deacon``, ``daemon``).
    """
    if not isinstance(text, str):
        raise IdentityError(repr(text), f"expected a string, got {type(text).__name__}")
    if not text:
        raise IdentityError(text, "empty identity")
    if len(text) > MAX_IDENTITY_LENGTH:
        raise IdentityError(text, f"longer than {MAX_IDENTITY_LENGTH} characters")
    if ".." in text:
        raise IdentityError(text, "'..' is not allowed")
    _check_characters(text)
    if text in ("mayor", "mayor/"):
        return MAYOR
    if text in ("deacon", "deacon/"):
        return DEACON
    return _from_parts(text, text.split("/" if "/" in text else "-"))


def identity_from_session(session: str) -> Identity | None:
    """Return the identity whose :attr:`Identity.session` is ``session``.

    ``None`` for sessions that are not gtd agents (no ``gt-`` prefix, or not a
    valid canonical name), so callers can filter a session listing with it.
    """
    if not session.startswith(SESSION_PREFIX):
        return None
    try:
        identity = parse_identity(session[len(SESSION_PREFIX) :])
    except IdentityError:
        return None
    return identity if identity.session == session else None
