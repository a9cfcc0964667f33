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
import shlex
import stat
import tomllib
import typing as t

from gtd import validate
from gtd.exc import ConfigError
from gtd.identities import DEACON, Identity
from gtd.validate import Source, expand

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
MAX_CONFIG_SIZE = 1 << 20


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


# -- the schema ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class AgentConfig:
    """How agents are started and how their liveness is recognised."""

    command: str = setting(
        DEFAULT_AGENT_COMMAND,
        validate.command,
        "The command that starts an agent in its tmux pane.",
    )
    alive_commands: tuple[str, ...] = setting(
        DEFAULT_ALIVE_COMMANDS,
        validate.alive,
        "Process names that always mean 'the agent is alive' (15 characters at most);\n"
        "any process in the pane other than a shell counts too.",
        dump=list,
    )

    ui: str = setting(
        "claude-code",
        validate.ui,
        'How gtd reads the agents\' screens: "claude-code", or "plain" (a "> " prompt line).',
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
        validate.socket,
        '"" is your default tmux server (`tmux attach -t gt-deacon` works); '
        "else `tmux -L <socket>`.",
    )


@dataclasses.dataclass(frozen=True, slots=True)
class MotdConfig:
    """The heartbeat messages; empty means upstream's."""

    messages: tuple[str, ...] = setting(
        (),
        validate.messages,
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
        validate.optional_command,
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
        validate.identities,
        "Agents kept alive, each with its own crash-loop guard: mayor, deacon,\n"
        "<rig>-witness, <rig>-refinery, <rig>-crew-<name> (or slash forms).",
        dump=validate.dash_forms,
    )
    poke: tuple[Identity, ...] = setting(
        (DEACON,),
        validate.identities,
        "Which of them get the HEARTBEAT poke (a subset of agents).",
        dump=validate.dash_forms,
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
        validate.town_root,
        "Where the town lives. Left unset, GT_TOWN_ROOT is used, else ~/gt;\n"
        "set here, it overrides GT_TOWN_ROOT.",
        dump=str,
        shown="~/gt",
    )
    heartbeat_interval: float = setting(
        DEFAULT_HEARTBEAT_INTERVAL,
        validate.duration,
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


def _check_keys(
    table: dict[str, t.Any], section: str, known: list[str], path: pathlib.Path | None
) -> None:
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
        table = validate.expect(raw.get(name, {}), dict, "a table", source, name)
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
