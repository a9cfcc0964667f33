"""Run the real Claude Code in tmux against the stand-in API, as an unprivileged user.

The pinned version is installed by ``scripts/claude-code`` (the one place its number
is written; :data:`VERSION` reads it there). Each :class:`RealAgent` gets its own
HOME and workdir under the test user's home, its own tmux server (root's, on a
private socket, so :class:`gtd.tmux.Tmux` reaches it as the daemon would), and runs
``setpriv --reuid USER ... env -i ... claude --dangerously-skip-permissions`` as the
pane's command: ``setpriv`` and ``env`` exec, so the pane's process is Claude Code.
:meth:`RealAgent.stop` ends the tmux server and every process that descends from
the pane, by pid, and waits for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import time
import typing as t

from gtd.claude import ClaudeCode
from gtd.screen import Condition, Reading, Screen
from gtd.tmux import SCREEN_FORMAT, SEP, Tmux
from tests.sandbox import default_user

if t.TYPE_CHECKING:
    from tests.fakeapi import FakeAPI

REPO = pathlib.Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "scripts" / "claude-code"


def _pinned_version() -> str:
    """The version ``scripts/claude-code`` installs (``GTD_CLAUDE_CODE_VERSION`` overrides)."""
    if override := os.environ.get("GTD_CLAUDE_CODE_VERSION"):
        return override
    match = re.search(
        r'VERSION="\$\{GTD_CLAUDE_CODE_VERSION:-([^}]+)\}"', INSTALL_SCRIPT.read_text()
    )
    if match is None:
        msg = f"{INSTALL_SCRIPT}: no VERSION=... line"
        raise RuntimeError(msg)
    return match.group(1)


VERSION = _pinned_version()
"""The Claude Code version the real-agent tier proves."""
INSTALL_ROOT = pathlib.Path(os.environ.get("GTD_CLAUDE_CODE_ROOT", "/opt/gtd-test/claude-code"))
PREFIX = INSTALL_ROOT / VERSION
PACKAGE = PREFIX / "node_modules" / "@anthropic-ai"
BINARY = PREFIX / "node_modules" / ".bin" / "claude"
"""The npm layout's ``claude`` (a symlink to ``bin/claude.exe``, the native binary)."""
USER = default_user()
"""This clone's test user (``$GTD_SYSTEST_USER``, else one derived from the clone's path)."""
API_KEY = "sk-ant-api03-" + "gtdtest" * 12 + "-AAAAAAAAAAAAAAAAAAAA"
OAUTH_TOKEN = "sk-ant-oat01-" + "gtdtest" * 12 + "-AA"
PATH = "/usr/local/bin:/usr/bin:/bin"
REQUIRE_ENV = "GTD_REQUIRE_REAL_AGENT"


def unavailable() -> list[str]:
    """Why the real agent cannot run here; empty when it can."""
    reasons = []
    if os.geteuid() != 0:
        reasons.append("needs root (to run Claude Code as the test user with setpriv)")
    tools = ("tmux", "setpriv", "useradd")
    reasons.extend(f"{tool} is not on PATH" for tool in tools if shutil.which(tool) is None)
    if not BINARY.exists():
        reasons.append(
            f"Claude Code {VERSION} is not installed at {BINARY} (run scripts/claude-code)"
        )
    return reasons


