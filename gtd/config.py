"""The daemon's configuration: TOML text to frozen, validated dataclasses.

The schema lives in one place: each key is a dataclass field declared with
:func:`setting`, which carries its parser, its file form and the comment
``gtd config init`` writes above it. Loading, ``config show`` and the commented
default file are all derived from those fields, so a new key is one field.
:func:`load_config` is pure; only :func:`read_config` reads a file.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shlex
import stat
import tomllib
import typing as t
import unicodedata

from gtd.exc import ConfigError, IdentityError
from gtd.identities import DEACON, Identity, parse_identity

DEFAULT_MOTD = (
    "Thanks for keeping the town running!",
    "You are Gas Town's most critical role.",
    "You are the heart of Gas Town! Be watchful!",
    "Tip: Polecats are transient - spawn freely, kill liberally.",
    "Tip: Witnesses monitor polecats; you monitor witnesses.",
    "Tip: Wisps are transient molecules for patrol cycles.",
    "The town sleeps soundly because you never do.",
    "Tip: Mayor handles cross-rig coordination; you handle health.",
    "Your vigilance keeps the agents honest.",
    "Tip: Use 'gt deacon heartbeat' to signal you're alive.",
    "Every heartbeat you check keeps Gas Town beating.",
    "Tip: Stale agents need nudging; very stale ones need restarting.",
)
"""Upstream's 12 deacon heartbeat messages (``deaconMOTDMessages``), verbatim."""

DEFAULT_HEARTBEAT_INTERVAL = 300.0
DEFAULT_AGENT_COMMAND = "claude --dangerously-skip-permissions"
DEFAULT_ALIVE_COMMANDS = ("node", "claude")
DEFAULT_GT_COMMAND = "gt"
MAX_COMM_LENGTH = 15
"""The kernel's comm name limit, which is all a process name shows."""
MAX_CONFIG_SIZE = 1 << 20

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


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """How one key is read from TOML and written back, and the comment above it."""

    parse: t.Callable[[object, Source, str], t.Any]
    dump: t.Callable[[t.Any], object]
    doc: str
    shown: object = None
    """The value ``config init`` writes, when not the default's dump (``"5m"``)."""


def setting(
    default: object,
    parse: t.Callable[[object, Source, str], t.Any],
    doc: str,
    *,
    dump: t.Callable[[t.Any], object] = lambda v: v,
    shown: object = None,
) -> t.Any:
    """Declare a config key as a dataclass field (its name is the key)."""
    meta = {"setting": Setting(parse, dump, doc, shown)}
    return dataclasses.field(default=default, metadata=meta)


# -- parsers: (value, source, dotted key) -> value; raise ConfigError --------------


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _expect(value: object, typ: type[_T], what: str, path: _Path, key: str) -> _T:
    if type(value) is not typ:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ConfigError(path, key, f"expected {what}, got {_type_name(value)} {shown}")
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
        text = _expect(value, str, "a duration like '5m' or an integer of seconds", path, key)
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


def _duration(value: object, src: Source, key: str) -> float:
    return parse_duration(value, path=src.path, key=key)


