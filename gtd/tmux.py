"""The tmux boundary: the only place gtd runs tmux, every call bounded by a timeout.

libtmux is the model (``common.py tmux_cmd``, ``neo.py`` format parsing) but not the
engine: its ``tmux_cmd`` waits on ``communicate()`` with no timeout, and a frozen
tmux server would then stall the daemon's loop and its watchdog ping. So calls go
through :meth:`Tmux.run`, which adds ``-N`` (never start a server: the server lives
in ``gastown-tmux.service``, not in the daemon's cgroup), ``-u`` (format output is
UTF-8 whatever the locale, so the field separator survives) and ``timeout=``.

Two transports behind the same :meth:`Tmux.run`: a tmux process per call (the
CLI's few calls), or, with ``control=True`` (the daemon), the commands of one
persistent control-mode client (:class:`~gtd.control.ControlClient`), which falls back to a process
per call for a while when it cannot connect for another reason than a missing
server.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
import typing as t

from gtd.control import SESSION as CONTROL_SESSION
from gtd.control import ControlClient, Unavailable
from gtd.environment import which
from gtd.exc import CommandTimeout, NoServer, TmuxError, TmuxNotFound, TmuxTimeout
from gtd.proc import Result
from gtd.proc import run as run_bounded
from gtd.screen import Screen

logger = logging.getLogger(__name__)

SEP = "\u241e"
"""Field separator in ``-F`` formats (SYMBOL FOR RECORD SEPARATOR), as libtmux's."""

PANE_FIELDS = (
    "session_name",
    "pane_id",
    "pane_pid",
    "pane_dead",
    "@gtd_agent",
    "pane_current_command",
)
PANE_FORMAT = SEP.join(f"#{{{f}}}" for f in PANE_FIELDS)

SCREEN_FIELDS = ("cursor_x", "cursor_y", "pane_width", "pane_height", "pane_in_mode", "pane_title")
SCREEN_FORMAT = SEP.join(f"#{{{f}}}" for f in SCREEN_FIELDS)

DEFAULT_TIMEOUT = 5.0
CONTROL_RETRY = 300.0
"""Seconds a control client that could not connect is left alone (calls spawn meanwhile)."""

# Variables of the caller that must not reach tmux (and through it, agents).
CLIENT_ENV_DROP = frozenset(
    {"TMUX", "TMUX_PANE", "GT_ROLE", "GT_RIG", "GT_CREW", "GT_POLECAT", "GT_SESSION", "BD_ACTOR"}
)

_NO_SERVER_MARKERS = ("no server running", "error connecting to", "server exited unexpectedly")


@dataclasses.dataclass(frozen=True, slots=True)
class PaneInfo:
    """One pane as ``list-panes -a`` reports it."""

    session_name: str
    pane_id: str
    pane_pid: int
    dead: bool
    agent: str
    """The identity gtd started in this pane (pane option ``@gtd_agent``), or ``""``."""
    current_command: str


def _one_pane(stdout: str, problem: str, subcommand: str) -> PaneInfo:
    """The pane a ``display-message -F PANE_FORMAT`` printed; TmuxError(*problem*) if none."""
    panes = parse_panes(stdout)
    if not panes:
        raise TmuxError(problem, subcommand=subcommand)
    return panes[0]


def parse_panes(stdout: str, prefix: str = "") -> list[PaneInfo]:
    r"""Parse ``list-panes -a -F PANE_FORMAT`` output; lines that do not fit are skipped.

    Only sessions whose name starts with *prefix* are read (the rest cost nothing).

    >>> [pane] = parse_panes("gt-deacon\u241e%1\u241e42\u241e0\u241edeacon\u241enode\n")
    >>> pane.pane_id, pane.pane_pid, pane.dead, pane.agent, pane.current_command
    ('%1', 42, False, 'deacon', 'node')
    >>> parse_panes("junk\n"), parse_panes("x\u241e%2\u241e7\u241e0\u241e\u241esh\n", "gt-")
    ([], [])
    """
    panes = []
    for line in stdout.splitlines():
        if not line.startswith(prefix):
            continue
        parts = line.split(SEP, len(PANE_FIELDS) - 1)
        if len(parts) != len(PANE_FIELDS) or not parts[2].isdigit():
            continue
        session, pane_id, pid, dead, agent, command = parts
        panes.append(PaneInfo(session, pane_id, int(pid), dead == "1", agent, command))
    return panes


