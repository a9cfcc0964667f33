"""The event loop: one thread that blocks on signals, file descriptors and timers.

Each turn pings the watchdog if due, then sleeps in ``select()`` until the
earliest timer or an event (a signal through ``signal.set_wakeup_fd``, a pidfd
turning readable when a watched process exits), then runs the callbacks of what
happened: signals first, in the order they were registered, then file
descriptors, then due timers. Nothing polls, and nothing pings the watchdog from
a side thread, so a hung callback stops the pings and systemd's watchdog kills
the process (``faulthandler`` then writes where it hung).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import time
import typing as t

if t.TYPE_CHECKING:
    import collections.abc

    from gtd.notify import Notifier

logger = logging.getLogger(__name__)

HANG_SWITCH = "GTD_TEST_HANG_FILE"
"""Test-only fault switch: while the file it names exists, the loop hangs."""
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_stop_requested = False


def stop_requested() -> bool:
    """Whether SIGTERM or SIGINT arrived (for waits inside a step that must give up)."""
    return _stop_requested


def _note_signal(signum: int, frame: object) -> None:
    """Record stop requests; the wakeup fd carries every signal to the loop."""
    global _stop_requested  # a signal handler has nowhere else to write
    if signum in STOP_SIGNALS:
        _stop_requested = True


Callback: t.TypeAlias = "collections.abc.Callable[[], None]"


class Loop:
    """Signals, file descriptors and named timers, dispatched from one thread.

    Parameters
    ----------
    notifier
        Pinged with ``WATCHDOG=1`` from :meth:`tick` at its interval.
    clock
        Monotonic clock (injected for tests).
    env
        Where the test-only :data:`HANG_SWITCH` is read.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        clock: t.Callable[[], float] = time.monotonic,
        env: t.Mapping[str, str] | None = None,
    ) -> None:
        self.notifier = notifier
        self.clock = clock
        self.hang_switch = (os.environ if env is None else env).get(HANG_SWITCH)
        self.selector = selectors.DefaultSelector()
        self.timers: dict[t.Hashable, tuple[float, Callback]] = {}
        self.signals: dict[int, Callback] = {}
        self.next_ping = 0.0
        self._wakeup = -1

    # -- registration ---------------------------------------------------------------

    def on_signals(self, handlers: t.Mapping[int, Callback]) -> None:
        """Route these signals into the loop; their callbacks run in this order."""
        if self._wakeup < 0:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._wakeup = r
            signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self.selector.register(r, selectors.EVENT_READ, None)
        for sig, callback in handlers.items():
            self.signals[sig] = callback
            signal.signal(sig, _note_signal)

    def watch(self, fd: int, callback: Callback) -> None:
        """Run *callback* when *fd* turns readable (once per wake while it stays so)."""
        self.selector.register(fd, selectors.EVENT_READ, callback)

    def unwatch(self, fd: int) -> None:
        """Stop watching *fd*; a no-op when it is not watched."""
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(fd)

    def at(self, key: t.Hashable, when: float | None, callback: Callback) -> None:
        """Run *callback* once the clock reaches *when*; a key holds one timer (None cancels)."""
        if when is None:
            self.timers.pop(key, None)
        else:
            self.timers[key] = (when, callback)

    # -- running --------------------------------------------------------------------

    def tick(self) -> None:
        """Ping the watchdog if due. Only ever called from this thread, between steps."""
        self._maybe_hang()
        interval = self.notifier.watchdog_interval
        now = self.clock()
        if interval is not None and now >= self.next_ping:
            self.notifier.watchdog()
            self.next_ping = now + interval

    def timeout(self) -> float:
        """Seconds until the earliest timer or watchdog ping."""
        deadlines = [when for when, _ in self.timers.values()]
        if self.notifier.watchdog_interval is not None:
            deadlines.append(self.next_ping)
        if not deadlines:
            return 3600.0
        return max(0.0, min(deadlines) - self.clock())

    def run_once(self) -> None:
        """Tick, wait for the next event or timer, run what is due."""
        self.tick()
        ready: list[Callback] = []
        arrived: set[int] = set()
        for key, _ in self.selector.select(self.timeout()):
            if key.fd == self._wakeup:
                with contextlib.suppress(BlockingIOError):
                    while data := os.read(self._wakeup, 512):
                        arrived.update(data)
            elif key.data is not None:
                ready.append(key.data)
        ready[:0] = [callback for sig, callback in self.signals.items() if sig in arrived]
        for callback in ready:
            callback()
        now = self.clock()
        for name, (when, callback) in sorted(self.timers.items(), key=lambda kv: kv[1][0]):
            if when <= now and self.timers.get(name, (None,))[0] == when:
                del self.timers[name]
                callback()

    def _maybe_hang(self) -> None:
        """The test-only hang: blocks this thread while the switch file exists."""
        if self.hang_switch and os.path.exists(self.hang_switch):
            logger.warning("fault switch %s: loop hangs now", HANG_SWITCH)
            while os.path.exists(self.hang_switch):
                time.sleep(0.5)
