"""gastown-daemon.service under a real ``systemd --user`` and journald, driven as a user would.

Everything goes through ``gtd units install``, ``systemctl --user``, ``journalctl
--user -u`` and ``gtd status``; the fake agent is the only stand-in (for ``claude``).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

from gtd.control import SESSION as CONTROL_SESSION
from tests.conftest import FAKE_AGENT, proc_environ
from tests.sandbox import UserManager, wait_equal, wait_for
from tests.system.towns import DAEMON, REPO, TMUX, Town


def test_units_verify(town: Town) -> None:
    """The installed units pass systemd-analyze --user verify.

    --man=no: gtd(1) is installed by the packages, not by the venv this test runs from;
    tests/system/test_deb.py verifies the packaged units with the man check on.
    """
    proc = town.um.run(
        "systemd-analyze", "--user", "verify", "--man=no", str(town.um.unit_dir / DAEMON),
        str(town.um.unit_dir / TMUX), check=False,
    )  # fmt: skip
    assert (0, "") == (proc.returncode, proc.stderr.strip())


def test_start_is_ready_with_deacon_in_tmux_unit(town: Town) -> None:
    """Start returns after READY=1; the deacon runs with SPEC's environment in the tmux unit."""
    town.start()
    props = town.show("ActiveState", "SubState", "StatusText", "NRestarts")
    assert ("active", "running", "0") == (
        props["ActiveState"],
        props["SubState"],
        props["NRestarts"],
    )
    assert props["StatusText"].startswith("deacon ")
    pid = town.deacon_pid()
    assert pid is not None
    cgroup = pathlib.Path(f"/proc/{pid}/cgroup").read_text()
    assert TMUX in cgroup
    assert DAEMON not in cgroup
    env = proc_environ(pid)
    assert ("deacon", "deacon") == (env.get("GT_ROLE"), env.get("BD_ACTOR"))
    status = town.gtd_cmd("status")
    assert f"{DAEMON}: active (running), main PID {town.main_pid()}" in status
    # gtd's control session was made first on this fresh server, so the deacon's pane is %1.
    assert f"deacon: session gt-deacon pane %1 pid {pid} command node alive" in status
    state = json.loads((town.root / "daemon" / "state.json").read_text())
    assert (True, town.main_pid()) == (state["running"], state["pid"])


def test_journal_has_priorities_and_fields(town: Town) -> None:
    """Daemon logs reach journald as gtd with PRIORITY and uppercase GTD_* fields."""
    town.start()
    entry = town.um.wait_journal(
        DAEMON,
        lambda e: str(e.get("MESSAGE", "")).startswith("started deacon"),
        after_cursor=town.cursor,
    )
    assert ("gtd", "6", "deacon", "gt-deacon") == (
        entry.get("SYSLOG_IDENTIFIER"),
        entry.get("PRIORITY"),
        entry.get("GTD_IDENTITY"),
        entry.get("GTD_SESSION"),
    )


def test_restart_and_stop_leave_the_agent_alone(town: Town) -> None:
    """restart, stop and start of the daemon keep the deacon's PID; no signal reaches it."""
    town.start()
    pid = town.deacon_pid()
    old_main = town.main_pid()
    town.um.systemctl("restart", DAEMON)
    assert town.main_pid() != old_main
    assert pid == town.deacon_pid()
    town.um.systemctl("stop", DAEMON)
    assert "inactive" == town.show("ActiveState")["ActiveState"]
    assert pid == town.deacon_pid()
    state = json.loads((town.root / "daemon" / "state.json").read_text())
    assert state["running"] is False
    town.um.systemctl("start", DAEMON)
    assert pid == town.deacon_pid()
    assert [] == town.agent_signals()


def test_usr1_reaches_the_daemon_and_no_agent(town: Town) -> None:
    """USR1 through systemctl --user kill wakes the loop; the trapping agent sees nothing."""
    town.start()
    pid = town.deacon_pid()
    main = town.main_pid()
    town.um.systemctl("kill", "-s", "USR1", DAEMON)
    town.um.wait_journal(
        DAEMON,
        lambda e: "SIGUSR1: processing lifecycle requests now" in str(e.get("MESSAGE")),
        after_cursor=town.cursor,
        timeout=5,
    )
    assert (main, pid) == (town.main_pid(), town.deacon_pid())
    assert [] == town.agent_signals()


