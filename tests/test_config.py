from __future__ import annotations

import contextlib
import os
import pathlib
import shlex
import typing as t

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from gtd.config import (
    DEFAULT_MOTD,
    AgentConfig,
    Config,
    LifecycleConfig,
    MotdConfig,
    TmuxConfig,
    default_config_path,
    default_config_text,
    load_config,
    read_config,
    resolve_config_path,
    to_dict,
    write_config_file,
)
from gtd.exc import ConfigError
from gtd.validate import parse_duration

HOME = pathlib.Path("/home/u")
SRC = pathlib.Path("/etc/gastown/daemon.toml")


def load(text: str, env: t.Mapping[str, str] | None = None) -> Config:
    return load_config(text, source=SRC, env=env or {}, home=HOME)


def test_empty_text_gives_spec_defaults() -> None:
    """An empty file means every SPEC default."""
    expected = Config(
        town_root=HOME / "gt",
        heartbeat_interval=300.0,
        agent=AgentConfig("claude --dangerously-skip-permissions", ("node", "claude")),
        tmux=TmuxConfig(""),
        motd=MotdConfig(()),
        lifecycle=LifecycleConfig("gt"),
        source=SRC,
    )
    assert expected == load("")
    assert expected == Config(HOME / "gt", source=SRC)


def test_full_config() -> None:
    """Every key is read into its dataclass field."""
    config = load(
        """
        town_root = "/srv/town"
        heartbeat_interval = "1h30m"
        [agent]
        command = "claude --model 'opus 4'"
        alive_commands = ["node", "claude", "bun"]
        [tmux]
        socket = "gastown.test-1"
        [motd]
        messages = ["Hello, deacon!", "Stay sharp."]
        [lifecycle]
        gt_command = ""
        """
    )
    assert pathlib.Path("/srv/town") == config.town_root
    assert config.heartbeat_interval == 5400.0
    assert config.agent.argv == ("claude", "--model", "opus 4")
    assert config.agent.alive_commands == ("node", "claude", "bun")
    assert config.tmux.socket == "gastown.test-1"
    assert config.motd.effective == ("Hello, deacon!", "Stay sharp.")
    assert config.lifecycle.argv == ()


def test_default_motd_is_upstreams() -> None:
    """Empty messages rotate through upstream's 12 messages."""
    assert len(DEFAULT_MOTD) == 12
    assert MotdConfig().effective == DEFAULT_MOTD
    assert DEFAULT_MOTD[0] == "Thanks for keeping the town running!"
    assert DEFAULT_MOTD[-1] == "Tip: Stale agents need nudging; very stale ones need restarting."


class DurationCase(t.NamedTuple):
    """A heartbeat_interval value and the seconds it means."""

    test_id: str
    value: object
    seconds: float


DURATION_CASES = [
    DurationCase("int", 300, 300.0),
    DurationCase("seconds", "300s", 300.0),
    DurationCase("minutes", "5m", 300.0),
    DurationCase("hour", "1h", 3600.0),
    DurationCase("hour_minutes", "1h30m", 5400.0),
    DurationCase("minutes_seconds", "1m30s", 90.0),
    DurationCase("all_units", "2h0m5s", 7205.0),
    DurationCase("bare_string", "90", 90.0),
    DurationCase("minimum", 1, 1.0),
    DurationCase("maximum", "24h", 86400.0),
    DurationCase("unnormalised", "90m", 5400.0),
]


@pytest.mark.parametrize("case", DURATION_CASES, ids=[c.test_id for c in DURATION_CASES])
def test_parse_duration(case: DurationCase) -> None:
    """Integers and h/m/s strings become seconds."""
    assert case.seconds == parse_duration(case.value, path=SRC, key="heartbeat_interval")


class BadDurationCase(t.NamedTuple):
    """A heartbeat_interval value that must be refused, and what the error says."""

    test_id: str
    value: object
    problem: str


