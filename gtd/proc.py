"""Every subprocess gtd runs: bounded in time, its whole process group killed on timeout.

Children start with SIGUSR1 and SIGHUP ignored (a disposition that survives
exec), because ``systemctl --user kill -s USR1 gastown-daemon`` signals every
process in the daemon's cgroup, and a tmux client or ``git fetch`` that happens
to be running must not die of it.

The child is started through GNU ``env --ignore-signal`` (coreutils 8.31+), which
sets that disposition and execs the command: the daemon is then spawned from with
``vfork``, at half the CPU of forking the whole Python process to run a Python
``preexec_fn`` (about 1.5 ms against 3 ms a spawn here). Where ``env`` cannot do it
(busybox, older coreutils), the ``preexec_fn`` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import signal
import subprocess
import typing as t

from gtd.environment import which
from gtd.exc import CommandTimeout


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """What a finished command returned."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


CONTROL_SIGNALS = (signal.SIGUSR1, signal.SIGHUP)
IGNORE = ("--ignore-signal=HUP", "--ignore-signal=USR1")
BLOCK = ("--block-signal=HUP", "--block-signal=USR1")


def _child_setup() -> None:
    """Run in the child between fork and exec: ignore the daemon's control signals."""
    for sig in CONTROL_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _held_child_setup() -> None:
    """Ignore and block the control signals: for a child that installs its own handlers.

    tmux handles SIGHUP (a client exits on it) whatever it inherited; a blocked
    signal stays pending and is never delivered, as tmux never unblocks it.
    """
    _child_setup()
    signal.pthread_sigmask(signal.SIG_BLOCK, CONTROL_SIGNALS)


@functools.cache
def signal_env() -> str | None:
    """An ``env`` that can start a command with signals ignored and blocked, or None.

    Asked once per process (one ``env ... true``, about 2 ms).
    """
    found = which("env", os.defpath)
    if found is None:
        return None
    try:
        done = subprocess.run(
            [found, *IGNORE, *BLOCK, "--", "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found if done.returncode == 0 else None


def _argv(argv: t.Sequence[str], flags: t.Sequence[str]) -> tuple[list[str], bool]:
    """The command line to start: behind ``env FLAGS --`` when it can; whether it is."""
    env = signal_env()
    return ([env, *flags, "--", *argv], True) if env else (list(argv), False)


def _check_program(
    argv: t.Sequence[str], cwd: str | os.PathLike[str] | None, env: t.Mapping[str, str] | None
) -> None:
    """Raise FileNotFoundError, as Popen would, for a program ``env`` would not find."""
    program = argv[0]
    if "/" in program:
        found = which(os.path.join(cwd or "", program), None)
    else:
        found = which(program, (os.environ if env is None else env).get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def run(
    argv: t.Sequence[str],
    *,
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    env: t.Mapping[str, str] | None = None,
) -> Result:
    """Run *argv* (never through a shell) with stdin from /dev/null and output captured.

    Raises
    ------
    gtd.exc.CommandTimeout
        After *timeout* seconds; the child's whole process group is killed first.
    FileNotFoundError
        The program does not exist.
    """
    _check_program(argv, cwd, env)
    command, trampoline = _argv(argv, IGNORE)
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
        preexec_fn=None if trampoline else _child_setup,  # noqa: PLW1509 - single-threaded
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        # Not communicate(): a frozen tmux server holds copies of the client's pipes.
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
        raise CommandTimeout(argv, timeout) from None
    return Result(tuple(argv), proc.returncode, out, err)


def spawn(argv: t.Sequence[str], *, env: t.Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start a long-lived child with pipes to its stdin, stdout and stderr (ours non-blocking).

    The child runs in its own process group (:func:`kill_group` ends it) with
    SIGUSR1 and SIGHUP ignored and blocked, so a signal sent to the daemon's whole
    cgroup never reaches it. The caller bounds every wait on its pipes.

    Raises
    ------
    OSError
        The program could not be started.
    """
    _check_program(argv, None, env)
    command, trampoline = _argv(argv, (*IGNORE, *BLOCK))
    child = subprocess.Popen(
        command,
        env=dict(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        start_new_session=True,
        preexec_fn=None if trampoline else _held_child_setup,  # noqa: PLW1509 - single-threaded
    )
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            os.set_blocking(pipe.fileno(), False)
    return child


def kill_group(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group and reap the child; never raises."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(5)
