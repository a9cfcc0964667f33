"""The system-test harness itself, against a real ``systemd --user`` manager and journald.

These prove that what the gtd system tests rely on really works in the sandbox:
``Type=notify`` readiness, the journal, ``systemctl --user kill``, the watchdog with
``Restart=``, and a teardown that leaves nothing behind.
"""

from __future__ import annotations

import pathlib
import shutil
import textwrap
import typing as t

import pytest

from tests.sandbox import CommandFailed, UserManager, pid_alive, retry_until

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
    retry_until(
        lambda: manager.show("test-notify.service", "ActiveState")["ActiveState"] == "active"
    )
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

    retry_until(
        lambda: int(manager.show("test-watchdog.service", "NRestarts")["NRestarts"]) >= 1,
        timeout=10,
    )
    manager.wait_journal(
        "test-watchdog.service",
        lambda e: "Watchdog timeout" in str(e.get("MESSAGE")),
        after_cursor=cursor,
    )
    manager.wait_journal(
        "test-watchdog.service", message("watchdog: WATCHDOG_USEC=2000000"), after_cursor=cursor
    )
    retry_until(
        lambda: manager.show("test-watchdog.service", "ActiveState")["ActiveState"] == "active"
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
    with UserManager("gtdtest2") as um:
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
        retry_until(lambda: expected <= {_cmdline(pid) for pid in um.user_pids()})
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


def _cmdline(pid: int) -> str:
    try:
        raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()
