"""Shared fixtures: a clean environment, a private tmux server, a fake agent."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import typing as t

import pytest
from hypothesis import HealthCheck, settings

from tests.sandbox import wait_for, wait_or_kill

# Timing-based health checks and deadlines fail on a loaded 2-core CI machine, not on
# wrong code; property failures still fail.
settings.register_profile("gtd", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("gtd")

FAKE_AGENT = pathlib.Path(__file__).parent / "fakeagent" / "agent.py"
HAVE_TMUX = shutil.which("tmux") is not None


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """HOME in tmp, a plain shell, not inside tmux, no identity or config variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SHELL", "/bin/sh")
    for name in (
        "TMUX",
        "TMUX_PANE",
        "GT_ROLE",
        "GT_RIG",
        "GT_CREW",
        "GT_POLECAT",
        "GT_SESSION",
        "BD_ACTOR",
        "GT_TOWN_ROOT",
        "GTD_CONFIG",
        "XDG_CONFIG_HOME",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _restore_logging() -> t.Iterator[None]:
    """Whatever a test does to the root logger is undone (structlog's conftest does this)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@dataclasses.dataclass
class TmuxServer:
    """A private tmux server for one test."""

    socket: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a tmux command against this server."""
        return subprocess.run(
            ["tmux", "-u", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=10,
            env=self.env,
        )

    def start(self) -> None:
        """Start the server in the background (as gastown-tmux.service would: tmux -D)."""
        self.process = subprocess.Popen(
            ["tmux", "-L", self.socket, "-f", "/dev/null", "-D"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=self.env,
        )
        wait_for(self.running, timeout=10, what=f"tmux server {self.socket} to answer")

    def running(self) -> bool:
        """Whether the server answers."""
        proc = self.cmd("list-sessions", check=False)
        return proc.returncode == 0 or "no sessions" in proc.stderr

    def kill(self) -> None:
        """Kill the server, wait until it is gone, remove its socket; errors suppressed.

        ``kill-server`` alone is not enough: a control-mode client (gtd's) whose output
        cannot be flushed keeps a shutting-down server alive, and with its socket
        removed nothing could reach it again. So the process is waited for, and killed.
        """
        with contextlib.suppress(Exception):
            self.cmd("kill-server", check=False)
        if self.process is not None:
            wait_or_kill(self.process)
        with contextlib.suppress(OSError):
            base = pathlib.Path(self.env.get("TMUX_TMPDIR", "/tmp"))
            (base / f"tmux-{os.geteuid()}" / self.socket).unlink()


@pytest.fixture
def tmux_server() -> t.Iterator[TmuxServer]:
    """A running tmux server on a private socket ``gtd_test_<random>``, killed afterwards."""
    if not HAVE_TMUX:
        pytest.skip("tmux is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    server = TmuxServer(f"gtd_test_{secrets.token_hex(4)}", env)
    server.start()
    yield server
    server.kill()


@dataclasses.dataclass
class FakeAgent:
    """How to run the fake agent and read what it recorded."""

    bin_dir: pathlib.Path
    log: pathlib.Path
    name: str = "node"

    @property
    def exe(self) -> pathlib.Path:
        """The symlink to python whose name tmux reports as the pane's command."""
        return self.bin_dir / self.name

    def command(self, *extra: str) -> str:
        """The ``agent.command`` config value."""
        parts = [str(self.exe), str(FAKE_AGENT), "--log", str(self.log), *extra]
        return " ".join(parts)

    def lines(self) -> list[str]:
        """Everything it recorded, as ``PID WHAT`` lines."""
        try:
            return self.log.read_text().splitlines()
        except FileNotFoundError:
            return []

    def received(self) -> list[str]:
        """The lines typed into it."""
        return [ln.split(" ", 2)[2] for ln in self.lines() if ln.split(" ")[1] == "LINE"]


@pytest.fixture
def fake_agent(tmp_path: pathlib.Path) -> FakeAgent:
    """A fake agent named ``node`` (a symlink to this python) logging to tmp."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "node").symlink_to(sys.executable)
    return FakeAgent(bin_dir, tmp_path / "agent.log")


def proc_environ(pid: int) -> dict[str, str]:
    """A process's initial environment from /proc/PID/environ."""
    raw = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
    return dict(
        item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
    )


def proc_comm(pid: int) -> str:
    """A process's comm name."""
    return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()


def exec_view(pid: int, *names: str) -> tuple[str, tuple[str | None, ...]]:
    """What a process is now: its comm and the named variables of its own environ.

    A pane's process passes through tmux's fork and ``env`` before it execs the agent,
    and ``/proc/PID/environ`` changes at each exec; so tests wait until this shows the
    agent's comm with the variables they assert, rather than read the environ once.
    An exited process shows ``("", ())``.
    """
    try:
        env = proc_environ(pid)
        comm = proc_comm(pid)
    except OSError:
        return "", ()
    return comm, tuple(env.get(name) for name in names)


@pytest.fixture
def town(tmp_path: pathlib.Path) -> pathlib.Path:
    """An empty town root (tests/system/conftest.py has its own ``town``: the service's)."""
    path = tmp_path / "town"
    path.mkdir()
    return path


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every gtd log record, DEBUG and up."""
    caplog.set_level(logging.DEBUG, logger="gtd")
    return caplog
