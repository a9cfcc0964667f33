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

from tests.conftest import proc_environ
from tests.sandbox import retry_until
from tests.system.towns import DAEMON, TMUX, Town


def tmux_pid(town: Town, *socket: str) -> int:
    out = town.um.run("tmux", *socket, "display-message", "-p", "#{pid}").stdout
    return int(out)


def failed_listings(town: Town) -> int:
    return sum(m.startswith("tmux unavailable:") for m in town.messages())


def status(town: Town) -> str:
    return town.show("StatusText")["StatusText"]


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
        assert retry_until(lambda: "tmux unavailable" in status(town), 15), town.messages()[-5:]
        # The fault lasts past WatchdogSec=6s and several failed listings (1 s timeouts).
        assert retry_until(
            lambda: failed_listings(town) >= 3 and time.monotonic() - frozen > 7, 30
        ), town.messages()[-5:]
        assert "tmux unavailable" in status(town)
    finally:
        os.kill(server, signal.SIGCONT)
    assert retry_until(lambda: "tmux unavailable" not in status(town), 20), status(town)
    props = town.show("ActiveState", "NRestarts", "MainPID")
    assert ("active", "0", str(main)) == (
        props["ActiveState"],
        props["NRestarts"],
        props["MainPID"],
    )
    assert pid == town.deacon_pid()
    assert any("tmux answers again" in m for m in town.messages())


def test_killed_tmux_server_leaves_a_persons_server_alone(town: Town) -> None:
    """The agents' server dies; systemd brings it back with the deacon; the default server lives."""
    town.um.run("tmux", "-f", "/dev/null", "new-session", "-d", "-s", "person", "sleep 600")
    person = tmux_pid(town)
    try:
        town.start()
        old = town.deacon_pid()
        town.um.run("tmux", "-L", town.socket, "kill-server")
        assert retry_until(lambda: town.deacon_pid() not in (None, old), 15), town.messages()
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
    assert retry_until(lambda: town.main_pid() not in (0, main), 15)
    assert retry_until(lambda: "active" == town.show("ActiveState")["ActiveState"], 15)
    for verb in ("restart", "reload", "stop", "start"):
        town.um.systemctl(verb, DAEMON)
    town.um.systemctl("kill", "-s", "USR1", DAEMON)
    town.um.systemctl("kill", "-s", "HUP", DAEMON)
    assert retry_until(lambda: sum("SIGUSR1: processing" in m for m in town.messages()) >= 1, 5)
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
    assert retry_until(lambda: "crash-looping (4 quick exits)" in status(town), 30), status(town)
    # Exits at ~0, 1, 3, 7 s: without backoff four exits would take well under a second.
    assert time.monotonic() - killed > 6
    starts = [ln for ln in town.log.read_text().splitlines() if ln.endswith(" START")]
    assert 4 <= len(starts) <= 6, starts
    assert len(town.messages()) - before < 40
    assert "active" == town.show("ActiveState")["ActiveState"]
    crash.unlink()
    assert retry_until(lambda: town.deacon_pid() is not None, 40), town.messages()[-5:]
    assert retry_until(lambda: status(town).startswith("deacon running"), 30), status(town)


def test_reload_new_agent_command_keeps_the_running_agent(town: Town) -> None:
    """A reload that changes the agent command leaves the running agent; its next start uses it."""
    town.start()
    pid = town.deacon_pid()
    assert pid is not None
    town.agent_args = "--trap --exit-after 0"  # a marker visible in the new agent's argv
    town.write_config()
    town.um.systemctl("reload", DAEMON)
    assert retry_until(lambda: any("config reloaded" in m for m in town.messages()), 5)
    assert pid == town.deacon_pid()
    town.um.run("kill", "-KILL", str(pid))
    assert retry_until(lambda: town.deacon_pid() not in (None, pid), 5)
    new = town.deacon_pid()
    assert new is not None
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

    def new_deacon() -> bool:
        proc = town.um.run("tmux", "-L", f"{old_socket}b", *listing, check=False)
        return proc.returncode == 0 and proc.stdout.strip().isdigit()

    try:
        assert retry_until(new_deacon, 10), town.messages()[-5:]
        assert pid == town.deacon_pid()
        assert [] == town.agent_signals()
        state = json.loads((town.root / "daemon" / "state.json").read_text())
        assert state["running"] is True
    finally:
        town.um.run("tmux", "-L", f"{old_socket}b", "kill-server", check=False)