BAD_DURATION_CASES = [
    BadDurationCase("zero", 0, "duration 0 is out of range"),
    BadDurationCase("negative", -5, "out of range"),
    BadDurationCase("zero_string", "0s", "duration '0s' is out of range"),
    BadDurationCase("over_a_day", "25h", "out of range"),
    BadDurationCase("over_a_day_int", 86401, "out of range"),
    BadDurationCase("bool", True, "got boolean True"),
    BadDurationCase("float", 1.5, "got float 1.5"),
    BadDurationCase("array", [5], "got array [5]"),
    BadDurationCase("empty", "", "invalid duration ''"),
    BadDurationCase("space", "5 m", "invalid duration '5 m'"),
    BadDurationCase("uppercase", "5M", "invalid duration"),
    BadDurationCase("days", "1d", "invalid duration"),
    BadDurationCase("unit_only", "m", "invalid duration"),
    BadDurationCase("fraction", "1.5m", "invalid duration"),
    BadDurationCase("wrong_order", "30s1m", "invalid duration"),
    BadDurationCase("milliseconds", "500ms", "invalid duration"),
    BadDurationCase("negative_string", "-5m", "invalid duration"),
    BadDurationCase("arabic_digits", "\u0665m", "invalid duration"),
    BadDurationCase("huge", "9" * 5000, "invalid duration"),
]


@pytest.mark.parametrize("case", BAD_DURATION_CASES, ids=[c.test_id for c in BAD_DURATION_CASES])
def test_parse_duration_rejects(case: BadDurationCase) -> None:
    """Bad durations raise ConfigError naming the key and the value."""
    with pytest.raises(ConfigError) as info:
        parse_duration(case.value, path=SRC, key="heartbeat_interval")
    assert info.value.key == "heartbeat_interval"
    assert case.problem in info.value.problem
    assert str(info.value).startswith(f"{SRC}: heartbeat_interval: ")


class ErrorCase(t.NamedTuple):
    """Config text that must be refused: the key and a part of the problem."""

    test_id: str
    text: str
    key: str | None
    problem: str


