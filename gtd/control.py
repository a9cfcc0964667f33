"""One persistent tmux control-mode client (``tmux -C``) that carries many commands.

A tmux client process per command costs about 2.5 ms of CPU and a few ms of wall
time (exec, dynamic linking, connect); a command written to a control client
costs about 0.02 ms of gtd's CPU and 0.2 ms of wall time. The server reads the
client's stdin and writes its stdout directly (the client passes the descriptors
over), so the client process itself sleeps, and nothing wakes gtd while it does
not ask: notifications wait in the pipe until the next command drains them.

A control client must be attached to a session, and a session with a client
attached shows ``(attached)`` in ``tmux ls``. So gtd attaches to a session of its
own, :data:`SESSION`, never to an agent's or a person's: ``tmux ls`` stays true
(an agent's session is not marked attached when no one is), a person's bare
``tmux attach``, which prefers unattached sessions, never lands in it, and no
person's session changes. The session has ``status off`` (no status timer in the
server), one dead pane that says what it is, and a ``client-detached`` hook that
kills it, so it goes when its client goes, also when gtd is killed with SIGKILL.
(Not ``destroy-unattached``: every tmux release so far crashes when that option
destroys a session that a client on its way out still points to, tmux GitHub
issue 5497, and an exiting control client is just that; seen here with 3.3a.)
The client has the flags ``ignore-size,no-output``: it never sets a size (no
window is resized for it) and receives no pane output.

Every command has a deadline, and a frozen server costs one timeout per call, as
a one-shot client would (:class:`ControlClient` says why the client is kept, not
killed). When the session or the server goes away the client exits, and the next
command connects again (and gets the same "no server running" error a one-shot
client gets).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import time
import typing as t

from gtd import proc
from gtd.exc import CommandTimeout
from gtd.proc import Result

logger = logging.getLogger(__name__)

SESSION = "gtd-control"
"""The session gtd's control client attaches to (never an agent's or a person's)."""
FLAGS = "ignore-size,no-output"
"""Client flags (tmux 3.2+): no size of its own, no ``%output`` notifications."""
NOTICE = "gtd's tmux control connection (tmux -C): gtd makes this session again if it is killed"
"""What the session's one (dead) pane shows a person who looks."""


class Unavailable(Exception):
    """The control client could not connect; *result* is what the client said on exit."""

    def __init__(self, result: Result) -> None:
        self.result = result
        super().__init__(result.stderr.strip() or f"exit status {result.returncode}")


class _Gone(Exception):
    """The client exited (end of file on its stdout, or its stdin closed)."""

    def __init__(self, *, began: bool) -> None:
        super().__init__("tmux control client exited")
        self.began = began
        """Whether the command being read had begun (then it may have run)."""


def split_commands(args: t.Sequence[str]) -> list[list[str]]:
    r"""Split a tmux argv into commands exactly as tmux's ``cmd_parse_from_arguments`` does.

    An argument ending in ``;`` ends a command (the ``;`` is dropped); one ending in
    ``\;`` is literal and ends in ``;``.

    >>> split_commands(["a", "-x", ";", "b", "c;", "d", "e\\;"])
    [['a', '-x'], ['b', 'c'], ['d', 'e;']]
    """
    commands: list[list[str]] = []
    current: list[str] = []
    for arg in args:
        end = False
        value = arg
        if value.endswith(";"):
            value = value[:-1]
            if value.endswith("\\"):
                value = value[:-1] + ";"
            else:
                end = True
        if not end or value:
            current.append(value)
        if end:
            commands.append(current)
            current = []
    if current:
        commands.append(current)
    return commands


def quote(value: str) -> str:
    r"""Quote *value* as one argument for tmux's command parser (what a control client reads).

    Single quotes stop every expansion (``~``, ``$``, ``\``); a single quote or a
    newline, which cannot go inside them, goes in double quotes next to them.

    >>> print(quote("it's ~ $HOME"), quote("a\nb"), quote(""))
    'it'"'"'s ~ $HOME' 'a'"\n"'b' ''
    """
    return "'" + value.replace("'", "'\"'\"'").replace("\n", "'\"\\n\"'") + "'"


def command_line(commands: t.Sequence[t.Sequence[str]]) -> bytes:
    """One control-mode input line running *commands* in order (a failure stops the rest)."""
    text = " ; ".join(" ".join(quote(a) for a in command) for command in commands)
    return text.encode("utf-8", "surrogateescape") + b"\n"


