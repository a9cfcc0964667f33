"""The agents' environment under the real user manager, with commands where users put them.

Claude Code's native installer puts ``claude`` in ``~/.local/bin``; ``npm install -g``
with a user prefix puts it in ``<prefix>/bin``. Units get the user manager's PATH,
which has neither. Here the agent command is the default (``claude
--dangerously-skip-permissions``), found only in such a place, as is ``gt``; the
"claude" is a script that runs the fake agent (tests/realagent covers the real one).
"""

from __future__ import annotations

import pathlib
import re
import shutil
import typing as t

import pytest

from tests.conftest import proc_environ
from tests.sandbox import retry_until
from tests.system.towns import DAEMON, TMUX, Town

SECRET = "sk-ant-api03-test-secret-0123456789"  # noqa: S105 - a test value, no real key
LEFT_IN_HOME = (".local/bin/claude", ".local/bin/gt", ".npm-user", ".npmrc", ".gt-cache",
                ".config/gastown/agent.env")  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_home(town: Town) -> t.Iterator[None]:
    """A user who never enabled the units; afterwards nothing of the test is left in $HOME.

    Units an earlier test enabled are started with the manager, before this test's
    files exist; these tests are about a first `gtd units install --now`.
    """
    town.um.systemctl("disable", "--now", DAEMON, TMUX)
    yield
    town.um.systemctl("disable", "--now", DAEMON, TMUX)
    for name in LEFT_IN_HOME:
        path = town.um.home / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def live_deacon(town: Town) -> int | None:
    out = town.um.run(
        "tmux", "-L", town.socket, "list-panes", "-t", "=gt-deacon",
        "-F", "#{pane_pid} #{pane_dead}", check=False,
    ).stdout.split()  # fmt: skip
    return int(out[0]) if len(out) == 2 and out[1] == "0" else None


def install_commands(town: Town, bin_dir: str, *, gt: str | None = None) -> None:
    """A ``claude`` (the fake agent) and a ``gt`` that logs its calls, in *bin_dir*."""
    agent = town.um.home / "fake" / "agent.py"
    town.um.write_file(
        f"{bin_dir}/claude",
        f"#!/bin/sh\nexec /usr/bin/python3 {agent} --log {town.log} --trap\n",
        mode=0o755,
    )
    calls = town.root / "gt-calls"
    gt = gt or f'#!/bin/sh\necho "$*" >> {calls}\necho "[]"\n'
    town.um.write_file(f"{bin_dir}/gt", gt, mode=0o755)


def write_config(town: Town) -> None:
    """SPEC's defaults for the agent and gt; only the town and socket are the test's."""
    town.write_config(
        f'town_root = "{town.root}"\nheartbeat_interval = "300s"\n'
        f'[tmux]\nsocket = "{town.socket}"\n'
    )


def units_install_now(town: Town) -> str:
    """What a user types, with the manager's PATH: no ~/.local/bin, no npm prefix."""
    return town.gtd_cmd("units", "install", "--now")


@pytest.mark.parametrize("layout", ["native-installer", "npm-user-prefix"])
def test_claude_and_gt_found_where_users_install_them(town: Town, layout: str) -> None:
    """`gtd units install --now` gives a running deacon with no further step.

    The deacon gets the secret from the 0600 environment file (never in a unit), the
    PATH gtd searched, a UTF-8 LANG although the manager has none, and no
    NoNewPrivileges. gt, found the same way, is asked for lifecycle mail.
    """
    if layout == "native-installer":
        bin_dir = ".local/bin"
    else:
        bin_dir = ".npm-user/bin"
        town.um.write_file(".npmrc", "prefix=${HOME}/.npm-user\n")
    install_commands(town, bin_dir)
    write_config(town)
    env_file = town.um.write_file(
        ".config/gastown/agent.env", f"ANTHROPIC_API_KEY={SECRET}\n", mode=0o600
    )
    units_install_now(town)
    assert retry_until(lambda: live_deacon(town) is not None, 10), town.messages()[-10:]
    pid = live_deacon(town)
    assert pid is not None, "\n".join(town.messages()[-12:])
    env = proc_environ(pid)
    assert SECRET == env.get("ANTHROPIC_API_KEY")
    assert str(town.um.home / bin_dir) in env["PATH"].split(":")
    ctype = next((env[k] for k in ("LC_ALL", "LC_CTYPE", "LANG") if env.get(k)), "")
    assert "UTF-8" in ctype.upper(), {k: v for k, v in env.items() if k.startswith(("LC_", "LANG"))}
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    assert re.search(r"^NoNewPrivs:\s+0$", status, re.MULTILINE), status
    for unit in (DAEMON, TMUX):
        assert SECRET not in (town.um.unit_dir / unit).read_text()
    assert 0o600 == env_file.stat().st_mode & 0o777
    calls = town.root / "gt-calls"
    assert retry_until(lambda: calls.exists(), 10), town.messages()[-10:]
    assert "mail inbox --identity deacon/ --json" in calls.read_text()


def test_a_missing_agent_command_is_named_with_the_path_then_found(town: Town) -> None:
    """No claude anywhere: STATUS names it and the PATH searched, and the service stays up.

    Once the user installs it, the next start of the crash-loop guard finds it: no
    restart of the service.
    """
    write_config(town)
    units_install_now(town)

    def status_names_it() -> bool:
        text = town.show("StatusText")["StatusText"]
        return "agent command 'claude' not found in PATH=/" in text

    assert retry_until(status_names_it, 10, raises=False), town.show("StatusText")
    assert "active" == town.show("ActiveState")["ActiveState"]
    checked = town.um.run(str(town.gtd), "config", "check")
    assert re.search(
        r"agent\.command: 'claude' not found in PATH=\S+ \(no agent can start\)", checked.stderr
    )
    main = town.main_pid()
    install_commands(town, ".local/bin")
    assert retry_until(lambda: live_deacon(town) is not None, 40), town.show("StatusText")
    assert main == town.main_pid()
    assert retry_until(lambda: "not found" not in town.show("StatusText")["StatusText"], 10)


def test_a_helper_refused_a_write_by_the_sandbox_is_told_the_fix(town: Town) -> None:
    """Gt writing outside the town gets 'Read-only file system'; the journal names the fix.

    After the documented drop-in (`ReadWritePaths=`), the same gt works.
    """
    cache = town.um.home / ".gt-cache"
    gt = f'#!/bin/sh\necho "$*" > {cache} || exit 1\necho "[]"\n'
    install_commands(town, ".local/bin", gt=gt)
    write_config(town)
    units_install_now(town)

    def refused(entry: dict[str, t.Any]) -> bool:
        return entry.get("MESSAGE_ID") == "08d3eeafcbdb4a69b441726e895743f1"

    entry = town.um.wait_journal(DAEMON, refused, after_cursor=town.cursor)
    message = str(entry["MESSAGE"])
    assert "Read-only file system" in message
    assert "ReadWritePaths=" in message
    assert "gt" == entry.get("GTD_COMMAND")
    town.set_dropin(f"ReadWritePaths={cache.parent}/.gt-cache")
    town.um.write_file(".gt-cache", "")
    town.um.systemctl("restart", DAEMON)
    assert retry_until(lambda: "mail inbox" in cache.read_text(), 10), town.messages()[-5:]
