"""``gtd run`` in the foreground, as the test user, supervising the real Claude Code.

A :class:`GtdRun` gives the test user what an installed town has: Claude Code's
first-run answers (not the folder trust, when a test is about it), ``claude`` in
``~/.local/bin`` (a symlink to the pinned npm install), the agent environment file
``~/.config/gastown/agent.env`` (0600: the stand-in's URL, a login, the DISABLE_*
switches) and a config with the real agent command. It starts the agents' tmux
server as the user the way ``gastown-tmux.service`` does (``gtd tmux-server`` with
the file's variables in its environment), then ``gtd run`` as the user with a clean
environment and a notify socket the test reads. Its :class:`RealAgent` reads the
deacon's screen; :meth:`GtdRun.stop` ends the daemon, the tmux server and every
process in its panes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
import typing as t

from gtd import environment
from gtd.claude import ClaudeCode
from gtd.screen import Condition
from tests.realagent.harness import (
    BINARY,
    Options,
    RealAgent,
    WaitFailed,
    api_env,
    as_user,
    claude_code_pid,
    show,
)
from tests.sandbox import wait_or_kill
from tests.test_daemon import NotifySocket

if t.TYPE_CHECKING:
    from tests.fakeapi import FakeAPI

DEFAULT_COMMAND = "claude --dangerously-skip-permissions"
"""SPEC's default agent command: ``claude`` found on the PATH gtd searches."""
_PRIORITY = re.compile(r"^<\d>")
_FIELDS = re.compile(r" \[(GTD_\S+=.*)\]$")


