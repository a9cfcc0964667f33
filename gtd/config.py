"""The daemon's configuration: TOML text to frozen, validated dataclasses.

:func:`load_config` is pure; only :func:`read_config` and :func:`write_config_file` do I/O.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import pathlib
import re
import shlex
import stat
import tempfile
import tomllib
import typing as t
import unicodedata

import tomli_w

from gtd.exc import ConfigError

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
"""The kernel's comm name limit, which is all tmux's ``pane_current_command`` shows."""
MAX_CONFIG_SIZE = 1 << 20

_KEYS: dict[str, tuple[str, ...]] = {
    "": ("town_root", "heartbeat_interval", "agent", "tmux", "motd", "lifecycle"),
    "agent": ("command", "alive_commands"),
    "tmux": ("socket",),
    "motd": ("messages",),
    "lifecycle": ("gt_command",),
}
_DURATION = re.compile(r"(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?|([0-9]+)")
_SOCKET = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_TYPE_NAMES = {bool: "boolean", int: "integer", str: "string", list: "array", dict: "table"}


@dataclasses.dataclass(frozen=True, slots=True)
class AgentConfig:
    """How agents are started and how their liveness is recognised."""

    command: str = DEFAULT_AGENT_COMMAND
    alive_commands: tuple[str, ...] = DEFAULT_ALIVE_COMMANDS

    @property
    def argv(self) -> tuple[str, ...]:
        """The agent command split into words (validated as splittable on load)."""
        return tuple(shlex.split(self.command))


@dataclasses.dataclass(frozen=True, slots=True)
class TmuxConfig:
    """Which tmux server the agents live on; ``""`` is the user's default server."""

    socket: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class MotdConfig:
    """The heartbeat messages; empty means upstream's."""

    messages: tuple[str, ...] = ()

    @property
    def effective(self) -> tuple[str, ...]:
        """The messages the heartbeat rotates through."""
        return self.messages or DEFAULT_MOTD


@dataclasses.dataclass(frozen=True, slots=True)
class LifecycleConfig:
    """Where lifecycle requests come from besides the spool."""

    gt_command: str = DEFAULT_GT_COMMAND

    @property
    def argv(self) -> tuple[str, ...]:
        """The ``gt`` command split into words; empty when the mail source is off."""
        return tuple(shlex.split(self.gt_command))


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """The effective configuration; ``source`` is the file it came from, if any."""

    town_root: pathlib.Path
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    agent: AgentConfig = dataclasses.field(default_factory=AgentConfig)
    tmux: TmuxConfig = dataclasses.field(default_factory=TmuxConfig)
    motd: MotdConfig = dataclasses.field(default_factory=MotdConfig)
    lifecycle: LifecycleConfig = dataclasses.field(default_factory=LifecycleConfig)
    source: pathlib.Path | None = None


_T = t.TypeVar("_T")
_Path = pathlib.Path | None


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


def _check_keys(table: dict[str, t.Any], section: str, path: _Path) -> None:
    known = _KEYS[section]
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            where = f"in [{section}]" if section else "at the top level"
            msg = f"unknown key ({hint}known keys {where}: {', '.join(known)})"
            raise ConfigError(path, f"{section}.{key}" if section else key, msg)