def _control(text: str) -> str | None:
    """Return the first control or line-separator character as ``U+XXXX``, if any."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return f"U+{ord(char):04X}"
    return None


def _command(value: object, src: Source, key: str, *, may_be_off: bool = False) -> str:
    text = _expect(value, str, "a string", src.path, key)
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


def _optional_command(value: object, src: Source, key: str) -> str:
    return _command(value, src, key, may_be_off=True)


def _strings(value: object, src: Source, key: str) -> tuple[str, ...]:
    items = _expect(value, list, "an array of strings", src.path, key)
    return tuple(
        _expect(item, str, "a string", src.path, f"{key}[{i}]") for i, item in enumerate(items)
    )


def expand(text: str, home: pathlib.Path) -> pathlib.Path:
    """``~`` and ``~/x`` under *home*; anything else as written."""
    return home / text[2:] if text == "~" or text.startswith("~/") else pathlib.Path(text)


def _town_root(value: object, src: Source, key: str) -> pathlib.Path:
    if value is not None:
        text, origin = _expect(value, str, "a string", src.path, key), ""
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


def _alive(value: object, src: Source, key: str) -> tuple[str, ...]:
    names = _strings(value, src, key)
    if not names:
        raise ConfigError(src.path, key, "must name at least one command")
    for i, name in enumerate(names):
        if not name or "/" in name or any(c.isspace() for c in name) or _control(name):
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


def _socket(value: object, src: Source, key: str) -> str:
    socket = _expect(value, str, "a string", src.path, key)
    if socket and _SOCKET.fullmatch(socket) is None:
        msg = (
            f"{socket[:80]!r} is not a socket name: use 1-64 letters, digits, '_', '.', '-', "
            "not starting with '.' (or \"\" for the default server)"
        )
        raise ConfigError(src.path, key, msg)
    return socket


def _messages(value: object, src: Source, key: str) -> tuple[str, ...]:
    messages = _strings(value, src, key)
    for i, message in enumerate(messages):
        where = f"{key}[{i}]"
        if not 1 <= len(message) <= 500:
            msg = f"must be 1 to 500 characters long, not {len(message)}"
            raise ConfigError(src.path, where, msg)
        if bad := _control(message):
            msg = f"contains control character {bad}; a newline would submit the poke early"
            raise ConfigError(src.path, where, msg)
    return messages


def _identities(value: object, src: Source, key: str) -> tuple[Identity, ...]:
    found: list[Identity] = []
    for i, text in enumerate(_strings(value, src, key)):
        try:
            identity = parse_identity(text)
        except IdentityError as err:
            raise ConfigError(src.path, f"{key}[{i}]", str(err)) from None
        if identity in found:
            raise ConfigError(src.path, f"{key}[{i}]", f"{identity.dash} is listed twice")
        found.append(identity)
    return tuple(found)


def _dash_forms(identities: tuple[Identity, ...]) -> list[str]:
    return [i.dash for i in identities]


# -- the schema ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class AgentConfig:
    """How agents are started and how their liveness is recognised."""

    command: str = setting(
        DEFAULT_AGENT_COMMAND, _command, "The command that starts an agent in its tmux pane."
    )
    alive_commands: tuple[str, ...] = setting(
        DEFAULT_ALIVE_COMMANDS,
        _alive,
        "Process names that always mean 'the agent is alive' (15 characters at most);\n"
        "any process in the pane other than a shell counts too.",
        dump=list,
    )

    @property
    def argv(self) -> tuple[str, ...]:
        """The agent command split into words (validated as splittable on load)."""
        return tuple(shlex.split(self.command))


@dataclasses.dataclass(frozen=True, slots=True)
class TmuxConfig:
    """Which tmux server the agents live on; ``""`` is the user's default server."""

    socket: str = setting(
        "",
        _socket,
        '"" is your default tmux server (`tmux attach -t gt-deacon` works); '
        "else `tmux -L <socket>`.",
    )


@dataclasses.dataclass(frozen=True, slots=True)
class MotdConfig:
    """The heartbeat messages; empty means upstream's."""

    messages: tuple[str, ...] = setting(
        (),
        _messages,
        "The heartbeat messages agents are poked with, in rotation; [] = upstream's 12.",
        dump=list,
    )

    @property
    def effective(self) -> tuple[str, ...]:
        """The messages the heartbeat rotates through."""
        return self.messages or DEFAULT_MOTD


@dataclasses.dataclass(frozen=True, slots=True)
class LifecycleConfig:
    """Where lifecycle requests come from besides the spool."""

    gt_command: str = setting(
        DEFAULT_GT_COMMAND,
        _optional_command,
        'The gt command whose mail carries LIFECYCLE: requests; "" turns that source off.',
    )

    @property
    def argv(self) -> tuple[str, ...]:
        """The ``gt`` command split into words; empty when the mail source is off."""
        return tuple(shlex.split(self.gt_command))