def test_reload_bad_config_keeps_running(town: Town) -> None:
    """A reload with a broken config keeps the old one and says why; a good one then applies."""
    town.start()
    main = town.main_pid()
    town.write_config("heartbeat_interval = 'soon'\n")
    town.um.systemctl("reload", DAEMON)
    wait_for(town.status, lambda status: "reload failed" in status, context=town.messages)
    entry = town.um.wait_journal(
        DAEMON,
        lambda e: "reload refused" in str(e.get("MESSAGE")),
        after_cursor=town.cursor,
    )
    assert "heartbeat_interval" in str(entry["MESSAGE"])
    assert "3" == entry.get("PRIORITY")
    town.write_config()
    town.um.systemctl("reload", DAEMON)
    wait_for(town.status, lambda status: "reload" not in status, context=town.messages)
    assert ("active", main) == (town.show("ActiveState")["ActiveState"], town.main_pid())


def test_invalid_config_fails_without_restart_loop(town: Town) -> None:
    """An invalid config makes start fail with status 78, named in the journal; no restarts."""
    town.write_config("[agent]\ncomand = 'x'\n")
    proc = town.um.systemctl("start", DAEMON, check=False)
    assert proc.returncode != 0
    props = town.show("ActiveState", "NRestarts", "ExecMainStatus")
    assert ("failed", "0", "78") == (
        props["ActiveState"],
        props["NRestarts"],
        props["ExecMainStatus"],
    )
    town.um.wait_journal(
        DAEMON, lambda e: "agent.comand" in str(e.get("MESSAGE")), after_cursor=town.cursor
    )


def test_dead_agent_is_brought_back(town: Town) -> None:
    """A fake agent that exits is running again at once, not at the next heartbeat.

    The heartbeat is 300 s away and its count does not move: the pidfd woke the loop.
    How fast that is, is measured in bench/ (``dead deacon back``), not asserted here.
    """
    town.start()
    pid = town.deacon_pid()
    assert pid is not None
    beats = wait_for(town.heartbeats, lambda n: n >= 1, what="the first heartbeat")
    town.um.run("kill", "-KILL", str(pid))
    town.new_deacon(pid)
    assert beats == town.heartbeats()


def test_hung_loop_is_killed_by_the_watchdog(town: Town) -> None:
    """A hung loop stops the pings: systemd kills it, the journal has the traceback, it restarts.

    The hang comes from the test-only switch GTD_TEST_HANG_FILE; the agent keeps its PID.
    """
    hang = town.root / "hang"
    town.set_dropin(f"WatchdogSec=3s\nEnvironment=GTD_TEST_HANG_FILE={hang}")
    town.start()
    pid, main = town.deacon_pid(), town.main_pid()
    town.um.write_file(hang.relative_to(town.um.home), "")
    town.um.systemctl("kill", "-s", "USR1", DAEMON)  # wake the loop into the hang
    town.um.wait_journal(
        DAEMON,
        lambda e: "in _maybe_hang" in str(e.get("MESSAGE")),
        after_cursor=town.cursor,
        timeout=15,
    )
    hang.unlink()
    wait_equal("1", lambda: town.show("NRestarts")["NRestarts"], timeout=30)
    wait_equal("active", lambda: town.show("ActiveState")["ActiveState"], timeout=30)
    assert town.main_pid() != main
    town.um.wait_journal(
        DAEMON,
        lambda e: "Watchdog timeout" in (m := str(e.get("MESSAGE"))) or "watchdog" in m.lower(),
        after_cursor=town.cursor,
    )
    assert pid == town.deacon_pid()
    assert [] == town.agent_signals()


def test_killed_tmux_server_comes_back_through_systemd(town: Town) -> None:
    """When the agents' tmux server dies, the daemon restarts its unit and the deacon."""
    town.set_dropin("Environment=")  # no-op drop-in keeps the fixture's cleanup uniform
    town.start()
    old = town.deacon_pid()
    town.um.run("tmux", "-L", town.socket, "kill-server")
    town.new_deacon(old)
    assert "active" == town.um.show(TMUX, "ActiveState")["ActiveState"]