ERROR_CASES = [
    ErrorCase("unknown_top", "towm_root = '/x'", "towm_root", "did you mean 'town_root'?"),
    ErrorCase("unknown_top_no_hint", "zzz = 1", "zzz", "unknown key (known keys at the top"),
    ErrorCase("unknown_nested", "[agent]\ncommnd = 'x'", "agent.commnd", "unknown key"),
    ErrorCase("unknown_tmux", "[tmux]\nsocket_name = 'x'", "tmux.socket_name", "unknown key"),
    ErrorCase("unknown_table", "[daemon]\nx = 1", "daemon", "unknown key"),
    ErrorCase("unknown_subtable", "[agent.env]\nX = '1'", "agent.env", "unknown key"),
    ErrorCase("table_not_table", "agent = 'claude'", "agent", "expected a table, got string"),
    ErrorCase("town_root_int", "town_root = 3", "town_root", "expected a string, got integer 3"),
    ErrorCase("town_root_relative", "town_root = 'gt'", "town_root", "not an absolute path"),
    ErrorCase("town_root_other_user", "town_root = '~bob/gt'", "town_root", "not an absolute"),
    ErrorCase("town_root_empty", "town_root = ''", "town_root", "non-empty path"),
    ErrorCase("town_root_nul", 'town_root = "/x\\u0000"', "town_root", "without NUL"),
    ErrorCase("command_list", "[agent]\ncommand = ['claude']", "agent.command", "got array"),
    ErrorCase("command_empty", "[agent]\ncommand = ''", "agent.command", "is blank"),
    ErrorCase("command_blank", "[agent]\ncommand = '  '", "agent.command", "is blank"),
    ErrorCase("command_quote", "[agent]\ncommand = 'claude \"x'", "agent.command", "no closing"),
    ErrorCase("command_nul", '[agent]\ncommand = "a\\u0000"', "agent.command", "NUL"),
    ErrorCase("alive_string", "[agent]\nalive_commands = 'node'", "agent.alive_commands", "got"),
    ErrorCase("alive_empty", "[agent]\nalive_commands = []", "agent.alive_commands", "at least"),
    ErrorCase("alive_int", "[agent]\nalive_commands = [1]", "agent.alive_commands[0]", "got int"),
    ErrorCase(
        "alive_path", "[agent]\nalive_commands = ['/bin/node']", "agent.alive_commands[0]", "'node'"
    ),
    ErrorCase("alive_space", "[agent]\nalive_commands = ['a b']", "agent.alive_commands[0]", "not"),
    ErrorCase("alive_blank", "[agent]\nalive_commands = ['']", "agent.alive_commands[0]", "not"),
    ErrorCase("alive_long", "[agent]\nalive_commands = ['x', 'a234567890123456']", "", "15"),
    ErrorCase("socket_int", "[tmux]\nsocket = 1", "tmux.socket", "expected a string"),
    ErrorCase("socket_dot", "[tmux]\nsocket = '.x'", "tmux.socket", "not starting with '.'"),
    ErrorCase("socket_slash", "[tmux]\nsocket = 'a/b'", "tmux.socket", "not a socket name"),
    ErrorCase("socket_space", "[tmux]\nsocket = 'a b'", "tmux.socket", "not a socket name"),
    ErrorCase("socket_long", f"[tmux]\nsocket = '{'s' * 65}'", "tmux.socket", "1-64"),
    ErrorCase("motd_string", "[motd]\nmessages = 'hi'", "motd.messages", "expected an array"),
    ErrorCase("motd_int", "[motd]\nmessages = ['a', 2]", "motd.messages[1]", "expected a string"),
    ErrorCase("motd_empty", "[motd]\nmessages = ['']", "motd.messages[0]", "1 to 500"),
    ErrorCase("motd_long", f"[motd]\nmessages = ['{'m' * 501}']", "motd.messages[0]", "not 501"),
    ErrorCase("motd_newline", '[motd]\nmessages = ["a\\nb"]', "motd.messages[0]", "U+000A"),
    ErrorCase("motd_cr", '[motd]\nmessages = ["a\\rb"]', "motd.messages[0]", "U+000D"),
    ErrorCase("motd_tab", '[motd]\nmessages = ["a\\tb"]', "motd.messages[0]", "U+0009"),
    ErrorCase("motd_escape", '[motd]\nmessages = ["\\u001b[2J"]', "motd.messages[0]", "U+001B"),
    ErrorCase("motd_line_sep", '[motd]\nmessages = ["a\\u2028"]', "motd.messages[0]", "U+2028"),
    ErrorCase("gt_int", "[lifecycle]\ngt_command = false", "lifecycle.gt_command", "boolean"),
    ErrorCase("gt_quote", '[lifecycle]\ngt_command = "\'gt"', "lifecycle.gt_command", "closing"),
    ErrorCase("gt_blank", "[lifecycle]\ngt_command = ' '", "lifecycle.gt_command", 'use ""'),
    ErrorCase("agents_string", "[supervise]\nagents = 'deacon'", "supervise.agents", "array"),
    ErrorCase("agents_bad", "[supervise]\nagents = ['x;y']", "supervise.agents[0]", "invalid"),
    ErrorCase(
        "agents_twice",
        "[supervise]\nagents = ['deacon', 'deacon/']",
        "supervise.agents[1]",
        "listed twice",
    ),
    ErrorCase(
        "poke_unsupervised",
        "[supervise]\npoke = ['mayor']",
        "supervise.poke[0]",
        "mayor is poked but not in supervise.agents",
    ),
    ErrorCase("unknown_supervise", "[supervise]\nagent = []", "supervise.agent", "did you mean"),
    ErrorCase("toml_syntax", "town_root = \n", None, "invalid TOML"),
    ErrorCase("toml_duplicate", "[agent]\n[agent]\n", None, "line 2"),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.test_id for c in ERROR_CASES])