def env_argv(env: t.Mapping[str, str], unset: t.Iterable[str], argv: t.Sequence[str]) -> list[str]:
    """Wrap *argv* in ``env -u ... K=V ... --`` so the process starts with exactly that.

    ``env`` execs the command, so the pane's PID is the agent's and its ``comm`` is
    the agent's name; it also guarantees more than one argument, which makes tmux exec
    directly instead of through a shell (no shell ever parses the agent command).

    >>> env_argv({"GT_ROLE": "deacon"}, ["GT_RIG"], ["claude", "-x"])
    ['env', '-u', 'GT_RIG', '--', 'GT_ROLE=deacon', 'claude', '-x']
    """
    out = ["env"]
    for name in sorted(unset):
        out += ["-u", name]
    out += ["--", *(f"{k}={v}" for k, v in sorted(env.items()))]
    return [_literal(a) for a in (*out, *argv)]


def _literal(arg: str) -> str:
    r"""Escape an argument so tmux's command parser does not take it as a ``;`` separator.

    >>> _literal("a;"), _literal("b")
    ('a\\;', 'b')
    """
    return arg[:-1] + "\\;" if arg.endswith(";") else arg


def client_env() -> dict[str, str]:
    """The environment of a tmux client: gtd's own, without what must not reach tmux."""
    return {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_DROP}


def _missing_target(err: TmuxError) -> bool:
    """Whether tmux said the target is not there.

    tmux 3.3 says "no current target" when no session exists at all.
    """
    return any(
        m in err.stderr for m in ("can't find session", "can't find pane", "no current target")
    )