@dataclasses.dataclass(frozen=True, slots=True)
class SuperviseConfig:
    """Which agents the daemon keeps alive, and which of them it pokes."""

    agents: tuple[Identity, ...] = setting(
        (DEACON,),
        _identities,
        "Agents kept alive, each with its own crash-loop guard: mayor, deacon,\n"
        "<rig>-witness, <rig>-refinery, <rig>-crew-<name> (or slash forms).",
        dump=_dash_forms,
    )
    poke: tuple[Identity, ...] = setting(
        (DEACON,),
        _identities,
        "Which of them get the HEARTBEAT poke (a subset of agents).",
        dump=_dash_forms,
    )

    def check(self, src: Source) -> None:
        """Raise ConfigError when ``poke`` names an agent that is not supervised."""
        for i, identity in enumerate(self.poke):
            if identity not in self.agents:
                msg = f"{identity.dash} is poked but not in supervise.agents"
                raise ConfigError(src.path, f"supervise.poke[{i}]", msg)


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """The effective configuration; ``source`` is the file it came from, if any."""

    town_root: pathlib.Path = setting(
        dataclasses.MISSING,
        _town_root,
        "Where the town lives. Left unset, GT_TOWN_ROOT is used, else ~/gt;\n"
        "set here, it overrides GT_TOWN_ROOT.",
        dump=str,
        shown="~/gt",
    )
    heartbeat_interval: float = setting(
        DEFAULT_HEARTBEAT_INTERVAL,
        _duration,
        'How often agents are checked and poked: "300s", "5m", "1h" or seconds.',
        dump=round,
        shown="5m",
    )
    agent: AgentConfig = dataclasses.field(default_factory=AgentConfig)
    tmux: TmuxConfig = dataclasses.field(default_factory=TmuxConfig)
    motd: MotdConfig = dataclasses.field(default_factory=MotdConfig)
    lifecycle: LifecycleConfig = dataclasses.field(default_factory=LifecycleConfig)
    supervise: SuperviseConfig = dataclasses.field(default_factory=SuperviseConfig)
    source: pathlib.Path | None = dataclasses.field(default=None, compare=True)


def _settings(cls: type) -> list[tuple[str, Setting]]:
    return [(f.name, f.metadata["setting"]) for f in dataclasses.fields(cls) if f.metadata]


def _sections() -> dict[str, type]:
    """Each ``[table]`` and its dataclass, in file order."""
    return {
        f.name: t.cast("type", f.default_factory)
        for f in dataclasses.fields(Config)
        if f.default_factory is not dataclasses.MISSING
    }


def _check_keys(table: dict[str, t.Any], section: str, known: list[str], path: _Path) -> None:
    for key in table:
        if key not in known:
            import difflib  # only to name a misspelt key

            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            where = f"in [{section}]" if section else "at the top level"
            msg = f"unknown key ({hint}known keys {where}: {', '.join(known)})"
            raise ConfigError(path, f"{section}.{key}" if section else key, msg)


def _read_table(cls: type, table: dict[str, t.Any], section: str, src: Source) -> dict[str, t.Any]:
    values = {}
    for name, spec in _settings(cls):
        key = f"{section}.{name}" if section else name
        if name in table:
            values[name] = spec.parse(table[name], src, key)
        elif name == "town_root":  # its default depends on the environment
            values[name] = spec.parse(None, src, key)
    return values


def load_config(
    text: str, *, source: pathlib.Path | None, env: t.Mapping[str, str], home: pathlib.Path
) -> Config:
    """Parse and validate config text; every key is optional.

    ``town_root`` comes from the text, else ``GT_TOWN_ROOT`` in ``env``, else
    ``home/gt``; a leading ``~`` is expanded with ``home``. Pure: no I/O.

    Raises
    ------
    ConfigError
        For invalid TOML (with its line), unknown keys, wrong types and invalid
        values. The message names ``source`` and the dotted key.
    """
    src = Source(source, env, home)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, f"invalid TOML: {exc}") from None
    sections = _sections()
    _check_keys(raw, "", [name for name, _ in _settings(Config)] + list(sections), source)
    values = _read_table(Config, raw, "", src)
    for name, cls in sections.items():
        table = _expect(raw.get(name, {}), dict, "a table", source, name)
        _check_keys(table, name, [key for key, _ in _settings(cls)], source)
        values[name] = section = cls(**_read_table(cls, table, name, src))
        if check := getattr(section, "check", None):
            check(src)
    return Config(**values, source=source)


def to_dict(config: Config) -> dict[str, t.Any]:
    """Return the effective config in the file's TOML shape (for ``config show``)."""
    out = {name: spec.dump(getattr(config, name)) for name, spec in _settings(Config)}
    for name, cls in _sections().items():
        section = getattr(config, name)
        out[name] = {key: spec.dump(getattr(section, key)) for key, spec in _settings(cls)}
    return out