def _control(text: str) -> str | None:
    """Return the first control or line-separator character as ``U+XXXX``, if any."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return f"U+{ord(char):04X}"
    return None


def _command(value: object, path: _Path, key: str, *, may_be_off: bool) -> str:
    text = _expect(value, str, "a string", path, key)
    if may_be_off and text == "":
        return text
    if "\0" in text:
        raise ConfigError(path, key, "contains a NUL character")
    try:
        words = shlex.split(text)
    except ValueError as exc:
        msg = f"cannot split {text[:80]!r} into words: {str(exc).lower()}"
        raise ConfigError(path, key, msg) from None
    if not words:
        raise ConfigError(
            path, key, 'is blank (use "" to turn it off)' if may_be_off else "is blank"
        )
    return text


def _strings(value: object, path: _Path, key: str) -> tuple[str, ...]:
    items = _expect(value, list, "an array of strings", path, key)
    return tuple(
        _expect(item, str, "a string", path, f"{key}[{i}]") for i, item in enumerate(items)
    )


def _expand(text: str, home: pathlib.Path) -> pathlib.Path:
    return home / text[2:] if text == "~" or text.startswith("~/") else pathlib.Path(text)


def _town_root(
    raw: dict[str, t.Any], env: t.Mapping[str, str], home: pathlib.Path, path: _Path
) -> pathlib.Path:
    if "town_root" in raw:
        text, origin = _expect(raw["town_root"], str, "a string", path, "town_root"), ""
    elif env.get("GT_TOWN_ROOT"):
        text, origin = env["GT_TOWN_ROOT"], " (from GT_TOWN_ROOT)"
    else:
        text, origin = "~/gt", ""
    if not text or "\0" in text:
        raise ConfigError(path, "town_root", f"must be a non-empty path without NUL{origin}")
    root = _expand(text, home)
    if not root.is_absolute():
        msg = f"{text!r}{origin} is not an absolute path (use /... or ~/...)"
        raise ConfigError(path, "town_root", msg)
    return root


def _alive(value: object, path: _Path) -> tuple[str, ...]:
    key = "agent.alive_commands"
    names = _strings(value, path, key)
    if not names:
        raise ConfigError(path, key, "must name at least one command")
    for i, name in enumerate(names):
        if not name or "/" in name or any(c.isspace() for c in name) or _control(name):
            msg = f"{name!r} is not a process name (no '/', whitespace or control characters)"
            if "/" in name and (base := name.rsplit("/", 1)[1]):
                msg += f"; use {base!r}"
            raise ConfigError(path, f"{key}[{i}]", msg)
        if len(name.encode()) > MAX_COMM_LENGTH:
            msg = (
                f"{name!r} is {len(name.encode())} characters long, but tmux reports at most "
                f"{MAX_COMM_LENGTH} characters of a command name (the kernel's comm limit), "
                "so it could never match"
            )
            raise ConfigError(path, f"{key}[{i}]", msg)
    return names


def _socket(value: object, path: _Path) -> str:
    socket = _expect(value, str, "a string", path, "tmux.socket")
    if socket and _SOCKET.fullmatch(socket) is None:
        msg = (
            f"{socket[:80]!r} is not a socket name: use 1-64 letters, digits, '_', '.', '-', "
            "not starting with '.' (or \"\" for the default server)"
        )
        raise ConfigError(path, "tmux.socket", msg)
    return socket


def _messages(value: object, path: _Path) -> tuple[str, ...]:
    messages = _strings(value, path, "motd.messages")
    for i, message in enumerate(messages):
        key = f"motd.messages[{i}]"
        if not 1 <= len(message) <= 500:
            raise ConfigError(path, key, f"must be 1 to 500 characters long, not {len(message)}")
        if bad := _control(message):
            msg = f"contains control character {bad}; a newline would submit the poke early"
            raise ConfigError(path, key, msg)
    return messages


def _section(raw: dict[str, t.Any], name: str, path: _Path) -> dict[str, t.Any]:
    table = _expect(raw.get(name, {}), dict, "a table", path, name)
    _check_keys(table, name, path)
    return table


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
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, f"invalid TOML: {exc}") from None
    _check_keys(raw, "", source)
    agent, tmux = _section(raw, "agent", source), _section(raw, "tmux", source)
    motd, lifecycle = _section(raw, "motd", source), _section(raw, "lifecycle", source)
    interval = raw.get("heartbeat_interval", int(DEFAULT_HEARTBEAT_INTERVAL))
    command = agent.get("command", DEFAULT_AGENT_COMMAND)
    gt_command = lifecycle.get("gt_command", DEFAULT_GT_COMMAND)
    return Config(
        town_root=_town_root(raw, env, home, source),
        heartbeat_interval=parse_duration(interval, path=source, key="heartbeat_interval"),
        agent=AgentConfig(
            _command(command, source, "agent.command", may_be_off=False),
            _alive(agent.get("alive_commands", list(DEFAULT_ALIVE_COMMANDS)), source),
        ),
        tmux=TmuxConfig(_socket(tmux.get("socket", ""), source)),
        motd=MotdConfig(_messages(motd.get("messages", []), source)),
        lifecycle=LifecycleConfig(
            _command(gt_command, source, "lifecycle.gt_command", may_be_off=True)
        ),
        source=source,
    )


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
        return _expand(override, home), True
    if named := env.get("GTD_CONFIG"):
        return _expand(named, home), True
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


def to_dict(config: Config) -> dict[str, t.Any]:
    """Return the effective config in the file's TOML shape (for ``config show``)."""
    return {
        "town_root": str(config.town_root),
        "heartbeat_interval": round(config.heartbeat_interval),
        "agent": {
            "command": config.agent.command,
            "alive_commands": list(config.agent.alive_commands),
        },
        "tmux": {"socket": config.tmux.socket},
        "motd": {"messages": list(config.motd.messages)},
        "lifecycle": {"gt_command": config.lifecycle.gt_command},
    }