def test_load_config_rejects(case: ErrorCase) -> None:
    """Every invalid config raises ConfigError naming the file and the key."""
    with pytest.raises(ConfigError) as info:
        load(case.text)
    error = info.value
    assert error.path == SRC
    if case.key != "":
        assert case.key == error.key
    assert case.problem in error.problem
    assert str(error).startswith(f"{SRC}: ")


def test_exact_unknown_key_message() -> None:
    """A misspelt key is named with its table and a suggestion."""
    with pytest.raises(ConfigError) as info:
        load("[agent]\ncommnd = 'claude'\n")
    assert str(info.value) == (
        "/etc/gastown/daemon.toml: agent.commnd: unknown key (did you mean 'command'? "
        "known keys in [agent]: command, alive_commands, ui)"
    )


def test_exact_alive_command_too_long_message() -> None:
    """A command name tmux can never report says why."""
    with pytest.raises(ConfigError) as info:
        load("[agent]\nalive_commands = ['node', 'claude-code-wrapper']\n")
    assert str(info.value) == (
        "/etc/gastown/daemon.toml: agent.alive_commands[1]: 'claude-code-wrapper' is 19 "
        "characters long, but tmux reports at most 15 characters of a command name "
        "(the kernel's comm limit), so it could never match"
    )


def test_exact_toml_syntax_message() -> None:
    """TOML syntax errors keep tomllib's line and column."""
    with pytest.raises(ConfigError) as info:
        load('town_root = "/x"\nheartbeat_interval = 5m\n')
    assert (
        str(info.value)
        == "/etc/gastown/daemon.toml: invalid TOML: Expected newline or end of document "
        "after a statement (at line 2, column 23)"
    )


def test_error_without_source() -> None:
    """Text with no file behind it is reported as <config>."""
    with pytest.raises(ConfigError, match=r"^<config>: tmux\.socket: "):
        load_config("[tmux]\nsocket = '..'", source=None, env={}, home=HOME)


class TownRootCase(t.NamedTuple):
    """Where town_root comes from: config, GT_TOWN_ROOT, or ~/gt."""

    test_id: str
    text: str
    env: dict[str, str]
    expected: pathlib.Path


TOWN_ROOT_CASES = [
    TownRootCase("default", "", {}, HOME / "gt"),
    TownRootCase("env", "", {"GT_TOWN_ROOT": "/srv/gt"}, pathlib.Path("/srv/gt")),
    TownRootCase("env_tilde", "", {"GT_TOWN_ROOT": "~/town"}, HOME / "town"),
    TownRootCase("env_empty_ignored", "", {"GT_TOWN_ROOT": ""}, HOME / "gt"),
    TownRootCase("config_wins", "town_root = '/a'", {"GT_TOWN_ROOT": "/b"}, pathlib.Path("/a")),
    TownRootCase("config_tilde", "town_root = '~/x/y'", {}, HOME / "x/y"),
    TownRootCase("config_bare_tilde", "town_root = '~'", {}, HOME),
]


@pytest.mark.parametrize("case", TOWN_ROOT_CASES, ids=[c.test_id for c in TOWN_ROOT_CASES])
def test_town_root_precedence(case: TownRootCase) -> None:
    """Config town_root beats GT_TOWN_ROOT, which beats ~/gt."""
    assert case.expected == load(case.text, case.env).town_root


def test_relative_env_town_root_names_the_variable() -> None:
    """A relative GT_TOWN_ROOT is an error that says where it came from."""
    with pytest.raises(ConfigError, match=r"town_root: 'gt' \(from GT_TOWN_ROOT\) is not"):
        load("", {"GT_TOWN_ROOT": "gt"})


class PathCase(t.NamedTuple):
    """Which config file is read, and whether it was named explicitly."""

    test_id: str
    override: str | None
    env: dict[str, str]
    expected: pathlib.Path
    explicit: bool