class GtdRun:
    """One town: its config, the daemon process, the agents' tmux server, the stand-in.

    Parameters
    ----------
    api
        The stand-in Messages API the agents talk to.
    base
        A directory under the test user's home for the town, HOME and logs.
    options
        Claude Code's set-up (login, trust, locale), as for :class:`RealAgent`.
    command
        ``[agent] command``; the default finds ``claude`` in ``~/.local/bin``.
    heartbeat
        ``heartbeat_interval``.
    """

    def __init__(
        self,
        api: FakeAPI,
        base: pathlib.Path,
        options: Options | None = None,
        *,
        command: str = DEFAULT_COMMAND,
        heartbeat: str = "2s",
    ) -> None:
        self.base = base
        self.town = base / "town"
        self.agent = RealAgent(api, base, options, workdir=self.town / "deacon", user_server=True)
        self.command = command
        self.heartbeat = heartbeat
        self.config = base / "daemon.toml"
        self.log_path = base / "gtd.log"
        self.notify: NotifySocket | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> pathlib.Path:
        """The user's HOME for the daemon, the CLI and Claude Code."""
        return self.agent.home

    @property
    def env_file(self) -> pathlib.Path:
        """The agent environment file gastown-tmux.service reads."""
        return environment.env_file({}, self.home)

    # -- set-up ---------------------------------------------------------------

    def prepare(self) -> None:
        """Write the home, ``claude`` on the user's PATH, agent.env, the config, the socket."""
        self.agent.prepare()
        local_bin = self.home / ".local" / "bin"
        local_bin.mkdir(parents=True, exist_ok=True)
        (local_bin / "claude").symlink_to(BINARY)
        self.env_file.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            f"{k}={v}" for k, v in api_env(self.agent.api.url, self.agent.options.login).items()
        ]
        self.env_file.write_text("\n".join(lines) + "\n")
        self.env_file.chmod(0o600)
        self.config.write_text(
            f"town_root = {json.dumps(str(self.town))}\n"
            f"heartbeat_interval = {json.dumps(self.heartbeat)}\n"
            f"[agent]\ncommand = {json.dumps(self.command)}\n"
            f"[tmux]\nsocket = {json.dumps(self.agent.tmux.socket)}\n"
            '[lifecycle]\ngt_command = ""\n'
        )
        self.notify = NotifySocket(self.base / "notify")
        (self.base / "notify").chmod(0o666)
        self.agent.chown()

    def user_env(self) -> dict[str, str]:
        """A clean environment as the user's manager gives it (no agent variables)."""
        return self.agent.session_env()

    def argv(self, *args: str) -> list[str]:
        """``gtd --config ... ARGS`` (this venv's gtd)."""
        return [sys.executable, "-m", "gtd", "--config", str(self.config), *args]

    def start(self) -> None:
        """Prepare, start the tmux server as gastown-tmux.service would, then ``gtd run``."""
        self.prepare()
        server_env = self.user_env() | environment.read_env_file(self.env_file)
        self.agent.start_server(self.argv("tmux-server"), server_env)
        assert self.notify is not None
        env = self.user_env() | {"NOTIFY_SOCKET": str(self.notify.path)}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                as_user(self.agent.pw, env, self.argv("run")),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.home,
            )

    def gtd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a ``gtd`` command as the user (``gtd status --json``, ``gtd trust deacon``)."""
        proc = subprocess.run(
            as_user(self.agent.pw, self.user_env(), self.argv(*args)),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=self.home,
        )
        if check and proc.returncode != 0:
            msg = f"gtd {shlex.join(args)}: rc={proc.returncode}\n{proc.stdout}{proc.stderr}"
            raise AssertionError(msg)
        return proc

    def status(self) -> dict[str, t.Any]:
        """``gtd status --json`` as the user (exit 3: no user manager here, which is fine)."""
        proc = self.gtd("status", "--json", check=False)
        try:
            report: dict[str, t.Any] = json.loads(proc.stdout)
        except ValueError:
            msg = f"gtd status --json: rc={proc.returncode}\n{proc.stdout}{proc.stderr}"
            raise AssertionError(msg) from None
        return report

    def deacon_status(self) -> dict[str, t.Any]:
        """The deacon's row of ``gtd status --json``."""
        row: dict[str, t.Any] = next(
            a for a in self.status()["agents"] if a["identity"] == "deacon"
        )
        return row

    # -- what gtd says --------------------------------------------------------

    def lines(self) -> list[str]:
        """The daemon's log so far, one message a line, the ``<N>`` prefix taken off."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [_PRIORITY.sub("", line) for line in text.splitlines()]

    def log(self) -> str:
        """The log for a failure message."""
        return "\n".join(self.lines()[-40:])

    def fields(self, line: str) -> dict[str, str]:
        """The ``GTD_*`` fields of one log line."""
        match = _FIELDS.search(line)
        if match is None:
            return {}
        return dict(f.split("=", 1) for f in match.group(1).split(" ") if "=" in f)

    def pokes(self) -> list[str]:
        """Each poke's outcome in order: ``delivered``, ``busy``, ``starting``, ``dialog`` ..."""
        return [f["GTD_POKE"] for line in self.lines() if "GTD_POKE" in (f := self.fields(line))]

    def delivered(self) -> list[str]:
        """The texts of the pokes the daemon logged as delivered, in order."""
        out = []
        for line in self.lines():
            if self.fields(line).get("GTD_POKE") == "delivered":
                text = line.removeprefix("poked deacon: ")
                out.append(text.rsplit(" (delivered", 1)[0])
        return out

    def statuses(self) -> list[str]:
        """Every STATUS= the daemon sent."""
        assert self.notify is not None
        return self.notify.statuses()

    def state(self) -> dict[str, t.Any]:
        """``state.json`` now (``{}`` before the first write)."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            obj: dict[str, t.Any] = json.loads((self.town / "daemon" / "state.json").read_text())
            return obj
        return {}

    def deacon(self) -> dict[str, t.Any]:
        """The deacon's record in ``state.json`` (``{}`` before the first)."""
        record: dict[str, t.Any] = self.state().get("agents", {}).get("deacon", {})
        return record

    # -- waiting --------------------------------------------------------------

    def wait(self, predicate: t.Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """Poll *predicate* every 50 ms.

        Raises
        ------
        WaitFailed
            After *timeout* seconds, or when the daemon exited, with the log's tail.
        """
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc is not None and self.proc.poll() is not None:
                msg = f"gtd run exited ({self.proc.returncode}) waiting for {what}:\n{self.log()}"
                raise WaitFailed(msg)
            if time.monotonic() > deadline:
                msg = f"waited {timeout}s for {what}; state {self.deacon()}; log:\n{self.log()}"
                raise WaitFailed(msg)
            time.sleep(0.05)

    def wait_deacon(self, timeout: float = 30.0) -> int:
        """Wait until the daemon started the deacon; point :attr:`agent` at its pane.

        Returns the agent's pid as the daemon records it.
        """
        self.wait(lambda: bool(self.deacon().get("pid") and self.deacon().get("pane")),
                  "the deacon's pane in state.json", timeout)  # fmt: skip
        self.agent.pane = self.deacon()["pane"]
        self.agent.pid = self.agent.tmux.pane(self.agent.pane).pane_pid
        pid: int = self.deacon()["pid"]
        return pid

    def claude_pid(self) -> int | None:
        """Claude Code's process in the deacon's pane, found by its binary (not by gtd)."""
        return claude_code_pid(self.agent.tmux.pane(self.agent.pane).pane_pid)

    def wait_running(self, timeout: float = 30.0) -> int:
        """Wait until STATUS= says the daemon runs Claude Code; its pid.

        The crash-loop guard calls a start healthy 10 s after it.
        """
        self.wait(lambda: self.claude_pid() is not None, "Claude Code in the deacon's pane")
        pid = self.claude_pid()
        self.wait(lambda: any(f"deacon running (pid {pid})" in s for s in self.statuses()[-1:]),
                  f"STATUS= deacon running (pid {pid})", timeout)  # fmt: skip
        assert pid is not None
        return pid

    def heartbeats(self) -> int:
        """Heartbeats done, from ``state.json``."""
        count: int = self.state().get("heartbeat_count", 0)
        return count

    def wait_heartbeats(self, count: int, timeout: float = 60.0) -> None:
        """Wait until *count* more heartbeats are done than now."""
        target = self.heartbeats() + count
        self.wait(lambda: self.heartbeats() >= target, f"heartbeat #{target}", timeout)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until the deacon's screen shows its empty prompt."""
        self.agent.wait_for(Condition.IDLE, timeout)

    def screen_text(self) -> str:
        """The deacon's screen, for a failure message."""
        screen = self.agent.screen()
        return f"{ClaudeCode().read(screen)}\n{show(screen)}"

    # -- tear-down --------------------------------------------------------------

    def stop_daemon(self) -> int | None:
        """SIGTERM ``gtd run`` and wait for it (killed after 10 s); its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return wait_or_kill(self.proc, 10)

    def stop(self) -> None:
        """Stop the daemon, the tmux server and every agent process; close the socket."""
        with contextlib.suppress(Exception):
            self.stop_daemon()
        self.agent.stop()
        if self.notify is not None:
            self.notify.sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.notify.path)