class ControlClient:
    """A ``tmux -C`` client attached to :data:`SESSION`, (re)connected on demand.

    A client is never killed before it has finished connecting: tmux before 3.7
    (GitHub issue 4980) crashes the whole server when it sends a notification to a
    control client it has not finished setting up, and a client killed while
    the server is frozen is left in that state for good. So a call that times out
    leaves the client as it is, and the next call first waits (within its own
    timeout) for what the earlier one still owes: a frozen server makes every call
    time out, as before, and no second client is started while one is pending.

    Parameters
    ----------
    base_argv
        ``tmux -u -N [-L socket]``: ``-N`` so the client never starts a server.
    env
        The client's environment (what ``new-session`` hands on through
        ``update-environment``, as a one-shot client's would).
    session
        The session to attach to (made when missing).
    """

    def __init__(
        self, base_argv: t.Sequence[str], env: t.Mapping[str, str], session: str = SESSION
    ) -> None:
        self.base_argv = list(base_argv)
        self.env = dict(env)
        self.session = session
        self.connects = 0
        """How many client processes were started (one per connection)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._connected = False
        """The set-up commands finished: tmux has the client set up, so it may be killed."""
        self._owed = 0
        """Blocks still to come for the set-up (flag 0) or a command that timed out (flag 1)."""
        self._flag = b"1"
        self._unsent = b""
        """The tail of a command line a timed-out write could not hand over yet."""

    @property
    def pid(self) -> int | None:
        """The client process while it runs (connected or connecting), else None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def connected(self) -> bool:
        """Whether a client runs and has finished connecting."""
        return self._connected and self.pid is not None

    def connect_argv(self) -> list[str]:
        """The client's command line: attach to (or make) the session, then set it up."""
        target = f"={self.session}:"
        return [
            *self.base_argv, "-C",
            "new-session", "-A", "-s", self.session, "-n", "gtd", "-f", FLAGS,
            "--", "printf", "%s\\n", NOTICE,
            ";", "set-option", "-t", target, "status", "off",
            ";", "set-hook", "-t", target, "client-detached", f"kill-session -t ={self.session}",
            ";", "set-option", "-p", "-t", target, "remain-on-exit", "on",
        ]  # fmt: skip

    def run(self, args: t.Sequence[str], *, timeout: float) -> Result:
        """Run the tmux command(s) in *args* (``;`` separated, as on a command line).

        Returns what a one-shot ``tmux ARGS`` would: exit status 0 and the output of
        every command, or 1 and the error of the one that failed (those after it do
        not run). Connects first when needed, and once more when the client turns
        out to have exited before the command began.

        Raises
        ------
        Unavailable
            No client could connect (no server, or a tmux that refused the command line).
        gtd.exc.CommandTimeout
            No complete answer within *timeout* seconds (connecting included). The
            client is kept; the next call waits for the rest first.
        """
        deadline = time.monotonic() + timeout
        commands = split_commands(args)
        line = command_line(commands)
        argv = (*self.base_argv, "-C", *args)
        for attempt in (1, 2):
            self._settle(deadline, timeout)
            self._owed, self._flag = len(commands), b"1"
            try:
                self._write(line, deadline, timeout)
                blocks = self._read(deadline, timeout)
            except _Gone as gone:
                self._reap()
                if gone.began or attempt == 2:
                    return Result(argv, 1, "", "tmux control client exited during the command")
                continue
            if blocks.error is not None:
                # A one-shot client reports a parse error without the prefix.
                error = blocks.error.removeprefix("parse error: ")
                return Result(argv, 1, blocks.output, error)
            return Result(argv, 0, blocks.output, "")
        raise AssertionError  # pragma: no cover - the loop returns

    def close(self) -> None:
        """Detach (close stdin) and reap the client; idempotent, never raises.

        A client still connecting is left to finish and exit by itself (its stdin
        is closed), never killed.
        """
        child, connected = self._proc, self._connected
        self._proc, self._buf, self._connected, self._owed = None, b"", False, 0
        self._unsent = b""
        if child is None:
            return
        with contextlib.suppress(OSError):
            if child.stdin is not None:
                child.stdin.close()
        if connected:
            try:
                child.wait(1.0)
            except subprocess.TimeoutExpired:
                proc.kill_group(child)
        _close_pipes(child)

    # -- internals --------------------------------------------------------------------

    def _settle(self, deadline: float, timeout: float) -> None:
        """Have a connected client with nothing owed: connect, or read what is still due.

        Raises
        ------
        Unavailable
            The client exited before it finished connecting (its stderr says why).
        gtd.exc.CommandTimeout
            Still connecting or still owed blocks at *deadline*; the client is kept.
        """
        if self._proc is not None and self._proc.poll() is not None and not self._owed:
            self._reap()  # exited between calls (its session or server went away)
        if self._proc is None:
            self._spawn()
        if not self._owed:
            return
        for attempt in (1, 2, 3):
            try:
                if self._unsent:
                    self._write(self._unsent, deadline, timeout)
                blocks = self._read(deadline, timeout)
                break
            except _Gone:
                was_connected = self._connected
                result = self._reap()
                # Exit status 0: detached, as when its session was killed meanwhile (the
                # hook of a client that just went): connect again. Else tmux said why.
                if (not was_connected and result.returncode != 0) or attempt == 3:
                    raise Unavailable(result) from None
                self._spawn()
        if not self._connected:
            if blocks.error is not None:
                self.close()
                raise Unavailable(Result(tuple(self.connect_argv()), 1, "", blocks.error))
            self._connected = True
            logger.debug(
                "tmux control client %d attached to %s", self.pid, self.session,
                extra={"GTD_TMUX_CONTROL_PID": self.pid},
            )  # fmt: skip

    def _spawn(self) -> None:
        self._buf, self._connected = b"", False
        self._owed, self._flag = 4, b"0"  # new-session, two set-option, set-hook
        self._proc = proc.spawn(self.connect_argv(), env=self.env)
        self.connects += 1

    def _write(self, data: bytes, deadline: float, timeout: float) -> None:
        """Hand *data* to the client; what is left at *deadline* goes first next time."""
        fd = self._fd("stdin")
        self._unsent = data
        while self._unsent:
            try:
                n = os.write(fd, self._unsent)
            except BlockingIOError:
                n = 0
            except BrokenPipeError:
                raise _Gone(began=False) from None
            self._unsent = self._unsent[n:]
            if self._unsent and not select.select([], [fd], [], self._left(deadline, timeout))[1]:
                raise CommandTimeout(self.connect_argv(), timeout)

    def _read(self, deadline: float, timeout: float) -> _Blocks:
        """Read until the blocks owed (of flag ``_flag``) arrived, or one of them failed.

        Notifications and blocks of other flags (hooks run with flag 0) are skipped.

        Raises
        ------
        _Gone
            End of file: the client exited.
        gtd.exc.CommandTimeout
            *deadline* passed; what is still owed stays owed.
        """
        fd = self._fd("stdout")
        out: list[bytes] = []
        began = False
        while True:
            while self._owed:
                head, sep, rest = self._buf.partition(b"\n")
                if not sep:
                    break
                if not head.startswith(b"%begin "):
                    self._buf = rest  # a notification (or %exit): not asked for
                    continue
                guard = head[len(b"%begin ") :]
                mine = guard.endswith(b" " + self._flag)
                began = began or mine
                body, end = _find_end(rest, guard)
                if end < 0:
                    break  # the block is not complete yet
                self._buf = rest[end:].partition(b"\n")[2]
                if not mine:
                    continue
                if rest[end:].startswith(b"%error"):
                    self._owed = 0  # tmux drops the commands after a failed one
                    return _Blocks(_text(out), _text([body]) or "unknown error")
                out.append(body)
                self._owed -= 1
            if not self._owed:
                return _Blocks(_text(out), None)
            if not select.select([fd], [], [], self._left(deadline, timeout))[0]:
                raise CommandTimeout(self.connect_argv(), timeout)
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise _Gone(began=began)
            self._buf += chunk

    def _fd(self, which: t.Literal["stdin", "stdout"]) -> int:
        """Our end of the client's stdin or stdout; _Gone when there is no client."""
        pipe = None if self._proc is None else getattr(self._proc, which)
        if pipe is None:
            raise _Gone(began=False)
        return int(pipe.fileno())

    def _left(self, deadline: float, timeout: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CommandTimeout(self.connect_argv(), timeout)
        return left

    def _reap(self) -> Result:
        """Collect an exited (or exiting) client: its exit status and stderr."""
        child, connected = self._proc, self._connected
        self._proc, self._buf, self._connected, self._owed = None, b"", False, 0
        self._unsent = b""
        if child is None:
            return Result(tuple(self.connect_argv()), 1, "", "")
        try:
            code = child.wait(1.0)
        except subprocess.TimeoutExpired:
            if connected:
                proc.kill_group(child)
            code = -1
        err = b""
        with contextlib.suppress(OSError, ValueError):
            if child.stderr is not None and code != -1:
                err = child.stderr.read() or b""
        _close_pipes(child)
        return Result(tuple(self.connect_argv()), code, "", err.decode(errors="replace"))


def _close_pipes(child: subprocess.Popen[bytes]) -> None:
    for pipe in (child.stdin, child.stdout, child.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


class _Blocks(t.NamedTuple):
    output: str
    error: str | None


def _find_end(data: bytes, guard: bytes) -> tuple[bytes, int]:
    r"""The body of a block whose ``%begin`` line is behind, and where its end line starts.

    The end is ``%end GUARD`` or ``%error GUARD`` on a line of its own; -1 when it
    has not arrived yet. Output lines that merely look like guards do not match, as
    the guard holds the command's time and number.

    >>> _find_end(b"x\n%end 1 2 1\nrest", b"1 2 1")
    (b'x\n', 2)
    >>> _find_end(b"%error 1 2 1\n", b"1 2 1"), _find_end(b"x\n%end 1 2", b"1 2 1")[1]
    ((b'', 0), -1)
    """
    best = -1
    for kind in (b"%end ", b"%error "):
        marker = kind + guard + b"\n"
        if data.startswith(marker):
            return b"", 0
        at = data.find(b"\n" + marker)
        if at >= 0 and (best < 0 or at < best):
            best = at
    if best < 0:
        return b"", -1
    return data[: best + 1], best + 1


def _text(parts: t.Sequence[bytes]) -> str:
    """Block bodies as the text a one-shot client prints (each line ends in a newline)."""
    return b"".join(parts).decode("utf-8", "replace")