PATH_CASES = [
    PathCase("default", None, {}, HOME / ".config/gastown/daemon.toml", False),
    PathCase("xdg", None, {"XDG_CONFIG_HOME": "/x"}, pathlib.Path("/x/gastown/daemon.toml"), False),
    PathCase(
        "xdg_relative_ignored",
        None,
        {"XDG_CONFIG_HOME": "rel"},
        HOME / ".config/gastown/daemon.toml",
        False,
    ),
    PathCase("env", None, {"GTD_CONFIG": "/e.toml"}, pathlib.Path("/e.toml"), True),
    PathCase("env_empty", None, {"GTD_CONFIG": ""}, HOME / ".config/gastown/daemon.toml", False),
    PathCase("option_wins", "/o.toml", {"GTD_CONFIG": "/e.toml"}, pathlib.Path("/o.toml"), True),
    PathCase("option_tilde", "~/c.toml", {}, HOME / "c.toml", True),
    PathCase("option_relative", "c.toml", {}, pathlib.Path("c.toml"), True),
]


@pytest.mark.parametrize("case", PATH_CASES, ids=[c.test_id for c in PATH_CASES])
def test_resolve_config_path(case: PathCase) -> None:
    """--config beats GTD_CONFIG, which beats the XDG default."""
    assert (case.expected, case.explicit) == resolve_config_path(case.override, case.env, HOME)


def test_default_config_path_matches_implicit_resolution() -> None:
    """default_config_path is what resolve_config_path falls back to."""
    env = {"XDG_CONFIG_HOME": "/cfg"}
    assert (default_config_path(env, HOME), False) == resolve_config_path(None, env, HOME)


def test_empty_config_option_is_an_error() -> None:
    """--config '' is refused rather than read as the current directory."""
    with pytest.raises(ConfigError, match="--config: the path is empty"):
        resolve_config_path("", {}, HOME)


def test_read_missing_implicit_file_gives_defaults(tmp_path: pathlib.Path) -> None:
    """No config file at the default path is fine: defaults, no source."""
    config = read_config(tmp_path / "nope.toml", explicit=False, env={}, home=HOME)
    assert Config(HOME / "gt") == config


def test_read_missing_explicit_file_is_an_error(tmp_path: pathlib.Path) -> None:
    """A file named with --config or GTD_CONFIG must exist."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        read_config(path, explicit=True, env={}, home=HOME)
    assert f"{path}: does not exist" == str(info.value)


def test_read_config_sets_source(tmp_path: pathlib.Path) -> None:
    """A config read from a file remembers the file."""
    path = tmp_path / "daemon.toml"
    path.write_text("heartbeat_interval = 60\n")
    config = read_config(path, explicit=False, env={}, home=HOME)
    assert (path, 60.0) == (config.source, config.heartbeat_interval)


def test_read_errors_name_the_file(tmp_path: pathlib.Path) -> None:
    """Validation errors from a file carry its path."""
    path = tmp_path / "daemon.toml"
    path.write_text("[tmux]\nsocket = '.hidden'\n")
    with pytest.raises(ConfigError, match=rf"^{path}: tmux\.socket: '\.hidden' is not"):
        read_config(path, explicit=True, env={}, home=HOME)


def test_read_non_utf8_says_where(tmp_path: pathlib.Path) -> None:
    """A non-UTF-8 file is reported with the byte offset and line."""
    path = tmp_path / "daemon.toml"
    path.write_bytes(b'town_root = "/x"\n# caf\xe9\n')
    with pytest.raises(ConfigError) as info:
        read_config(path, explicit=True, env={}, home=HOME)
    assert f"{path}: not valid UTF-8: byte 0xe9 at offset 22 (line 2)" == str(info.value)
    assert info.value.key is None


def test_read_directory_is_an_error(tmp_path: pathlib.Path) -> None:
    """A directory where the config file should be is reported, explicit or not."""
    for explicit in (True, False):
        with pytest.raises(ConfigError) as info:
            read_config(tmp_path, explicit=explicit, env={}, home=HOME)
        assert f"{tmp_path}: is a directory, not a file" == str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a mode-000 file")
def test_read_unreadable_file(tmp_path: pathlib.Path) -> None:
    """A file without read permission gives a ConfigError, not a traceback."""
    path = tmp_path / "daemon.toml"
    path.write_text("")
    path.chmod(0)
    with pytest.raises(ConfigError) as info:
        read_config(path, explicit=False, env={}, home=HOME)
    assert f"{path}: cannot read: Permission denied" == str(info.value)


def test_read_permission_error_from_open(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same as the chmod test, but also as root: open() is faked to fail with EACCES."""
    path = tmp_path / "daemon.toml"
    path.write_text("")

    def deny(*args: object, **kwargs: object) -> t.NoReturn:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pathlib.Path, "open", deny)
    with pytest.raises(ConfigError, match=r": cannot read: Permission denied$"):
        read_config(path, explicit=False, env={}, home=HOME)


