"""Faults against the running service: frozen or killed tmux, daemon kills, crash loops, reloads.

Each test injects one fault the way it happens on a user's machine and checks the
service keeps working, loses nothing and never signals an agent.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import time
import typing as t

from tests.conftest import proc_environ
from tests.sandbox import wait_equal, wait_for
from tests.system.towns import DAEMON, TMUX, Town

if t.TYPE_CHECKING:
    from tests.sandbox import JournalEntry


def tmux_pid(town: Town, *socket: str) -> int:
    out = town.um.run("tmux", *socket, "display-message", "-p", "#{pid}").stdout
    return int(out)


def failed_listings(town: Town) -> int:
    return sum(m.startswith("tmux unavailable:") for m in town.messages())


def logged(town: Town, text: str, pid: int) -> t.Callable[[JournalEntry], bool]:
    """Match entries of process *pid* whose MESSAGE contains *text*."""
    return lambda e: text in str(e.get("MESSAGE")) and e.get("_PID") == str(pid)


def test_frozen_tmux_server_is_waited_out(town: Town) -> None:
    """SIGSTOP on the tmux server beyond a tmux timeout: logged, no watchdog kill, recovers."""
    town.set_dropin("WatchdogSec=6s")
    town.write_config(town.config_text(heartbeat_interval='"2s"'))
    town.start()
    main, pid = town.main_pid(), town.deacon_pid()
    server = tmux_pid(town, "-L", town.socket)
    os.kill(server, signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        wait_for(town.status, lambda s: "tmux unavailable" in s, timeout=30, context=town.messages)
        # The fault lasts past WatchdogSec=6s and several failed listings (1 s timeouts).
        wait_for(
            lambda: (failed_listings(town), round(time.monotonic() - frozen, 1)),
            lambda seen: seen[0] >= 3 and seen[1] > 7, timeout=60, interval=0.2,
            what="3 failed listings and 7 s of a frozen server", context=town.messages,
        )  # fmt: skip
        assert "tmux unavailable" in town.status()
    finally:
        os.kill(server, signal.SIGCONT)
    wait_for(town.status, lambda s: "tmux unavailable" not in s, timeout=30)
    props = town.show("ActiveState", "NRestarts", "MainPID")
    assert ("active", "0", str(main)) == (
        props["ActiveState"],
        props["NRestarts"],
        props["MainPID"],
    )
    assert pid == town.deacon_pid()
    town.um.wait_journal(DAEMON, logged(town, "tmux answers again", main), after_cursor=town.cursor)


def test_killed_tmux_server_leaves_a_persons_server_alone(town: Town) -> None:
    """The agents' server dies; systemd brings it back with the deacon; the default server lives."""
    town.um.run("tmux", "-f", "/dev/null", "new-session", "-d", "-s", "person", "sleep 600")
    person = tmux_pid(town)
    try:
        town.start()
        old = town.deacon_pid()
        town.um.run("tmux", "-L", town.socket, "kill-server")
        town.new_deacon(old)
        assert "active" == town.um.show(TMUX, "ActiveState")["ActiveState"]
        assert person == tmux_pid(town)
        sessions = town.um.run("tmux", "list-sessions", "-F", "#{session_name}").stdout.split()
        assert ["person"] == sessions
    finally:
        town.um.run("tmux", "kill-server", check=False)


def test_no_agent_is_signalled_by_anything_done_to_the_unit(town: Town) -> None:
    """Kill -9, restart, stop, start, reload, USR1 and HUP: the agent's traps never fire."""
    town.start()
    pid = town.deacon_pid()
    main = town.main_pid()
    town.um.systemctl("kill", "-s", "KILL", DAEMON)
    wait_for(town.main_pid, lambda new: new not in (0, main), timeout=30)
    wait_equal("active", lambda: town.show("ActiveState")["ActiveState"], timeout=30)
    for verb in ("restart", "reload", "stop", "start"):
        town.um.systemctl(verb, DAEMON)
    main = town.main_pid()
    town.um.systemctl("kill", "-s", "USR1", DAEMON)
    town.um.systemctl("kill", "-s", "HUP", DAEMON)
    # Both handled by this process before the agent is looked at: a signal it sent would show.
    journal, cursor = town.um.wait_journal, town.cursor
    journal(DAEMON, logged(town, "SIGUSR1: processing", main), after_cursor=cursor)
    journal(DAEMON, logged(town, "config reloaded", main), after_cursor=cursor)
    assert pid == town.deacon_pid()
    assert [] == town.agent_signals()