def test_readme_install_command(manager: UserManager, tmp_path: pathlib.Path) -> None:
    """./scripts/install from a clone gets the sandbox user a running gastown-daemon.service.

    This is the README's first command, run as a normal user with its own venv.
    """
    clone = manager.home / "gtd-clone"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=60)
    subprocess.run(["chown", "-R", f"{manager.uid}:{manager.gid}", str(clone)], check=True)
    town = manager.home / "install-town"
    fake = manager.home / "fake"
    manager.write_file("fake/agent.py", FAKE_AGENT.read_text())
    if not (fake / "node").is_symlink():
        (fake / "node").symlink_to("/usr/bin/python3")
    manager.write_file(
        ".config/gastown/daemon.toml",
        f'town_root = "{town}"\n'
        f'[agent]\ncommand = "{fake}/node {fake}/agent.py --log {town}/agent.log"\n'
        'alive_commands = ["node"]\n[tmux]\nsocket = "gtd_sys_install"\n'
        '[lifecycle]\ngt_command = ""\n',
    )
    venv = manager.home / "install-venv"
    # A fresh user has no units; earlier tests' units run another gtd, which
    # `gtd units install` rightly refuses to overwrite without --force.
    for name in (DAEMON, TMUX):
        (manager.unit_dir / name).unlink(missing_ok=True)
    try:
        proc = manager.run(
            str(clone / "scripts" / "install"),
            env={"GTD_VENV": str(venv), "PIP_FIND_LINKS": os.environ.get("PIP_FIND_LINKS", "")},
            timeout=600,
            check=False,
        )
        assert 0 == proc.returncode, proc.stdout + proc.stderr
        assert "gastown-daemon.service: active (running)" in proc.stdout
        assert "active" == manager.show(DAEMON, "ActiveState")["ActiveState"]
        assert f"ExecStart={venv}/bin/gtd run" in (manager.unit_dir / DAEMON).read_text()
        assert "enabled" == manager.systemctl("is-enabled", DAEMON).stdout.strip()
    finally:
        manager.systemctl("disable", "--now", DAEMON, TMUX, check=False)
        manager.run("tmux", "-L", "gtd_sys_install", "kill-server", check=False)
        shutil.rmtree(clone, ignore_errors=True)
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(town, ignore_errors=True)


def test_existing_tmux_server_is_used_not_replaced(town: Town) -> None:
    """A server already on the socket (a person's) is used; the tmux unit exits 0, no loop."""
    town.um.run("tmux", "-L", town.socket, "-f", "/dev/null", "new-session", "-d", "-s", "mine")
    server_pid = town.um.run("tmux", "-L", town.socket, "display-message", "-p", "#{pid}").stdout
    town.start()

    def tmux_unit() -> tuple[str, str, str]:
        props = town.um.show(TMUX, "ActiveState", "Result", "NRestarts")
        return props["ActiveState"], props["Result"], props["NRestarts"]

    # The unit's `gtd tmux-server` may still be on its way out when the daemon is ready.
    assert ("inactive", "success", "0") == wait_equal(("inactive", "success", "0"), tmux_unit)
    sessions = town.um.run("tmux", "-L", town.socket, "list-sessions", "-F", "#{session_name}")
    assert {"mine", "gt-deacon", CONTROL_SESSION} == set(sessions.stdout.split())
    assert (
        server_pid
        == town.um.run("tmux", "-L", town.socket, "display-message", "-p", "#{pid}").stdout
    )
    town.um.run("tmux", "-L", town.socket, "kill-server")


def test_units_uninstall_stops_daemon_and_keeps_agents(town: Town) -> None:
    """Uninstall stops and removes the daemon unit; the tmux unit and the agent keep running."""
    town.start()
    pid = town.deacon_pid()
    out = town.gtd_cmd("units", "uninstall")
    assert f"removed {town.um.unit_dir / DAEMON}" in out
    assert not (town.um.unit_dir / DAEMON).exists()
    assert not (town.um.unit_dir / TMUX).exists()
    assert "inactive" == town.show("ActiveState")["ActiveState"]
    assert pid == town.deacon_pid()
    assert [] == town.agent_signals()


def test_security_exposure_stays_low(town: Town) -> None:
    """Systemd-analyze --user security rates the installed daemon unit at most 2.5 (OK)."""
    proc = town.um.run("systemd-analyze", "--user", "security", DAEMON, "--no-pager", check=False)
    [line] = [ln for ln in proc.stdout.splitlines() if "Overall exposure level" in ln]
    score = float(line.split(":")[1].split()[0])
    assert score <= 2.5, line