def test_read_fifo_is_not_opened(tmp_path: pathlib.Path) -> None:
    """A FIFO would block the reader forever; it is refused before opening."""
    path = tmp_path / "daemon.toml"
    os.mkfifo(path)
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_config(path, explicit=True, env={}, home=HOME)


def test_default_config_text_is_the_defaults() -> None:
    """The init file loads to exactly the defaults and keeps GT_TOWN_ROOT working."""
    text = default_config_text()
    assert load("") == load(text)
    env = {"GT_TOWN_ROOT": "/srv/gt"}
    assert load("", env) == load(text, env)
    assert "# town_root = " in text


def test_default_config_text_town_root_can_be_uncommented() -> None:
    """Uncommenting town_root gives valid TOML that pins ~/gt."""
    text = default_config_text().replace("# town_root = ", "town_root = ")
    assert load(text, {"GT_TOWN_ROOT": "/srv/gt"}).town_root == HOME / "gt"


def test_default_config_text_comments_every_key() -> None:
    """Each key in the init file is explained by a comment just above it."""
    lines = default_config_text().splitlines()
    keys = [i for i, line in enumerate(lines) if " = " in line and not line.startswith("# ")]
    assert len(keys) == 9  # every key of the schema, [supervise] and agent.ui included
    for i in keys:
        assert lines[i - 1].startswith("#") or lines[i - 1].startswith("]")


def test_write_creates_parents(tmp_path: pathlib.Path) -> None:
    """Config init creates the config directory and leaves no temporary file."""
    path = tmp_path / "a/b/daemon.toml"
    write_config_file(path, default_config_text(), force=False)
    assert default_config_text() == path.read_text()
    assert os.listdir(path.parent) == ["daemon.toml"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_never_overwrites_without_force(tmp_path: pathlib.Path) -> None:
    """An existing file stays byte-identical unless --force is given."""
    tmp_path = tmp_path / "cfg"
    tmp_path.mkdir()
    path = tmp_path / "daemon.toml"
    original = b"# mine\nheartbeat_interval = 60\n\xff"
    path.write_bytes(original)
    with pytest.raises(ConfigError) as info:
        write_config_file(path, default_config_text(), force=False)
    assert f"{path}: already exists; use --force to overwrite it" == str(info.value)
    assert original == path.read_bytes()
    assert os.listdir(tmp_path) == ["daemon.toml"]
    write_config_file(path, "x = 1\n", force=True)
    assert path.read_bytes() == b"x = 1\n"
    assert os.listdir(tmp_path) == ["daemon.toml"]


def test_write_never_follows_a_dangling_symlink_without_force(tmp_path: pathlib.Path) -> None:
    """A dangling symlink counts as an existing file."""
    path = tmp_path / "daemon.toml"
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="already exists"):
        write_config_file(path, "", force=False)
    assert not (tmp_path / "elsewhere").exists()


def test_write_to_directory_is_an_error(tmp_path: pathlib.Path) -> None:
    """A directory is never replaced, even with --force."""
    with pytest.raises(ConfigError, match="is a directory"):
        write_config_file(tmp_path, "", force=True)