class Tmux:
    """A tmux server, addressed by socket name (``""`` is the user's default server).

    Parameters
    ----------
    socket
        ``tmux -L`` name; ``""`` means the default server.
    timeout
        Seconds any one call may take before :class:`~gtd.exc.TmuxTimeout`.
    control
        Send the commands through one persistent control-mode client
        (:class:`gtd.control.ControlClient`) instead of a process per call;
        :meth:`close` ends it.
    """

    def __init__(
        self, socket: str = "", *, timeout: float = DEFAULT_TIMEOUT, control: bool = False
    ) -> None:
        self.socket = socket
        self.timeout = timeout
        self._binary: str | None = None
        self.calls: collections.Counter[str] = collections.Counter()
        """tmux commands run, by subcommand (the per-heartbeat work is measured by it)."""
        self.control = control
        self._client: ControlClient | None = None
        self._control_after = 0.0

    @property
    def binary(self) -> str:
        """The tmux binary, resolved once."""
        if self._binary is None:
            found = which("tmux", os.environ.get("PATH"))
            if found is None:
                raise TmuxNotFound from None
            self._binary = found
        return self._binary

    def base_argv(self) -> list[str]:
        """``tmux -u -N [-L socket]``: the prefix of every call."""
        argv = [self.binary, "-u", "-N"]
        if self.socket:
            argv += ["-L", self.socket]
        return argv

    def run(self, *args: str, timeout: float | None = None) -> Result:
        """Run one tmux command; raise on failure.

        Raises
        ------
        NoServer
            The server is not running (gtd never starts it from here).
        TmuxTimeout
            No answer within the timeout; the child is killed.
        TmuxError
            Any other non-zero exit, with tmux's stderr.
        """
        argv = (*self.base_argv(), *args)
        limit = self.timeout if timeout is None else timeout
        logger.debug("tmux %s", " ".join(args), extra={"GTD_TMUX_ARGV": " ".join(argv)})
        self.calls[args[0]] += 1
        try:
            proc = self._through_control(args, limit)
            if proc is None:
                proc = run_bounded(argv, timeout=limit, env=client_env())
        except CommandTimeout:
            raise TmuxTimeout(args[0], limit) from None
        if proc.returncode != 0:
            stderr = proc.stderr.strip() or f"exit status {proc.returncode}"
            if any(m in stderr for m in _NO_SERVER_MARKERS):
                raise NoServer(stderr, subcommand=args[0])
            raise TmuxError(stderr, subcommand=args[0])
        return proc

    def _through_control(self, args: t.Sequence[str], limit: float) -> Result | None:
        """Run *args* on the control client; None when it cannot serve (spawn instead)."""
        if not self.control or time.monotonic() < self._control_after:
            return None
        if self._client is None:
            self._client = ControlClient(self.base_argv(), client_env())
        try:
            return self._client.run(args, timeout=limit)
        except Unavailable as err:
            if any(m in err.result.stderr for m in _NO_SERVER_MARKERS):
                return err.result  # the same "no server" a one-shot client reports
            self._control_after = time.monotonic() + CONTROL_RETRY
            logger.warning(
                "tmux control client unavailable (%s); one tmux process per call for %gs",
                err, CONTROL_RETRY,
            )  # fmt: skip
            return None

    def close(self) -> None:
        """End the control client, if one runs (its session goes with it); idempotent."""
        if self._client is not None:
            self._client.close()

    # -- probes and listings -------------------------------------------------

    def server_running(self) -> bool:
        """Whether the server answers (a frozen server raises TmuxTimeout instead)."""
        try:
            self.run("list-sessions", "-F", "#{session_name}")
        except NoServer:
            return False
        except TmuxTimeout:
            raise
        except TmuxError as err:
            # A live server with no sessions is still a server (exit-empty off).
            return "no sessions" in err.stderr
        return True

    def list_panes(self, *, missing_ok: bool = True, prefix: str = "") -> list[PaneInfo]:
        """Every pane of every session in one call; ``[]`` when no server runs.

        The panes of gtd's own control session are left out, and with *prefix*
        those of sessions whose names do not start with it (the agents' ``gt-``:
        a server with 1,000 other sessions then costs the parse of none of them).
        With *missing_ok* false a missing server raises :class:`NoServer` instead,
        so one call tells "no server" from "no sessions".
        """
        try:
            result = self.run("list-panes", "-a", "-F", PANE_FORMAT)
        except NoServer:
            if not missing_ok:
                raise
            return []
        except TmuxError as err:
            # tmux 3.3 says "no current target" for -a on a server without sessions.
            if "no sessions" in err.stderr or "no current target" in err.stderr:
                return []
            raise
        panes = parse_panes(result.stdout, prefix)
        return [p for p in panes if p.session_name != CONTROL_SESSION]

    def pane(self, target: str) -> PaneInfo:
        """One pane (or a session's active pane) by target."""
        result = self.run("display-message", "-p", "-t", target, "-F", PANE_FORMAT)
        return _one_pane(result.stdout, f"can't find pane: {target}", "display-message")

    # -- spawning ------------------------------------------------------------

    def new_session(
        self,
        name: str,
        *,
        cwd: str,
        env: t.Mapping[str, str],
        argv: t.Sequence[str],
        tag: str = "",
    ) -> PaneInfo:
        """Create a detached session whose one pane runs *argv* with *env*.

        ``-e`` also puts the variables in the session environment, so a pane a person
        opens there has them. ``remain-on-exit`` is set in the same invocation, before
        the server can reap the child, so a dead agent leaves its pane for
        ``respawn-pane`` and the person's other panes stay put.
        """
        env_flags = [x for k, v in sorted(env.items()) for x in ("-e", f"{k}={v}")]
        result = self.run(
            "new-session", "-d", "-s", name, "-c", cwd, "-x", "200", "-y", "50",
            "-P", "-F", PANE_FORMAT, *env_flags, "--", *argv,
            ";", "set-option", "-p", "-t", f"={name}:", "remain-on-exit", "on",
            ";", "set-option", "-p", "-t", f"={name}:", "@gtd_agent", tag,
        )  # fmt: skip
        panes = parse_panes(result.stdout)
        if not panes:
            msg = f"no pane reported for new session {name}: {result.stdout!r}"
            raise TmuxError(msg, subcommand="new-session")
        return panes[0]

    def respawn_pane(
        self,
        pane_id: str,
        *,
        cwd: str,
        env: t.Mapping[str, str],
        argv: t.Sequence[str],
        tag: str = "",
    ) -> PaneInfo:
        """Kill whatever runs in *pane_id* and start *argv* there; other panes untouched.

        The new pane's facts come back from the same invocation (one round trip).
        """
        env_flags = [x for k, v in sorted(env.items()) for x in ("-e", f"{k}={v}")]
        result = self.run(
            "respawn-pane", "-k", "-t", pane_id, "-c", cwd, *env_flags, "--", *argv,
            ";", "set-option", "-p", "-t", pane_id, "remain-on-exit", "on",
            ";", "set-option", "-p", "-t", pane_id, "@gtd_agent", tag,
            ";", "display-message", "-p", "-t", pane_id, "-F", PANE_FORMAT,
        )  # fmt: skip
        problem = f"no pane reported after respawning {pane_id}: {result.stdout!r}"
        return _one_pane(result.stdout, problem, "respawn-pane")

    def kill_session(self, name: str) -> None:
        """Kill a session by exact name; a missing session is not an error."""
        try:
            self.run("kill-session", "-t", f"={name}")
        except NoServer:
            return
        except TmuxError as err:
            if not _missing_target(err):
                raise

    def kill_pane(self, pane_id: str) -> None:
        """Kill one pane; a missing pane is not an error."""
        try:
            self.run("kill-pane", "-t", pane_id)
        except NoServer:
            return
        except TmuxError as err:
            if not _missing_target(err):
                raise

    # -- typing into panes ---------------------------------------------------

    def send_literal(self, target: str, text: str) -> None:
        """Type *text* literally (``send-keys -l``), no Enter."""
        self.run("send-keys", "-t", target, "-l", "--", _literal(text))

    def send_key(self, target: str, *keys: str) -> None:
        """Send named keys (``Enter``, ``C-u``)."""
        self.run("send-keys", "-t", target, *keys)

    def screen(self, target: str) -> Screen:
        """What the pane shows (text, faint cells, cursor, title, copy mode), in one call.

        One invocation runs ``display-message`` and ``capture-pane -e``, so the cursor
        and the text are from the same moment.

        Raises
        ------
        gtd.exc.TmuxError
            tmux refused (no such pane) or answered something unreadable.
        """
        out = self.run(
            "display-message", "-p", "-t", target, SCREEN_FORMAT,
            ";", "capture-pane", "-p", "-e", "-t", target,
        ).stdout  # fmt: skip
        head, _, capture = out.partition("\n")
        fields = head.split(SEP, len(SCREEN_FIELDS) - 1)
        numbers = fields[:5]
        if len(fields) != len(SCREEN_FIELDS) or not all(f.isdigit() for f in numbers):
            msg = f"no screen geometry for {target}: {head!r}"
            raise TmuxError(msg, subcommand="display-message")
        x, y, width, height, mode = map(int, numbers)
        return Screen.from_capture(
            capture, cursor_x=x, cursor_y=y, width=width, height=height,
            title=fields[5], in_mode=bool(mode),
        )  # fmt: skip

    def cursor_line(self, target: str) -> str:
        """The text of the line the cursor is on, trailing blanks stripped (one tmux call)."""
        shown = self.screen(target)
        return shown.line(shown.cursor_y).rstrip()
