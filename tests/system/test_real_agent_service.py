"""The real Claude Code under the real user manager, installed where users install it.

Issue 7 points 1 and 5: with ``claude`` only where Claude Code's native installer
puts it (``~/.local/share/claude/versions/<ver>`` and the ``~/.local/bin/claude``
symlink) or only in an npm user prefix, and the stand-in's URL and a key in the
agent environment file, ``gtd units install --now`` is all it takes: a real
deacon runs and a heartbeat poke reaches the stand-in API as its own turn. The
sandbox's user manager has no ``LANG``, as a bare one has not; the screen still
reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import typing as t

import pytest

from gtd.config import DEFAULT_MOTD
from tests.conftest import proc_environ
from tests.fakeapi import FakeAPI
from tests.realagent.harness import (
    NATIVE,
    VERSION,
    Options,
    api_env,
    claude_code_pid,
    first_run_config,
    require_real_agent,
)
from tests.sandbox import UserManager
from tests.system.towns import DAEMON, TMUX, Town

if t.TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.realagent

NESTED = (".local/bin/claude", ".local/share/claude", ".config/gastown/agent.env")
"""What a test puts inside directories of the home that may be older than it."""


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    """The stand-in Messages API (reached from the manager's units on 127.0.0.1)."""
    require_real_agent()
    with FakeAPI() as server:
        yield server


@pytest.fixture
def fresh_home(town: Town) -> Iterator[pathlib.Path]:
    """A user who never enabled the units; afterwards the home is as it was before.

    The home is shared by every system test of a run: whatever this test (or the
    Claude Code it ran) added is removed, the units are disabled and stopped.
    """
    home = town.um.home
    town.um.systemctl("disable", "--now", DAEMON, TMUX)
    before = {p.name for p in home.iterdir()}
    yield home
    town.um.systemctl("disable", "--now", DAEMON, TMUX)
    for path in [*(home / n for n in NESTED), *(p for p in home.iterdir() if p.name not in before)]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _mkdirs(um: UserManager, directory: pathlib.Path) -> None:
    """Make *directory* and its missing parents, owned by the user."""
    for d in [*reversed(directory.parents), directory]:
        if not d.exists():
            d.mkdir()
            os.chown(d, um.uid, um.gid)


def _place(um: UserManager, target: pathlib.Path) -> None:
    """The pinned native binary at *target*: a hard link (as good as the installer's copy)."""
    _mkdirs(um, target.parent)
    try:
        os.link(NATIVE, target)
    except OSError:
        target.symlink_to(NATIVE)  # another file system: the link is what can be had


def _symlink(um: UserManager, link: pathlib.Path, to: str) -> None:
    _mkdirs(um, link.parent)
    link.symlink_to(to)
    os.chown(link, um.uid, um.gid, follow_symlinks=False)


def install_native(um: UserManager) -> None:
    """Claude Code's native installer layout: ``versions/<ver>`` and the bin symlink."""
    version = um.home / ".local/share/claude/versions" / VERSION
    _place(um, version)
    _symlink(um, um.home / ".local/bin/claude", str(version))


def install_npm_user_prefix(um: UserManager) -> None:
    """``npm install -g @anthropic-ai/claude-code`` with ``prefix=~/.npm-user``."""
    package = um.home / ".npm-user/lib/node_modules/@anthropic-ai/claude-code"
    _place(um, package / "bin" / "claude.exe")
    _symlink(um, um.home / ".npm-user/bin/claude",
             "../lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe")  # fmt: skip
    um.write_file(".npmrc", "prefix=${HOME}/.npm-user\n")


def locale(env: t.Mapping[str, str]) -> dict[str, str]:
    """The locale variables of an environment."""
    return {k: v for k, v in env.items() if k == "LANG" or k.startswith("LC_")}


def ctype(env: t.Mapping[str, str]) -> str:
    """The character set locale in effect: ``LC_ALL``, else ``LC_CTYPE``, else ``LANG``."""
    return next((env[k] for k in ("LC_ALL", "LC_CTYPE", "LANG") if env.get(k)), "")


def unit_pid(town: Town, unit: str) -> int:
    return int(town.um.show(unit, "MainPID")["MainPID"])


@pytest.mark.parametrize("layout", ["native-installer", "npm-user-prefix"])
def test_units_install_now_runs_the_real_deacon_and_pokes_it(
    town: Town, api: FakeAPI, fresh_home: pathlib.Path, layout: str
) -> None:
    """`gtd units install --now`, and the real deacon runs and gets its heartbeat.

    Claude Code has its first-run answers in ``~/.claude.json`` and its API settings
    only in ``~/.config/gastown/agent.env`` (0600), which reaches the agent and not the
    daemon. The poke reaches the stand-in as its own
    turn and the journal says it was delivered; the tmux server (hence the agent)
    gets a UTF-8 character set from ``gtd tmux-server`` while the daemon gets no
    locale from the manager, and gtd reads the screen all the same.
    """
    um = town.um
    (install_native if layout == "native-installer" else install_npm_user_prefix)(um)
    config, settings = first_run_config(Options(), [town.root / "deacon"])
    um.write_file(".claude.json", json.dumps(config))
    um.write_file(".claude/settings.json", json.dumps(settings))
    lines = "".join(f"{k}={v}\n" for k, v in api_env(api.url).items())
    um.write_file(".config/gastown/agent.env", lines, mode=0o600)
    town.write_config(
        f'town_root = "{town.root}"\nheartbeat_interval = "2s"\n[tmux]\nsocket = "{town.socket}"\n'
    )
    town.gtd_cmd("units", "install", "--now")

    try:
        api.wait_for(lambda a: len(a.user_turns()) >= 1, 60, "the first heartbeat turn")
    except AssertionError as err:
        told = "\n".join(town.messages()[-12:])
        msg = f"{err}\nSTATUS={town.show('StatusText')['StatusText']}\njournal:\n{told}"
        raise AssertionError(msg) from None
    assert f"HEARTBEAT: {DEFAULT_MOTD[0]}" == api.user_turns()[0]
    entry = um.wait_journal(
        DAEMON, lambda e: e.get("GTD_POKE") == "delivered", after_cursor=town.cursor, timeout=30
    )
    assert f"poked deacon: HEARTBEAT: {DEFAULT_MOTD[0]} (delivered)" == entry["MESSAGE"]
    row = next(a for a in _status(town)["agents"] if a["identity"] == "deacon")
    assert (True, "claude", 0) == (row["alive"], row["command"], row["restarts"])
    assert row["condition"] in ("idle", "busy"), row

    server = unit_pid(town, TMUX)
    target = ("-t", "=gt-deacon:", "#{pane_pid}")
    pane_pid = int(um.run("tmux", "-L", town.socket, "display-message", "-p", *target).stdout)
    agent = claude_code_pid(pane_pid)
    assert agent is not None
    assert api.url == proc_environ(agent).get("ANTHROPIC_BASE_URL")
    assert "ANTHROPIC_API_KEY" not in proc_environ(town.main_pid())
    # The manager gives no locale. `gtd tmux-server` is Python, whose locale coercion
    # (PEP 538) sets LC_CTYPE=C.UTF-8 before gtd's own LANG=C.UTF-8 fallback looks.
    assert {} == locale(proc_environ(town.main_pid()))
    assert "C.UTF-8" == ctype(proc_environ(server)), locale(proc_environ(server))
    assert "C.UTF-8" == ctype(proc_environ(agent)), locale(proc_environ(agent))


def _status(town: Town) -> dict[str, t.Any]:
    out = town.um.run(str(town.gtd), "status", "--json", check=False).stdout
    with contextlib.suppress(ValueError):
        report: dict[str, t.Any] = json.loads(out)
        return report
    msg = f"gtd status --json: {out!r}"
    raise AssertionError(msg)
