"""The PATH gtd searches and hands on, the agent environment file, helpers' environment."""

from __future__ import annotations

import pathlib

from gtd import environment


def make_exe(path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_search_path_adds_user_installer_dirs_that_exist(tmp_path: pathlib.Path) -> None:
    """The service's PATH, then ~/.local/bin and the npm user prefix, in that order."""
    home = tmp_path / "u"
    make_exe(home / ".local" / "bin" / "claude")
    make_exe(home / "npm" / "bin" / "gt")
    (home / ".npmrc").write_text("fund=false\nprefix = ~/npm\n")
    path = environment.search_path({"PATH": "/usr/bin:/bin"}, home, {})
    assert f"/usr/bin:/bin:{home}/.local/bin:{home}/npm/bin" == path
    assert str(home / ".local" / "bin" / "claude") == environment.which("claude", path)
    assert str(home / "npm" / "bin" / "gt") == environment.which("gt", path)
    assert environment.which("claude", "/usr/bin:/bin") is None


def test_npm_prefix_from_the_environment_wins(tmp_path: pathlib.Path) -> None:
    """NPM_CONFIG_PREFIX is npm's own override of ~/.npmrc."""
    home = tmp_path / "u"
    (home / ".npmrc").parent.mkdir(parents=True)
    (home / ".npmrc").write_text("prefix=/nowhere\n")
    dirs = environment.user_bin_dirs({"NPM_CONFIG_PREFIX": "$HOME/p"}, home)
    assert home / "p" / "bin" == dirs[1]


def test_the_env_file_path_wins_and_is_used_as_is(tmp_path: pathlib.Path) -> None:
    """PATH set in the agent environment file is the whole search path."""
    home = tmp_path / "u"
    make_exe(home / ".local" / "bin" / "claude")
    assert "/opt/x/bin" == environment.search_path(
        {"PATH": "/usr/bin"}, home, {"PATH": "/opt/x/bin"}
    )


def test_helper_env_carries_no_agent_identity() -> None:
    """gt, git and bd run as the daemon: BD_ACTOR=daemon, no GT_* identity, git never prompts."""
    env = environment.helper_env({"GT_ROLE": "x", "GT_RIG": "y", "BD_ACTOR": "z", "A": "1"}, "/p")
    assert {"A": "1", "PATH": "/p", "BD_ACTOR": "daemon", "GIT_TERMINAL_PROMPT": "0"} == env


def test_ensure_env_file_creates_a_private_template_once(tmp_path: pathlib.Path) -> None:
    """`gtd units install` writes a commented 0600 template and never touches an existing file."""
    path = tmp_path / "gastown" / "agent.env"
    assert environment.ensure_env_file(path)
    assert 0o600 == path.stat().st_mode & 0o777
    assert {} == environment.parse_env_file(path.read_text())
    path.write_text("ANTHROPIC_API_KEY=mine\n")
    assert not environment.ensure_env_file(path)
    assert "ANTHROPIC_API_KEY=mine\n" == path.read_text()
    assert environment.env_file_problem(path) is None
