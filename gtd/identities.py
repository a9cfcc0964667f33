"""Agent identities: SPEC's table of names, sessions, environments and paths.

Everything here is pure. Text from the outside (a CLI argument, a lifecycle
request, a tmux session name) becomes an :class:`Identity` only through
:func:`parse_identity`, which checks every character before any part of the
text can reach a path, a tmux target or a shell.

Dash forms are read as upstream reads them (``identityToSession``,
``identityToStateFile``, ``identityToBDActor`` in ``lifecycle.go``): a
``-witness`` or ``-refinery`` suffix first, else the first ``-crew-``, so rig
and crew names may contain dashes (``my-rig-crew-max-2`` is crew ``max-2`` of rig
``my-rig``). An :class:`Identity` whose dash form would read back as another one
(crew ``witness`` of rig ``gastown``, which upstream reads as the witness of rig
``gastown-crew``) cannot be built.
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

MAX_NAME_LENGTH = 64
"""Longest rig or crew name."""

# A dash at either end would merge with the separator or read as an option.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")
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
    session and paths inside the town, and its dash form parses back to it.

    Raises
    ------
    IdentityError
        When ``rig``/``name`` are missing, superfluous or not valid names, or when
        the dash form would read as another identity (a crew rig containing
        ``-crew-`` or ending in ``-crew``; a crew name ``witness`` or ``refinery``
        or ending in ``-witness`` or ``-refinery``).
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
        read = _read_dash(self.dash)
        if read != (self.kind, self.rig, self.name):
            raise IdentityError(
                shown,
                f"its dash form {self.dash!r} reads as {_describe(read)}, not as "
                f"{_describe((self.kind, self.rig, self.name))}",
            )

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
    if len(part) > MAX_NAME_LENGTH or _NAME.fullmatch(part) is None:
        raise IdentityError(
            identity,
            f"invalid {what} name {part!r}: use up to {MAX_NAME_LENGTH} letters, digits, "
            "'_' and '-', starting with a letter or digit and not ending with '-'",
        )
    if what == "rig" and part.lower() in RESERVED_RIGS:
        raise IdentityError(identity, f"{part!r} is reserved and cannot be a rig name")


_Reading = tuple[Kind, str, str | None]


def _read_dash(text: str) -> _Reading | None:
    """Upstream's reading of a rig identity's dash form, before any name is checked.

    >>> _read_dash("my-rig-crew-witness"), _read_dash("a-crew-b-crew-c")
    ((<Kind.WITNESS: 'witness'>, 'my-rig-crew', None), (<Kind.CREW: 'crew'>, 'a', 'b-crew-c'))
    """
    for kind in (Kind.WITNESS, Kind.REFINERY):
        if text.endswith(suffix := f"-{kind.value}"):
            return kind, text[: -len(suffix)], None
    rig, crew, name = text.partition("-crew-")
    return (Kind.CREW, rig, name) if crew else None


def _describe(reading: _Reading | None) -> str:
    if reading is None:
        return "no identity"
    kind, rig, name = reading
    if kind is Kind.CREW:
        return f"crew {name!r} of rig {rig!r}"
    return f"the {kind.value} of rig {rig!r}"


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


_SHAPES = (
    "mayor, deacon, <rig>-witness, <rig>-refinery, <rig>-crew-<name>, "
    "<rig>/witness, <rig>/refinery or <rig>/crew/<name>"
)


def _from_slash(text: str) -> Identity:
    """``rig/witness``, ``rig/refinery`` or ``rig/crew/name``."""
    parts = text.split("/")
    if len(parts) == 2 and parts[1] in ("witness", "refinery"):
        reading: _Reading = (Kind(parts[1]), parts[0], None)
    elif len(parts) == 3 and parts[1] == "crew":
        reading = (Kind.CREW, parts[0], parts[2])
    elif any(not part for part in parts):
        raise IdentityError(text, f"empty part; expected {_SHAPES}")
    else:
        raise IdentityError(text, f"unknown shape; expected {_SHAPES}")
    return _build(text, reading)


def _from_dash(text: str) -> Identity:
    """``rig-witness``, ``rig-refinery`` or ``rig-crew-name``, read as upstream reads them."""
    reading = _read_dash(text)
    if reading is None:
        raise IdentityError(text, f"unknown shape; expected {_SHAPES}")
    return _build(text, reading)


def _build(text: str, reading: _Reading) -> Identity:
    kind, rig, name = reading
    _check_name(text, rig, "rig")
    if name is not None:
        _check_name(text, name, "crew")
    try:
        return Identity(kind, rig, name)
    except IdentityError as err:
        raise IdentityError(text, err.problem) from None


def parse_identity(text: str) -> Identity:
    """Parse an identity in its dash or slash form.

    ``mayor/`` and ``deacon/`` (upstream's mail identities) are accepted too. A dash
    form is read as upstream reads it: a ``-witness`` or ``-refinery`` suffix first,
    else the first ``-crew-``. Every character is checked before the text is split,
    and nothing is built from it until all parts are valid names. Pure; the same
    text always gives the same result.

    >>> parse_identity("my-rig-crew-max-2").slash
    'my-rig/crew/max-2'

    Raises
    ------
    IdentityError
        For anything that is not one of SPEC's shapes: empty or over-long text,
        ``..``, metacharacters, whitespace, non-ASCII, empty parts, names with a
        dash at either end, reserved rig names (``mayor``, ``deacon``, ``daemon``),
        and slash forms whose dash form would read as another identity
        (``gastown/crew/witness``).
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
    return _from_slash(text) if "/" in text else _from_dash(text)


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