_DEFAULT_TEXT = """\
# gtd, the Gas Town daemon (gastown-daemon.service). Every key is optional; unknown
# keys are errors. Check: `gtd config check`; apply: `systemctl --user reload gastown-daemon`.

# Where the town lives. Left unset, GT_TOWN_ROOT is used, else ~/gt;
# set here, it overrides GT_TOWN_ROOT.
# {town_root}

# How often the deacon is checked and poked: "300s", "5m", "1h" or seconds.
{heartbeat_interval}

[agent]
# The command that starts an agent in its tmux session.
{command}
# Pane foreground commands that mean "the agent is alive" (15 characters at most).
{alive_commands}

[tmux]
# "" is your default tmux server (`tmux attach -t gt-deacon` works); else `tmux -L <socket>`.
{socket}

[motd]
# The heartbeat messages the deacon is poked with, in rotation; [] = upstream's 12.
{messages}

[lifecycle]
# The gt command whose mail carries LIFECYCLE: requests; "" turns that source off.
{gt_command}
"""


def default_config_text() -> str:
    """Return a commented config file that holds the defaults (for ``config init``)."""
    defaults = to_dict(Config(pathlib.Path("~/gt")))
    values: dict[str, object] = {"town_root": "~/gt", "heartbeat_interval": "5m"}
    for table in ("agent", "tmux", "motd", "lifecycle"):
        values |= defaults[table]
    lines = {key: tomli_w.dumps({key: value}).rstrip("\n") for key, value in values.items()}
    return _DEFAULT_TEXT.format(**lines)


def write_config_file(path: pathlib.Path, text: str, *, force: bool) -> None:
    """Write ``text`` to ``path`` atomically, creating parent directories.

    The text goes to a temporary file in the same directory, is fsynced and
    renamed into place (mode 0644), then the directory is fsynced. Without
    ``force`` an existing file is never replaced, even one created concurrently.

    Raises
    ------
    ConfigError
        When the file exists and ``force`` is false, or on any OS error.
    """
    exists = "already exists; use --force to overwrite it"
    tmp: str | None = None
    try:
        if path.is_dir():
            raise ConfigError(path, None, "is a directory")
        if not force and (path.exists() or path.is_symlink()):
            raise ConfigError(path, None, exists)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as stream:
            stream.write(text.encode())
            os.fchmod(stream.fileno(), 0o644)
            stream.flush()
            os.fsync(stream.fileno())
        if force:
            os.replace(tmp, path)
        else:
            # link() fails if the name appeared meanwhile, where rename() would clobber it.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ConfigError(path, None, exists) from None
            os.unlink(tmp)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        culprit = f" ({exc.filename})" if exc.filename else ""
        raise ConfigError(path, None, f"cannot write: {exc.strerror or exc}{culprit}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
