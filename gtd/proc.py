"""Every subprocess gtd runs: bounded in time, its whole process group killed on timeout.

Children start with SIGUSR1 and SIGHUP ignored (a disposition that survives
exec), because ``systemctl --user kill -s USR1 gastown-daemon`` signals every
process in the daemon's cgroup, and a tmux client or ``git fetch`` that happens
to be running must not die of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import typing as t


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """What a finished command returned."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Timeout(Exception):
    """The command did not finish in time; its process group was killed."""

    def __init__(self, argv: t.Sequence[str], timeout: float) -> None:
        self.argv = tuple(argv)
        self.timeout = timeout
        super().__init__(f"{argv[0]}: no answer within {timeout:g}s")


def _child_setup() -> None:
    """Run in the child between fork and exec: ignore the daemon's control signals."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


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
    Timeout
        After *timeout* seconds; the child's whole process group is killed first.
    FileNotFoundError
        The program does not exist.
    """
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
        preexec_fn=_child_setup,  # noqa: PLW1509 - the daemon is single-threaded
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
        raise Timeout(argv, timeout) from None
    return Result(tuple(argv), proc.returncode, out, err)
