"""Run the real Claude Code in tmux against the stand-in API, as an unprivileged user.

The pinned version is installed by ``scripts/claude-code`` (the one place its number
is written; :data:`VERSION` reads it there). Each :class:`RealAgent` gets its own
HOME and workdir under the test user's home, its own tmux server (root's, on a
private socket, so :class:`gtd.tmux.Tmux` reaches it as the daemon would), and runs
``setpriv --reuid USER ... env -i ... claude --dangerously-skip-permissions`` as the
pane's command: ``setpriv`` and ``env`` exec, so the pane's process is Claude Code.
With ``user_server=True`` the tmux server is the test user's instead (reached through
:class:`UserTmux`), for ``gtd run`` to drive as that user (:mod:`tests.realagent.gtdrun`).
:meth:`RealAgent.stop` ends the tmux server and every process that descends from
its panes, by pid, and waits for them.
"""

from __future__ import annotations

import collections
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
from tests.sandbox import default_user, wait_or_kill

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
NATIVE = PACKAGE / "claude-code-linux-x64" / "claude"
"""The native binary as its platform package installs it (``bin/claude.exe`` is its copy)."""
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


def require_real_agent() -> None:
    """Skip, loudly, where Claude Code cannot run; fail instead when it is required.

    Raises
    ------
    pytest.skip.Exception, pytest.fail.Exception
        Through :func:`pytest.skip` or, with ``GTD_REQUIRE_REAL_AGENT=1``, :func:`pytest.fail`.
    """
    import pytest

    reasons = unavailable()
    if not reasons:
        return
    text = f"real Claude Code {VERSION} cannot run here: " + "; ".join(reasons)
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{text} ({REQUIRE_ENV}=1 requires it)")
    pytest.skip(text)


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


def first_run_config(
    options: Options, trusted: t.Iterable[pathlib.Path | str] = ()
) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
    """``~/.claude.json`` and ``~/.claude/settings.json`` that answer the first-run screens.

    *trusted* workdirs get the folder-trust answer (when ``options.trusted``).
    """
    config: dict[str, t.Any] = {
        "numStartups": 1,
        "autoUpdates": False,
        "customApiKeyResponses": {"approved": [API_KEY[-20:]], "rejected": []},
        "projects": {},
    }
    if options.onboarded:
        config |= {
            "hasCompletedOnboarding": True,
            "lastOnboardingVersion": VERSION,
            "theme": "dark",
        }
    if options.bypass_accepted:
        config["bypassPermissionsModeAccepted"] = True
    if options.trusted:
        for workdir in trusted:
            config["projects"][str(workdir)] = {
                "hasTrustDialogAccepted": True,
                "hasCompletedProjectOnboarding": True,
            }
    settings = {"skipDangerousModePermissionPrompt": True} if options.bypass_accepted else {}
    return config, settings


def api_env(api_url: str, login: str = "key") -> dict[str, str]:
    """What the agent environment file holds for Claude Code: the stand-in, a login, offline.

    *login* is ``"key"``, ``"oauth"`` (a subscription token) or ``"none"``.
    """
    env = {
        "ANTHROPIC_BASE_URL": api_url,
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }
    if login == "key":
        env["ANTHROPIC_API_KEY"] = API_KEY
    elif login == "oauth":
        env["CLAUDE_CODE_OAUTH_TOKEN"] = OAUTH_TOKEN
        env["CLAUDE_CODE_SUBSCRIPTION_TYPE"] = "max"
    return env


class UserTmux(Tmux):
    """A tmux server that runs as *pw*'s user, reached as that user.

    tmux keeps a server's socket under ``/tmp/tmux-<uid>/``, so root's client cannot
    find the user's server by its ``-L`` name; every call goes through ``setpriv``.
    """

    def __init__(self, socket: str, pw: pwd.struct_passwd, *, timeout: float = 10.0) -> None:
        super().__init__(socket, timeout=timeout)
        self.pw = pw

    def base_argv(self) -> list[str]:
        """``setpriv --reuid ... tmux -u -N -L socket``."""
        setpriv = shutil.which("setpriv") or "setpriv"
        return [
            setpriv, f"--reuid={self.pw.pw_uid}", f"--regid={self.pw.pw_gid}", "--init-groups",
            "--", *super().base_argv(),
        ]  # fmt: skip


class WaitFailed(AssertionError):
    """A wait on the agent's screen ran out; the message shows what was seen last."""