def test_write_under_a_file_is_an_error(tmp_path: pathlib.Path) -> None:
    """A parent that is a file gives a ConfigError naming the culprit."""
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="cannot write: "):
        write_config_file(tmp_path / "f/daemon.toml", "", force=False)


def test_to_dict_shape() -> None:
    """to_dict gives the TOML file's shape with plain values."""
    assert to_dict(load("")) == {
        "town_root": "/home/u/gt",
        "heartbeat_interval": 300,
        "agent": {
            "command": "claude --dangerously-skip-permissions",
            "alive_commands": ["node", "claude"],
            "ui": "claude-code",
        },
        "tmux": {"socket": ""},
        "motd": {"messages": []},
        "lifecycle": {"gt_command": "gt"},
        "supervise": {"agents": ["deacon"], "poke": ["deacon"]},
    }


chars = st.characters(exclude_categories=["Cs"], exclude_characters="\0")
commands = st.lists(st.text(chars, min_size=1, max_size=8), min_size=1, max_size=4).map(shlex.join)
plain = st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp"))
comm_names = st.text(
    st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp", "Zs"), exclude_characters="/"),
    min_size=1,
    max_size=15,
).filter(lambda n: len(n.encode()) <= 15 and not any(c.isspace() for c in n))
segments = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="/\0"))
durations = st.one_of(
    st.integers(1, 86400),
    st.integers(1, 86400).map(str),
    st.integers(1, 86400).map(lambda s: f"{s // 3600}h{s % 3600 // 60}m{s % 60}s"),
    st.integers(1, 1440).map(lambda m: f"{m}m"),
)
raw_configs = st.fixed_dictionaries(
    {},
    optional={
        "town_root": st.one_of(
            st.lists(segments, max_size=4).map(lambda p: "/" + "/".join(p)),
            st.lists(segments, max_size=4).map(lambda p: "~/" + "/".join(p)),
        ),
        "heartbeat_interval": durations,
        "agent": st.fixed_dictionaries(
            {},
            optional={
                "command": commands,
                "alive_commands": st.lists(comm_names, min_size=1, max_size=4),
            },
        ),
        "tmux": st.fixed_dictionaries(
            {},
            optional={
                "socket": st.one_of(
                    st.just(""),
                    st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}", fullmatch=True),
                )
            },
        ),
        "motd": st.fixed_dictionaries(
            {},
            optional={"messages": st.lists(st.text(plain, min_size=1, max_size=40), max_size=4)},
        ),
        "lifecycle": st.fixed_dictionaries(
            {}, optional={"gt_command": st.one_of(st.just(""), commands)}
        ),
    },
)


@given(raw_configs, st.sampled_from([{}, {"GT_TOWN_ROOT": "/env/town"}]))
def test_to_dict_round_trip(raw: dict[str, t.Any], env: dict[str, str]) -> None:
    """Any valid config survives to_dict, tomli_w and load_config unchanged."""
    config = load(tomli_w.dumps(raw), env)
    again = load(tomli_w.dumps(to_dict(config)), env)
    assert config == again
    assert to_dict(config) == to_dict(again)


@given(st.text(max_size=200))
def test_load_config_only_raises_config_error(text: str) -> None:
    """Arbitrary text gives a Config or a ConfigError, never another exception."""
    with contextlib.suppress(ConfigError):
        load(text)


def test_supervise_reads_identities_in_any_form() -> None:
    """[supervise] takes dash and slash forms, keeps their order, and pokes a subset."""
    config = load(
        "[supervise]\nagents = ['deacon', 'mayor', 'gastown/witness']\npoke = ['deacon', 'mayor']\n"
    )
    assert ["deacon", "mayor", "gastown-witness"] == [i.dash for i in config.supervise.agents]
    assert ["deacon", "mayor"] == [i.dash for i in config.supervise.poke]
    assert ["deacon"] == [i.dash for i in load("").supervise.agents]


def test_supervise_may_poke_nobody() -> None:
    """An empty poke list keeps agents alive without typing into any of them."""
    assert () == load("[supervise]\npoke = []\n").supervise.poke
