"""The command line: help that answers, clear errors, config commands, unit files."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import typing as t

import pytest

from gtd import cli, systemd

REPO = pathlib.Path(__file__).resolve().parents[1]


class HelpCase(t.NamedTuple):
    test_id: str
    argv: list[str]
    expect: str


HELP_CASES = [
    HelpCase("top", ["--help"], "journalctl --user -u gastown-daemon"),
    HelpCase("run", ["run", "--help"], "Exit status 78 means the configuration is invalid"),
    HelpCase("status", ["status", "--help"], "Exit status 0 when the service is active"),
    HelpCase("config", ["config", "--help"], "check"),
    HelpCase("config-check", ["config", "check", "--help"], "Validate the config file"),
    HelpCase("config-show", ["config", "show", "--help"], "effective config"),
    HelpCase("config-init", ["config", "init", "--help"], "never overwrites without --force"),
    HelpCase("units", ["units", "--help"], "install"),
    HelpCase("units-install", ["units", "install", "--help"], "--now"),
    HelpCase("units-uninstall", ["units", "uninstall", "--help"], "left running"),
    HelpCase("tmux-server", ["tmux-server", "--help"], "-D"),
    HelpCase("request", ["request", "--help"], "Prints the request id"),
    HelpCase("agent", ["agent", "--help"], "same environment rules as the daemon"),
    HelpCase("agent-start", ["agent", "start", "--help"], "unless it is already alive"),
    HelpCase("agent-stop", ["agent", "stop", "--help"], "Stop the agent"),
    HelpCase("agent-restart", ["agent", "restart", "--help"], "other panes stay"),
    HelpCase("agent-list", ["agent", "list", "--help"], "alive or not"),
]


@pytest.mark.parametrize(list(HelpCase._fields), HELP_CASES, ids=[c.test_id for c in HELP_CASES])
def test_help(
    test_id: str, argv: list[str], expect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command has --help that exits 0 and says what it does."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert 0 == exc.value.code
    assert expect in " ".join(capsys.readouterr().out.split())


def test_missing_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """No command: usage on stderr, exit 2, no traceback."""
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert 2 == exc.value.code
    err = capsys.readouterr().err
    assert "usage: gtd" in err
    assert "Traceback" not in err


def test_config_init_check_show(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Init writes a file check accepts; init again refuses without --force; show prints TOML."""
    path = tmp_path / "conf" / "daemon.toml"
    assert 0 == cli.main(["--config", str(path), "config", "init"])
    original = path.read_bytes()
    assert 0 == cli.main(["--config", str(path), "config", "check"])
    assert 78 == cli.main(["--config", str(path), "config", "init"])
    assert "--force" in capsys.readouterr().err
    assert original == path.read_bytes()
    assert 0 == cli.main(["--config", str(path), "config", "show"])
    out = capsys.readouterr().out
    assert 'command = "claude --dangerously-skip-permissions"' in out
    assert "heartbeat_interval = 300" in out