class RealAgent:
    """One Claude Code in its own tmux server, talking to *api*."""

    def __init__(
        self,
        api: FakeAPI,
        base: pathlib.Path,
        options: Options | None = None,
        *,
        user: str = USER,
        workdir: pathlib.Path | None = None,
        user_server: bool = False,
    ) -> None:
        self.api = api
        self.options = options or Options()
        self.pw = ensure_user(user)
        self.base = base
        self.home = base / "home"
        self.workdir = workdir or base / "work"
        self._make_workdir = workdir is None
        """Only the default workdir is made here (gtd makes the deacon's itself)."""
        socket = f"gtd_real_{secrets.token_hex(4)}"
        self.tmux = UserTmux(socket, self.pw) if user_server else Tmux(socket, timeout=10.0)
        """The agent's tmux server: root's, or with *user_server* the test user's."""
        self.ui = ClaudeCode()
        self.pane = ""
        self.pid = 0
        self._server: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    # -- set-up ---------------------------------------------------------------

    def prepare(self) -> None:
        """Write the user's first-run answers (as the doc of claude-code-offline lists)."""
        for d in (self.base, self.home, self.home / ".claude"):
            d.mkdir(parents=True, exist_ok=True)
        if self._make_workdir:
            self.workdir.mkdir(parents=True, exist_ok=True)
        config, settings = first_run_config(self.options, [self.workdir])
        (self.home / ".claude.json").write_text(json.dumps(config, indent=2))
        (self.home / ".claude" / "settings.json").write_text(json.dumps(settings))
        self.chown()

    def chown(self) -> None:
        """Give everything under :attr:`base` to the test user."""
        for path in (self.base, *self.base.rglob("*")):
            os.chown(path, self.pw.pw_uid, self.pw.pw_gid, follow_symlinks=False)

    def session_env(self) -> dict[str, str]:
        """What a login gives the user: HOME, USER, PATH, SHELL (and ``LANG`` if set)."""
        env = {
            "HOME": str(self.home),
            "USER": self.pw.pw_name,
            "LOGNAME": self.pw.pw_name,
            "PATH": PATH,
            "SHELL": "/bin/bash",
        }
        if self.options.lang:
            env["LANG"] = self.options.lang
        return env

    def env(self) -> dict[str, str]:
        """Claude Code's whole environment: offline, pointed at the stand-in."""
        return self.session_env() | {"TERM": "screen"} | api_env(self.api.url, self.options.login)

    def argv(self) -> list[str]:
        """The pane's command: drop to the user, a clean environment, then Claude Code."""
        program = list(self.options.command) or [str(BINARY)]
        return as_user(self.pw, self.env(), [*program, *self.options.args])

    def start(self, *, prepare: bool = True) -> None:
        """Prepare the home (unless told not to), start tmux and the agent (no waiting)."""
        if prepare:
            self.prepare()
        self.start_server(
            ["tmux", "-L", self.tmux.socket, "-f", "/dev/null", "-D"],
            {"PATH": PATH, "HOME": "/root"}
            | ({"LANG": self.options.lang} if self.options.lang else {}),
        )
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

    def start_server(self, argv: list[str], env: dict[str, str]) -> None:
        """Start the tmux server with *argv* (in the foreground, ``-D``) and wait until it answers.

        With a :class:`UserTmux` it runs as the test user, with exactly *env*.
        """
        if isinstance(self.tmux, UserTmux):
            argv = as_user(self.pw, env, argv)
        self._server = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.home if self.home.is_dir() else "/",
            env=env,
        )
        deadline = time.monotonic() + 10
        while not self.tmux.server_running():
            if time.monotonic() > deadline or self._server.poll() is not None:
                msg = f"tmux server {self.tmux.socket} did not start: {argv}"
                raise WaitFailed(msg)
            time.sleep(0.02)

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
        """Every pane's process (the agent's first) and every process below them, by /proc."""
        roots = [self.pid] if self.pid else []
        with contextlib.suppress(Exception):
            roots += [p.pane_pid for p in self.tmux.list_panes() if p.pane_pid not in roots]
        return descendants(roots)

    def stop(self) -> None:
        """Kill the tmux server and every process in its panes; wait for them."""
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
            wait_or_kill(self._server)
        uid = self.pw.pw_uid if isinstance(self.tmux, UserTmux) else os.geteuid()
        with contextlib.suppress(OSError):
            (pathlib.Path("/tmp") / f"tmux-{uid}" / self.tmux.socket).unlink()


def as_user(pw: pwd.struct_passwd, env: t.Mapping[str, str], argv: t.Sequence[str]) -> list[str]:
    """*argv* run as *pw*'s user with exactly *env* (``setpriv`` and ``env -i`` both exec)."""
    return [
        "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
        "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv,
    ]  # fmt: skip


def descendants(roots: t.Iterable[int]) -> list[int]:
    """*roots* and every process below them, by /proc, breadth first (parents first)."""
    children: dict[int, list[int]] = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], collections.deque(roots)
    while todo:
        pid = todo.popleft()
        found.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return found


def claude_code_pid(root: int) -> int | None:
    """The topmost process under *root* (itself included) that is Claude Code.

    Known by its binary (whatever name it was started by), or node running the npm
    wrapper; never by gtd's judgement of names.
    """
    binaries = {(st.st_dev, st.st_ino) for st in (NATIVE.stat(), BINARY.stat())}
    for pid in descendants([root]):
        try:
            exe = pathlib.Path(f"/proc/{pid}/exe")
            st = exe.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in binaries or exe.resolve().name == "node":
            return pid
    return None


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
