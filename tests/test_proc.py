"""Bounded subprocesses: timeouts kill the whole group; control signals don't reach children."""

from __future__ import annotations

import os
import pathlib
import signal
import time

import pytest

from gtd import proc
from gtd.exc import CommandTimeout
from tests.sandbox import wait_for


def test_timeout_kills_the_process_group(tmp_path: pathlib.Path) -> None:
    """A command that overruns is killed with its children, and the call returns promptly."""
    pidfile = tmp_path / "grandchild"
    start = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"no answer within 0\.3s"):
        proc.run(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.3)
    assert time.monotonic() - start < 5
    grandchild = int(pidfile.read_text())
    stat = pathlib.Path(f"/proc/{grandchild}/stat")

    def state() -> str:
        try:
            return stat.read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return "gone"

    # SIGKILL is delivered asynchronously; the orphan then stays a zombie (PID 1 here
    # does not reap).
    wait_for(state, lambda s: s in ("Z", "gone"), what=f"sleep (pid {grandchild}) to die")


def test_timeout_returns_even_when_pipes_are_held(tmp_path: pathlib.Path) -> None:
    """A grandchild that keeps stdout open past the kill (outside the group) cannot hang us."""
    start = time.monotonic()
    with pytest.raises(CommandTimeout):
        proc.run(["sh", "-c", "setsid sleep 3 & sleep 60"], timeout=0.3)
    assert time.monotonic() - start < 2


def test_children_ignore_usr1_and_hup() -> None:
    """Helpers survive `systemctl --user kill -s USR1`, which hits the whole cgroup."""
    result = proc.run(
        ["sh", "-c", "kill -USR1 $$; kill -HUP $$; echo survived"], timeout=5, env=os.environ
    )
    assert (0, "survived\n") == (result.returncode, result.stdout)


def test_spawned_child_ignores_and_blocks_usr1_and_hup() -> None:
    """A long-lived child (the tmux control client) never gets USR1 or HUP, whatever it installs.

    Blocked, not only ignored: tmux installs its own SIGHUP handler (a client exits
    on it), which an inherited SIG_IGN would not survive.
    """
    child = proc.spawn(
        ["sh", "-c", "trap 'echo hup' HUP; kill -HUP $$; echo alive; read x"], env=os.environ
    )
    try:
        assert child.stdout is not None
        os.set_blocking(child.stdout.fileno(), True)
        assert b"alive\n" == child.stdout.readline()
        status = pathlib.Path(f"/proc/{child.pid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        for sig in (signal.SIGUSR1, signal.SIGHUP):
            assert int(fields["SigBlk"], 16) & (1 << (sig - 1)), sig
        assert os.getpgid(child.pid) == child.pid
    finally:
        proc.kill_group(child)
    assert child.returncode == -signal.SIGKILL