def test_config_check_names_file_and_key(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value exits 78 with the file and the key in one line on stderr."""
    path = tmp_path / "daemon.toml"
    path.write_text('heartbeat_interval = "5 minutes"\n')
    assert 78 == cli.main(["--config", str(path), "config", "check"])
    err = capsys.readouterr().err
    assert err.startswith(f"gtd: invalid configuration: {path}: heartbeat_interval:")
    assert "Traceback" not in err


def test_config_default_path_follows_xdg(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --config, $XDG_CONFIG_HOME/gastown/daemon.toml is the file (absent = defaults)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert 0 == cli.main(["config", "check"])
    assert f"{tmp_path}/xdg/gastown/daemon.toml (absent: defaults)" in capsys.readouterr().out
    monkeypatch.setenv("GTD_CONFIG", str(tmp_path / "missing.toml"))
    assert 78 == cli.main(["config", "check"])
    assert "missing.toml" in capsys.readouterr().err


def test_status_without_manager_still_reports(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no user manager reachable, status says so, shows the rest, and exits 3."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "no-runtime"))
    monkeypatch.setenv("GT_TOWN_ROOT", str(tmp_path / "town"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert 3 == cli.main(["status"])
    out = capsys.readouterr().out
    assert "gastown-daemon.service: user manager unavailable" in out
    assert "does not exist yet" in out


def test_packaged_units_match_the_renderer() -> None:
    """units/ holds exactly what gtd units install writes for /usr/bin/gtd."""
    for name, text in systemd.render_units("/usr/bin/gtd").items():
        assert text == (REPO / "units" / name).read_text(), name


def test_daemon_unit_contract() -> None:
    """The daemon unit carries the directives SPEC relies on."""
    text = systemd.render_units("/x/gtd")[systemd.DAEMON_UNIT]
    for line in (
        "Type=notify",
        "ExecStart=/x/gtd run",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "WatchdogSec=30s",
        "NotifyAccess=main",
    ):
        assert line in text.splitlines()


def test_install_units_is_idempotent(tmp_path: pathlib.Path) -> None:
    """Installing twice writes once; files are complete unit files."""
    town = tmp_path / "town"
    first = systemd.install_units("/x/gtd", tmp_path, town, now=False, reload=False)
    second = systemd.install_units("/x/gtd", tmp_path, town, now=False, reload=False)
    assert 2 == len(first)
    assert [] == second
    assert "ExecStart=/x/gtd tmux-server" in (tmp_path / systemd.TMUX_UNIT).read_text()
    assert f"ReadWritePaths=-{town}" in (tmp_path / systemd.DAEMON_UNIT).read_text()
    assert town.is_dir()


def test_config_check_names_a_missing_command_and_the_path(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent command and gt are looked up as the daemon will; a miss names the PATH."""
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    path = tmp_path / "daemon.toml"
    path.write_text('[agent]\ncommand = "no-such-agent --x"\n[lifecycle]\ngt_command = "gt"\n')
    assert 0 == cli.main(["--config", str(path), "config", "check"])
    err = capsys.readouterr().err
    searched = f"PATH=/usr/bin:/bin:{home}/.local/bin"
    assert f"agent.command: 'no-such-agent' not found in {searched} (no agent can start)" in err
    assert f"lifecycle.gt_command: 'gt' not found in {searched}" in err
    agent = home / ".local" / "bin" / "no-such-agent"
    agent.write_text("#!/bin/sh\n")
    agent.chmod(0o755)
    assert 0 == cli.main(["--config", str(path), "config", "check"])
    assert "agent.command" not in capsys.readouterr().err


def test_config_check_warns_about_a_readable_secrets_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent environment file holds secrets: a mode others can read is named."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    env_file = tmp_path / "xdg" / "gastown" / "agent.env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text("ANTHROPIC_API_KEY=sk-ant-x\nnot an assignment\n")
    env_file.chmod(0o644)
    assert 0 == cli.main(["config", "check"])
    assert f"{env_file}: mode 0644 lets others read it; chmod 600" in capsys.readouterr().err
    env_file.chmod(0o600)
    assert 0 == cli.main(["config", "check"])
    assert f"{env_file}: line 2 is not KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["run"], ["-v", "run"], ["--verbose", "run"], ["--config", "x", "run"],
     ["--config=x", "run"], ["--config", "x", "-v", "run"], ["-v", "--config=", "run"]],
)  # fmt: skip
def test_run_is_read_as_argparse_reads_it(argv: list[str]) -> None:
    """The daemon's start path (no argparse parser built) gives argparse's very namespace."""
    fast = cli.parse_run(argv)
    assert fast is not None
    assert vars(cli.create_parser().parse_args(argv, namespace=cli.Namespace())) == vars(fast)


def test_the_daemon_loads_none_of_what_only_other_commands_need() -> None:
    """``gtd run``'s modules, its first heartbeat's included, leave the heavy ones out.

    Each of these costs start-up time and RSS (issue 10's targets; docs/benchmarks.md):
    argparse with gettext (0.4 MB), zoneinfo with sysconfig (0.4 MB), OpenSSL through
    secrets/hashlib, tempfile, shutil, difflib, systemd.journal and socket.
    """
    heavy = ["argparse", "gettext", "zoneinfo", "sysconfig", "secrets", "hashlib",
             "tempfile", "shutil", "difflib", "systemd.journal", "socket"]  # fmt: skip
    code = (
        "import sys, gtd.cli, gtd.daemon, gtd.poke, gtd.claude, gtd.supervisor\n"
        "assert gtd.cli.parse_run(['run']) is not None\n"
        f"print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "" == result.stdout.strip(), result.stdout


@pytest.mark.parametrize(
    "argv", [["run", "--help"], ["--conf", "x", "run"], ["--config", "-v", "run"], ["status"]]
)
def test_other_forms_go_to_argparse(argv: list[str]) -> None:
    """Abbreviations, help, odd values and other commands are left to argparse."""
    assert cli.parse_run(argv) is None
