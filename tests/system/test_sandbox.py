"""The system-test harness itself, against a real ``systemd --user`` manager and journald.

These prove that what the gtd system tests rely on really works in the sandbox:
``Type=notify`` readiness, the journal, ``systemctl --user kill``, the watchdog with
``Restart=``, and a teardown that leaves nothing behind.
"""

from __future__ import annotations

import pathlib
import secrets
import shutil
import subprocess
import textwrap
import typing as t

import pytest

from tests.sandbox import (
    CommandFailed,
    SandboxError,
    UserManager,
    clone_id,
    default_user,
    pid_alive,
    wait_equal,
    wait_for,
)

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from tests.sandbox import JournalEntry

# sd_notify(3) by hand, so the harness is tested without any gtd code.
NOTIFY = """\
import os, pathlib, signal, socket, sys, time

def notify(state):
    addr = os.environ["NOTIFY_SOCKET"]
    if addr.startswith("@"):
        addr = "\\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(addr)
        sock.sendall(state)
"""


def install_script_unit(
    manager: UserManager, name: str, script: str, service: str = "", args: str = ""
) -> None:
    """Install ``test-NAME.service`` running ``script`` (after NOTIFY) with python3."""
    manager.write_file(f"{name}.py", NOTIFY + textwrap.dedent(script))
    manager.install_unit(
        f"test-{name}.service",
        textwrap.dedent(
            f"""\
            [Service]
            Type=notify
            ExecStart=/usr/bin/python3 -u %h/{name}.py {args}
            """
        )
        + textwrap.dedent(service),
    )


def message(text: str) -> Callable[[JournalEntry], bool]:
    """Match journal entries whose MESSAGE is ``text``."""
    return lambda entry: entry.get("MESSAGE") == text


def test_notify_unit_is_activating_until_ready_then_active_and_journaled(
    manager: UserManager,
) -> None:
    """A Type=notify unit is activating until READY=1, then active; its stdout is journaled."""
    flag = manager.home / "notify.flag"
    flag.unlink(missing_ok=True)
    install_script_unit(
        manager,
        "notify",
        """
        print("notify: started", flush=True)
        while not pathlib.Path(sys.argv[1]).exists():
            time.sleep(0.02)
        notify(b"READY=1")
        print("notify: ready", flush=True)
        while True:
            signal.pause()
        """,
        args="%h/notify.flag",
    )
    cursor = manager.journal_cursor()
    manager.systemctl("start", "--no-block", "test-notify.service")
    manager.wait_journal("test-notify.service", message("notify: started"), after_cursor=cursor)
    assert manager.show("test-notify.service", "ActiveState")["ActiveState"] == "activating"

    manager.write_file(flag.name, "")
    wait_equal("active", lambda: manager.show("test-notify.service", "ActiveState")["ActiveState"])
    entry = manager.wait_journal(
        "test-notify.service", message("notify: ready"), after_cursor=cursor
    )
    assert entry["_SYSTEMD_USER_UNIT"] == "test-notify.service"
    assert entry["_UID"] == str(manager.uid)


def test_kill_usr1_reaches_the_unit(manager: UserManager) -> None:
    """`systemctl --user kill -s USR1` reaches the unit's process, which logs it and stays up."""
    install_script_unit(
        manager,
        "usr1",
        """
        signal.signal(signal.SIGUSR1, lambda signum, frame: print("usr1: got USR1", flush=True))
        notify(b"READY=1")
        while True:
            signal.pause()
        """,
    )
    manager.systemctl("start", "test-usr1.service")
    main_pid = manager.show("test-usr1.service", "MainPID")["MainPID"]
    cursor = manager.journal_cursor()

    manager.systemctl("kill", "-s", "USR1", "test-usr1.service")

    manager.wait_journal("test-usr1.service", message("usr1: got USR1"), after_cursor=cursor)
    state = manager.show("test-usr1.service", "ActiveState", "MainPID")
    assert state == {"ActiveState": "active", "MainPID": main_pid}


def test_watchdog_kills_a_silent_unit_and_restart_brings_it_back(manager: UserManager) -> None:
    """A unit that never pings WATCHDOG=1 is killed by the watchdog and restarted."""
    install_script_unit(
        manager,
        "watchdog",
        """
        print(f"watchdog: WATCHDOG_USEC={os.environ.get('WATCHDOG_USEC')}", flush=True)
        notify(b"READY=1")
        while True:
            signal.pause()
        """,
        service="""\
        WatchdogSec=2
        Restart=on-failure
        RestartSec=100ms
        LimitCORE=0
        """,
    )
    cursor = manager.journal_cursor()
    manager.systemctl("start", "test-watchdog.service")
    first = manager.show("test-watchdog.service", "MainPID", "NRestarts")
    assert first["NRestarts"] == "0"

    wait_for(
        lambda: int(manager.show("test-watchdog.service", "NRestarts")["NRestarts"]),
        lambda restarts: restarts >= 1,
        timeout=30,
    )
    manager.wait_journal(
        "test-watchdog.service",
        lambda e: "Watchdog timeout" in str(e.get("MESSAGE")),
        after_cursor=cursor,
    )
    manager.wait_journal(
        "test-watchdog.service", message("watchdog: WATCHDOG_USEC=2000000"), after_cursor=cursor
    )
    wait_equal(
        "active", lambda: manager.show("test-watchdog.service", "ActiveState")["ActiveState"]
    )
    assert first["MainPID"] != manager.show("test-watchdog.service", "MainPID")["MainPID"]