def test_crash_loop_backs_off_says_so_and_recovers(town: Town) -> None:
    """An agent that dies on every start: restarts back off, STATUS says so, a good start resets.

    Backoff is 1 s, 2 s, 4 s, 8 s...: the fourth quick exit comes about 7 s after the
    first, and the journal stays small. The decay of old failures is proven with a fake
    clock in tests/test_state.py.
    """
    crash = town.root / "crash"
    town.agent_args = f"--trap --exit-file {crash}"
    town.write_config()
    town.start()
    town.um.write_file(crash.relative_to(town.um.home), "")
    pid = town.deacon_pid()
    assert pid is not None
    before = len(town.messages())
    killed = time.monotonic()
    town.um.run("kill", "-KILL", str(pid))
    wait_for(town.status, lambda s: "crash-looping (4 quick exits)" in s, timeout=60)
    # Exits at ~0, 1, 3, 7 s: without backoff four exits would take well under a second.
    assert time.monotonic() - killed > 6
    starts = [ln for ln in town.log.read_text().splitlines() if ln.endswith(" START")]
    assert 4 <= len(starts) <= 6, starts
    assert len(town.messages()) - before < 40
    assert "active" == town.show("ActiveState")["ActiveState"]
    crash.unlink()
    wait_for(town.deacon_pid, lambda new: new is not None, timeout=60, context=town.messages)
    wait_for(town.status, lambda s: s.startswith("deacon running"), timeout=60)


def test_reload_new_agent_command_keeps_the_running_agent(town: Town) -> None:
    """A reload that changes the agent command leaves the running agent; its next start uses it."""
    town.start()
    pid = town.deacon_pid()
    assert pid is not None
    town.agent_args = "--trap --exit-after 0"  # a marker visible in the new agent's argv
    town.write_config()
    town.um.systemctl("reload", DAEMON)
    town.um.wait_journal(
        DAEMON, lambda e: "config reloaded" in str(e.get("MESSAGE")), after_cursor=town.cursor
    )
    assert pid == town.deacon_pid()
    town.um.run("kill", "-KILL", str(pid))
    new = town.new_deacon(pid)
    argv = pathlib.Path(f"/proc/{new}/cmdline").read_bytes().split(b"\0")
    assert b"--exit-after" in argv
    assert "deacon" == proc_environ(new)["GT_ROLE"]


def test_reload_new_socket_leaves_old_agents_running(town: Town) -> None:
    """A reload that moves to another tmux socket starts a deacon there; the old one keeps going."""
    town.start()
    old_socket, pid = town.socket, town.deacon_pid()
    text = town.config_text().replace(f'socket = "{old_socket}"', f'socket = "{old_socket}b"')
    town.write_config(text)
    town.um.systemctl("reload", DAEMON)
    listing = ["list-panes", "-t", "=gt-deacon", "-F", "#{pane_pid}"]

    def new_deacon() -> str:
        proc = town.um.run("tmux", "-L", f"{old_socket}b", *listing, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else proc.stderr.strip()

    try:
        wait_for(new_deacon, str.isdigit, timeout=30, what=f"a deacon on {old_socket}b",
                 context=town.messages)  # fmt: skip
        assert pid == town.deacon_pid()
        assert [] == town.agent_signals()
        state = json.loads((town.root / "daemon" / "state.json").read_text())
        assert state["running"] is True
    finally:
        town.um.run("tmux", "-L", f"{old_socket}b", "kill-server", check=False)
