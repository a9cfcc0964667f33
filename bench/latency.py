"""Target 2: exec → the deacon's session exists, with the tmux server already up.

The moment a session appears is taken from tmux itself: a control-mode client of
the bench's own (as the sandbox user, in a session ``bench-watch``) gets
``%sessions-changed`` the moment any session is made, and the bench stamps it
with ``time.monotonic()`` (CLOCK_MONOTONIC, the clock of systemd's
``*TimestampMonotonic`` properties). The exec is the unit's
``InactiveExitTimestampMonotonic`` (systemd forks ``gtd run``).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import typing as t

from bench.common import Row, percentile, samples, summary
from bench.service import DAEMON, NOTIFY_UNIT
from tests.sandbox import wait_or_kill

if t.TYPE_CHECKING:
    from bench.service import ServiceBench

WATCH_SESSION = "bench-watch"
UPSTREAM_EXEC_TO_SESSION = 0.025
"""Issue 10's table: upstream's daemon, exec → deacon session (tmux server up)."""


class SessionWatch:
    """A control client that stamps each ``%sessions-changed`` and lists the sessions then."""

    def __init__(self, bench: ServiceBench) -> None:
        self.proc = subprocess.Popen(
            ["tmux", "-u", "-L", bench.socket, "-C", "new-session", "-A", "-s", WATCH_SESSION,
             "-f", "ignore-size,no-output", "sleep", "infinity"],
            user=bench.um.uid, group=bench.um.gid, extra_groups=[], env=bench.user.env,
            cwd=bench.um.home, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, bufsize=0,
        )  # fmt: skip
        self.seen: list[tuple[float, set[str]]] = []
        """(monotonic time of a %sessions-changed, the sessions listed right after it)."""
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stdin is not None
        pending: list[float] = []
        listing: set[str] | None = None
        for raw in self.proc.stdout:
            now = time.monotonic()
            line = raw.decode(errors="replace").rstrip("\n")
            if line == "%sessions-changed":
                pending.append(now)
                self.proc.stdin.write(b"list-sessions -F '#{session_name}'\n")
            elif line.startswith("%begin") and pending:
                listing = set()
            elif line.startswith(("%end", "%error")) and listing is not None:
                with self._lock:
                    self.seen.append((pending.pop(0), listing))
                    self._lock.notify_all()
                listing = None
            elif listing is not None:
                listing.add(line)

    def wait(self, test: t.Callable[[set[str]], bool], after: float, timeout: float) -> float:
        """The first change after *after* whose listing passes *test*; its time.

        Raises
        ------
        TimeoutError
            None within *timeout* seconds.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for when, names in self.seen:
                    if when >= after and test(names):
                        return when
                left = deadline - time.monotonic()
                if left <= 0:
                    msg = f"no matching session change; last seen {self.seen[-1:]}"
                    raise TimeoutError(msg)
                self._lock.wait(left)

    def close(self) -> None:
        """Detach (its session goes too: the bench kills it) and reap the client."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        wait_or_kill(self.proc)


def exec_to_session(bench: ServiceBench) -> None:
    """Target 2: stop the daemon, kill the deacon's session, start; fork → session made."""
    res = bench.results
    watch = SessionWatch(bench)
    took: list[float] = []
    baseline: list[float] = []
    try:
        for _ in range(bench.counts.starts):
            bench.stop(DAEMON)
            bench.user.run("tmux", "-L", bench.socket, "kill-session", "-t", "=gt-deacon")
            gone = time.monotonic()
            bench.start(DAEMON)
            forked = int(bench.user.show(DAEMON, "InactiveExitTimestampMonotonic")
                         ["InactiveExitTimestampMonotonic"]) / 1e6  # fmt: skip
            made = watch.wait(lambda names: "gt-deacon" in names, gone, 10)
            took.append(made - forked)
            bench.stop(NOTIFY_UNIT)
            _, inner = bench.start(NOTIFY_UNIT)
            if inner is not None:
                baseline.append(inner)
    finally:
        watch.close()
        bench.user.run("tmux", "-L", bench.socket, "kill-session", "-t", f"={WATCH_SESSION}")
    bench.last_deacon_start = time.monotonic()
    p50 = percentile(took, 50)
    res.add(
        Row(
            "2. exec → deacon session",
            "fork of `gtd run` (systemd's InactiveExit timestamp) → tmux reports the gt-deacon "
            "session (tmux server up, session killed before each start)",
            "p50 ≤ 50 ms",
            summary(took),
            f"python3 notify unit fork → READY: {summary(baseline)}; upstream "
            f"{UPSTREAM_EXEC_TO_SESSION * 1000:.0f} ms (issue 10)",
            f"p50 {'within' if p50 <= 0.05 else 'over'} 50 ms",
            p50 <= 0.05,
        )
    )
    res.detail(f"exec → deacon session samples: {samples(took)}")