def test_run_reports_failures_and_timeouts(manager: UserManager) -> None:
    """run() raises with argv, rc and output, and kills a command that overruns its timeout."""
    with pytest.raises(CommandFailed) as failed:
        manager.run("sh", "-c", "echo out; echo err >&2; exit 3")
    error = failed.value
    assert (error.returncode, error.stdout, error.stderr) == (3, "out\n", "err\n")
    assert "sh -c echo out" in str(failed.value)

    with pytest.raises(CommandFailed, match=r"timed out after 0\.2s"):
        manager.run("sleep", "30", timeout=0.2)
    assert not any("sleep 30" in _cmdline(pid) for pid in manager.user_pids())


def test_run_gives_a_clean_user_environment(manager: UserManager) -> None:
    """run() runs as the user in their home with XDG_RUNTIME_DIR and nothing from the runner."""
    out = manager.run("sh", "-c", "id -u; pwd; env | sort", env={"EXTRA": "1"}).stdout
    uid, cwd, *env = out.splitlines()
    assert (str(manager.uid), str(manager.home)) == (uid, cwd)
    assert f"XDG_RUNTIME_DIR={manager.runtime_dir}" in env
    assert "EXTRA=1" in env
    assert not [line for line in env if line.startswith(("NOTIFY_SOCKET=", "VIRTUAL_ENV="))]


def test_gtd_venv_imports_gtd_as_the_user(manager: UserManager, gtd_venv: pathlib.Path) -> None:
    """The venv from the gtd_venv fixture imports gtd when run as the sandbox user."""
    result = manager.run(gtd_venv / "bin" / "python", "-c", "import gtd; print(gtd.__name__)")
    assert result.stdout == "gtd\n"


def test_stop_leaves_no_process_cgroup_or_manager(user_manager: UserManager) -> None:
    """stop() ends the manager, journald, leftover unit processes and the user's tmux server."""
    with UserManager(f"{user_manager.user}-2") as um:
        # KillMode=process leaves the forked `sleep 1000` behind in the unit's cgroup.
        um.install_unit(
            "test-leftover.service",
            "[Service]\nKillMode=process\nExecStart=/bin/sh -c 'sleep 1000 & exec sleep 1001'\n",
        )
        um.systemctl("start", "test-leftover.service")
        expected = {"sleep 1000", "sleep 1001"}
        if shutil.which("tmux"):
            um.run("tmux", "-L", "sandbox", "-f", "/dev/null", "new-session", "-d", "sleep 1002")
            expected.add("sleep 1002")
        wait_for(lambda: {_cmdline(pid) for pid in um.user_pids()}, lambda seen: expected <= seen)
        journald = um.journald_pid
        assert journald is not None
        assert pid_alive(journald)
        cgroup_dirs = um.cgroup_dirs
        runtime_dir = um.runtime_dir

    assert not um.is_running()
    assert not pid_alive(journald)
    assert um.user_pids() == set()
    assert um.cgroup_pids() == set()
    assert [d for d in cgroup_dirs if d.exists()] == []
    assert not runtime_dir.exists()
    um.stop()  # idempotent
    assert user_manager.is_running(), "the session's manager must be untouched"


def test_a_second_run_on_the_same_user_is_refused_and_harms_nothing(
    manager: UserManager,
) -> None:
    """Another UserManager for a user in use fails to start, says why, and stops nothing."""
    other = UserManager(manager.user)
    with pytest.raises(SandboxError, match=f"sandbox user {manager.user} is in use by another"):
        other.start()
    other.stop()  # what a fixture's finalizer does: must not touch the live run
    assert manager.is_running()
    assert manager.journald_pid is not None
    assert pid_alive(manager.journald_pid)


def test_the_journal_is_the_runs_own_and_read_as_a_user_would(manager: UserManager) -> None:
    """`journalctl --user -u` as the user reads this run's journal directory, not the host's.

    The entry is in ``journal_dir`` (mounted over /var/log/journal in the namespace)
    and not in the machine's /var/log/journal, so two runs never write one file.
    """
    marker = f"journal-marker-{manager.user}-{secrets.token_hex(4)}"
    install_script_unit(manager, "marker", f'print("{marker}", flush=True)\nnotify(b"READY=1")\n')
    cursor = manager.journal_cursor()
    manager.systemctl("start", "test-marker.service")
    entry = manager.wait_journal("test-marker.service", message(marker), after_cursor=cursor)
    assert str(manager.uid) == entry["_UID"]
    host = pathlib.Path("/var/log/journal")

    def grep(directory: pathlib.Path) -> str:
        return subprocess.run(
            ["journalctl", f"--directory={directory}", "--no-pager", "-o", "cat",
             f"MESSAGE={marker}"],
            capture_output=True, text=True, check=False, timeout=60,
        ).stdout  # fmt: skip

    machine = pathlib.Path("/etc/machine-id").read_text().strip()
    assert f"{marker}\n" == grep(manager.journal_dir / machine)
    assert "" == (grep(host / machine) if (host / machine).is_dir() else "")


def test_each_clone_has_its_own_sandbox_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """The default user is derived from the clone's path; GTD_SYSTEST_USER overrides it."""
    one, two = clone_id(tmp_path / "one"), clone_id(tmp_path / "two")
    assert (8, 8) == (len(one), len(two))
    assert one != two
    assert one == clone_id(tmp_path / "one")
    monkeypatch.delenv("GTD_SYSTEST_USER", raising=False)
    assert f"gtdt{clone_id()}" == default_user() == UserManager().user
    monkeypatch.setenv("GTD_SYSTEST_USER", "someone")
    assert "someone" == default_user() == UserManager().user


def _cmdline(pid: int) -> str:
    try:
        raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()