_HEADER = """\
# gtd, the Gas Town daemon (gastown-daemon.service). Every key is optional; unknown
# keys are errors. Check: `gtd config check`; apply: `systemctl --user reload gastown-daemon`.
"""


def default_config_text() -> str:
    """Return a commented config file that holds the defaults (for ``config init``).

    ``town_root`` is commented out, so ``GT_TOWN_ROOT`` keeps working until a user
    sets it here.
    """
    import tomli_w  # only `config init` writes TOML

    defaults = to_dict(Config(pathlib.Path("~/gt")))
    lines = [_HEADER]

    def key_lines(name: str, spec: Setting, value: object) -> None:
        lines.extend(f"# {doc}" for doc in spec.doc.splitlines())
        shown = spec.shown if spec.shown is not None else value
        line = tomli_w.dumps({name: shown}).rstrip("\n")
        lines.append(f"# {line}" if name == "town_root" else line)
        lines.append("")

    for name, spec in _settings(Config):
        key_lines(name, spec, defaults[name])
    for section, cls in _sections().items():
        lines.append(f"[{section}]")
        for name, spec in _settings(cls):
            key_lines(name, spec, defaults[section][name])
    return "\n".join(lines).rstrip("\n") + "\n"


# -- files ----------------------------------------------------------------------


def default_config_path(env: t.Mapping[str, str], home: pathlib.Path) -> pathlib.Path:
    """Return ``$XDG_CONFIG_HOME/gastown/daemon.toml``, else ``~/.config/gastown/daemon.toml``.

    A relative ``XDG_CONFIG_HOME`` is ignored, as the XDG base directory spec says.
    """
    xdg = env.get("XDG_CONFIG_HOME", "")
    base = pathlib.Path(xdg) if xdg.startswith("/") else home / ".config"
    return base / "gastown" / "daemon.toml"


def resolve_config_path(
    override: str | None, env: t.Mapping[str, str], home: pathlib.Path
) -> tuple[pathlib.Path, bool]:
    """Return the config file to read and whether it was named explicitly.

    ``override`` (the ``--config`` option) wins, then ``GTD_CONFIG``, then
    :func:`default_config_path`. A leading ``~`` is expanded with ``home``.

    Raises
    ------
    ConfigError
        When ``--config`` is given an empty path.
    """
    if override is not None:
        if not override:
            raise ConfigError(None, "--config", "the path is empty")
        return expand(override, home), True
    if named := env.get("GTD_CONFIG"):
        return expand(named, home), True
    return default_config_path(env, home), False


def read_config(
    path: pathlib.Path, *, explicit: bool, env: t.Mapping[str, str], home: pathlib.Path
) -> Config:
    """Read and validate the config file at ``path``.

    A missing file gives the defaults (``source`` None) unless it was named
    explicitly (``--config``, ``GTD_CONFIG``).

    Raises
    ------
    ConfigError
        When an explicit file is missing, and for a file that is a directory,
        unreadable, too large or not UTF-8; then as :func:`load_config`.
    """
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(path, None, "is a directory, not a file")
        if not stat.S_ISREG(mode):
            raise ConfigError(path, None, "is not a regular file")
        with path.open("rb") as stream:
            data = stream.read(MAX_CONFIG_SIZE + 1)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(path, None, "does not exist") from None
        return load_config("", source=None, env=env, home=home)
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_SIZE:
        raise ConfigError(path, None, f"is larger than {MAX_CONFIG_SIZE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        msg = f"not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line})"
        raise ConfigError(path, None, msg) from None
    return load_config(text, source=path, env=env, home=home)


def write_config_file(path: pathlib.Path, text: str, *, force: bool) -> None:
    """Write ``text`` to ``path`` whole (mode 0644), creating parent directories.

    Without ``force`` an existing file is never replaced, even one created concurrently.

    Raises
    ------
    ConfigError
        When the file exists and ``force`` is false, or on any OS error.
    """
    from gtd import store

    if path.is_dir():
        raise ConfigError(path, None, "is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            store.write_new(path, text.encode(), mode=0o644, replace=force)
        except FileExistsError:
            msg = "already exists; use --force to overwrite it"
            raise ConfigError(path, None, msg) from None
    except OSError as exc:
        culprit = f" ({exc.filename})" if exc.filename else ""
        raise ConfigError(path, None, f"cannot write: {exc.strerror or exc}{culprit}") from None