def ensure_user(user: str = USER) -> pwd.struct_passwd:
    """The test user, created (``useradd -m``) when missing."""
    try:
        return pwd.getpwnam(user)
    except KeyError:
        subprocess.run(
            ["useradd", "-m", "-s", "/bin/bash", user],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        return pwd.getpwnam(user)


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """How one agent is set up; the defaults pass every first-run screen."""

    trusted: bool = True
    """The workdir has the folder-trust entry in ``.claude.json``."""
    bypass_accepted: bool = True
    """The bypass-permissions warning was accepted before."""
    login: str = "key"
    """``"key"`` (``ANTHROPIC_API_KEY``), ``"oauth"`` (a subscription token), ``"none"``."""
    onboarded: bool = True
    """First-run onboarding (theme, login method) is done."""
    width: int = 120
    height: int = 40
    lang: str = "C.UTF-8"
    """``LANG`` of the tmux server and the agent; ``""`` leaves it unset (a bare user manager)."""
    command: tuple[str, ...] = ()
    """Replaces ``[BINARY]`` as the program (another install layout, a wrapper)."""
    args: tuple[str, ...] = ("--dangerously-skip-permissions",)


class WaitFailed(AssertionError):
    """A wait on the agent's screen ran out; the message shows what was seen last."""


class RealAgent:
    """One Claude Code in its own tmux server, talking to *api*."""

    def __init__(
        self, api: FakeAPI, base: pathlib.Path, options: Options | None = None, *, user: str = USER
    ) -> None:
        self.api = api
        self.options = options or Options()
        self.pw = ensure_user(user)
        self.base = base
        self.home = base / "home"
        self.workdir = base / "work"
        self.tmux = Tmux(f"gtd_real_{secrets.token_hex(4)}", timeout=10.0)
        self.ui = ClaudeCode()
        self.pane = ""
        self.pid = 0
        self._server: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    # -- set-up ---------------------------------------------------------------

    def prepare(self) -> None:
        """Write the user's first-run answers (as the doc of claude-code-offline lists)."""
        for d in (self.base, self.home, self.home / ".claude", self.workdir):
            d.mkdir(parents=True, exist_ok=True)
        config: dict[str, t.Any] = {
            "numStartups": 1,
            "autoUpdates": False,
            "customApiKeyResponses": {"approved": [API_KEY[-20:]], "rejected": []},
            "projects": {},
        }
        if self.options.onboarded:
            config |= {
                "hasCompletedOnboarding": True,
                "lastOnboardingVersion": VERSION,
                "theme": "dark",
            }
        if self.options.bypass_accepted:
            config["bypassPermissionsModeAccepted"] = True
        if self.options.trusted:
            config["projects"][str(self.workdir)] = {
                "hasTrustDialogAccepted": True,
                "hasCompletedProjectOnboarding": True,
            }
        settings = (
            {"skipDangerousModePermissionPrompt": True} if self.options.bypass_accepted else {}
        )
        (self.home / ".claude.json").write_text(json.dumps(config, indent=2))
        (self.home / ".claude" / "settings.json").write_text(json.dumps(settings))
        for path in (self.base, *self.base.rglob("*")):
            os.chown(path, self.pw.pw_uid, self.pw.pw_gid, follow_symlinks=False)

    def env(self) -> dict[str, str]:
        """Claude Code's whole environment: offline, pointed at the stand-in."""
        env = {
            "HOME": str(self.home),
            "USER": self.pw.pw_name,
            "LOGNAME": self.pw.pw_name,
            "PATH": PATH,
            "SHELL": "/bin/bash",
            "TERM": "screen",
            "ANTHROPIC_BASE_URL": self.api.url,
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
        }
        if self.options.lang:
            env["LANG"] = self.options.lang
        if self.options.login == "key":
            env["ANTHROPIC_API_KEY"] = API_KEY
        elif self.options.login == "oauth":
            env["CLAUDE_CODE_OAUTH_TOKEN"] = OAUTH_TOKEN
            env["CLAUDE_CODE_SUBSCRIPTION_TYPE"] = "max"
        return env

    def argv(self) -> list[str]:
        """The pane's command: drop to the user, a clean environment, then Claude Code."""
        program = list(self.options.command) or [str(BINARY)]
        return [
            "setpriv", f"--reuid={self.pw.pw_uid}", f"--regid={self.pw.pw_gid}", "--init-groups",
            "--", "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in self.env().items()),
            *program, *self.options.args,
        ]  # fmt: skip

    def start(self, *, prepare: bool = True) -> None:
        """Prepare the home (unless told not to), start tmux and the agent (no waiting)."""
        if prepare:
            self.prepare()
        self._server = subprocess.Popen(
            ["tmux", "-L", self.tmux.socket, "-f", "/dev/null", "-D"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={"PATH": PATH, "HOME": "/root"}
            | ({"LANG": self.options.lang} if self.options.lang else {}),
        )
        deadline = time.monotonic() + 10
        while not self.tmux.server_running():
            if time.monotonic() > deadline:
                msg = f"tmux server {self.tmux.socket} did not start"
                raise WaitFailed(msg)
            time.sleep(0.02)
        self.started_at = time.monotonic()
        pane = self.tmux.new_session(
            "agent",
            cwd=str(self.workdir),
            env={},
            argv=self.argv(),
        )
        self.pane, self.pid = pane.pane_id, pane.pane_pid
        self.tmux.run("resize-window", "-t", "=agent:", "-x", str(self.options.width),
                      "-y", str(self.options.height))  # fmt: skip

    # -- reading ----------------------------------------------------------------

    def screen(self) -> Screen:
        """The pane now (one tmux call)."""
        return self.tmux.screen(self.pane)

    def snapshot(self) -> tuple[Screen, str]:
        """The pane now and the raw ``capture-pane -e`` text it was parsed from (a fixture)."""
        out = self.tmux.run(
            "display-message", "-p", "-t", self.pane, SCREEN_FORMAT,
            ";", "capture-pane", "-p", "-e", "-t", self.pane,
        ).stdout  # fmt: skip
        head, _, raw = out.partition("\n")
        x, y, width, height, mode, title = head.split(SEP, 5)
        screen = Screen.from_capture(
            raw, cursor_x=int(x), cursor_y=int(y), width=int(width), height=int(height),
            title=title, in_mode=mode == "1",
        )  # fmt: skip
        return screen, raw

    def read(self) -> tuple[Screen, Reading]:
        """The pane now and what the Claude Code adapter makes of it."""
        screen = self.screen()
        return screen, self.ui.read(screen)

    def wait(
        self, predicate: t.Callable[[Screen], bool], what: str, timeout: float = 60.0
    ) -> Screen:
        """Poll the screen every 50 ms until *predicate* holds; return that screen.

        Raises
        ------
        WaitFailed
            After *timeout* seconds, with *what* and the last screen seen.
        """
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                reading = self.ui.read(screen)
                msg = f"waited {timeout}s for {what}; last {reading}:\n{show(screen)}"
                raise WaitFailed(msg)
            time.sleep(0.05)

    def wait_for(
        self, condition: Condition, timeout: float = 60.0, *, empty: bool = True
    ) -> Screen:
        """Wait until the adapter reads *condition* (and, when *empty*, an empty input box)."""

        def holds(screen: Screen) -> bool:
            reading = self.ui.read(screen)
            return reading.condition is condition and (not empty or reading.input in ("", None))

        return self.wait(holds, f"condition {condition.value}", timeout)

    def wait_text(self, text: str, timeout: float = 60.0) -> Screen:
        """Wait until *text* is somewhere on the screen."""
        return self.wait(lambda s: text in s.text(), repr(text), timeout)

    # -- typing like a person ---------------------------------------------------

    def type(self, text: str) -> None:
        """Type *text* literally (no Enter)."""
        self.tmux.send_literal(self.pane, text)

    def keys(self, *keys: str) -> None:
        """Press named keys (``Enter``, ``Escape``, ``C-u``)."""
        self.tmux.send_key(self.pane, *keys)

    def input(self) -> str | None:
        """The input box's text as the adapter reads it now."""
        return self.ui.read(self.screen()).input

    def wait_input(self, text: str, timeout: float = 30.0) -> Screen:
        """Wait until the input box holds exactly *text*."""
        return self.wait(lambda s: self.ui.read(s).input == text, f"input box {text!r}", timeout)

    def submit(self, text: str, timeout: float = 60.0) -> None:
        """Type *text* as a person, wait for its echo, press Enter, wait until the API has it."""
        before = len(self.api.user_turns())
        self.type(text)
        self.wait_input(text)
        self.keys("Enter")
        self.api.wait_for(lambda a: len(a.user_turns()) > before, timeout, f"turn {text!r}")

    # -- tear-down --------------------------------------------------------------

    def descendants(self) -> list[int]:
        """The pane's process and every process below it, by /proc."""
        children: dict[int, list[int]] = {}
        for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rpartition(")")[2].split()
                children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = [], [self.pid] if self.pid else []
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def stop(self) -> None:
        """Kill the tmux server and every process the agent started; wait for them."""
        pids = self.descendants()
        with contextlib.suppress(Exception):
            self.tmux.run("kill-server")
        deadline = time.monotonic() + 5
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._server is not None:
            try:
                self._server.wait(5)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait(5)
        with contextlib.suppress(OSError):
            (pathlib.Path("/tmp") / f"tmux-{os.geteuid()}" / self.tmux.socket).unlink()


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def show(screen: Screen) -> str:
    """A screen for a failure message: numbered rows, the cursor marked, the title."""
    rows = [f"cursor=({screen.cursor_x},{screen.cursor_y}) title={screen.title!r}"]
    for y, line in enumerate(screen.lines):
        if line.strip() or y == screen.cursor_y:
            mark = ">" if y == screen.cursor_y else " "
            rows.append(f"{y:3}{mark}|{line}")
    return "\n".join(rows)


# -- captured screens as fixtures ----------------------------------------------

SCREENS = REPO / "tests" / "screens"


def dump_screen(screen: Screen, raw: str) -> str:
    """A fixture file: one JSON header line, then the raw ``capture-pane -e`` text."""
    head = {
        "cursor": [screen.cursor_x, screen.cursor_y],
        "size": [screen.width, screen.height],
        "title": screen.title,
        "in_mode": screen.in_mode,
    }
    return "# " + json.dumps(head, ensure_ascii=False) + "\n" + raw


def load_screen(path: pathlib.Path) -> Screen:
    """Read a fixture written by :func:`dump_screen`."""
    head, _, raw = path.read_text().partition("\n")
    meta = json.loads(head.removeprefix("# "))
    return Screen.from_capture(
        raw,
        cursor_x=meta["cursor"][0],
        cursor_y=meta["cursor"][1],
        width=meta["size"][0],
        height=meta["size"][1],
        title=meta.get("title", ""),
        in_mode=meta.get("in_mode", False),
    )
