"""Targets 4 and 5: a lifecycle request after USR1, and a killed deacon coming back.

Both run on the town of :class:`bench.service.ServiceBench` and restart the deacon,
so they go after the idle measurements.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import secrets
import signal
import threading
import time
import typing as t

from bench.common import Row, percentile, samples, summary
from bench.service import DAEMON, REPO
from tests.sandbox import retry_until

if t.TYPE_CHECKING:
    from bench.service import ServiceBench


class Recovery:
    """Lifecycle and dead-deacon measurements on a :class:`ServiceBench`'s town."""

    def __init__(self, bench: ServiceBench) -> None:
        self.b = bench

    # -- 4. lifecycle ----------------------------------------------------------------

    def lifecycle(self) -> None:
        """Target 4: a queued request is carried out within 50 ms (p50) of USR1."""
        res = self.b.results
        spool = self.b.root / "daemon" / "lifecycle"
        for sub in ("tmp", "new", "cur", "failed"):
            self.b.make_dirs(spool / sub)
        gone: list[float] = []
        panes: list[float] = []
        signals: list[float] = []
        why = ""
        for _ in range(self.b.counts.lifecycle):
            outcome = self._one_request(spool)
            if isinstance(outcome, str):
                why = outcome
                break
            sent, done, pane = outcome
            signals.append(sent)
            gone.append(done)
            if pane is not None:
                panes.append(pane)
            self.b.last_deacon_start = time.monotonic()
        wired = (REPO / "gtd" / "lifecycle.py").exists()
        if not gone:
            why = why or "no request completed"
            note = f"not measured: lifecycle not wired ({why}"
            note += "; gtd/lifecycle.py exists)" if wired else "; gtd/lifecycle.py absent)"
            res.add(Row("4. lifecycle", "USR1 → request gone from new/ and cur/",
                        "p50 ≤ 50 ms", note, "-", "re-run once lifecycle is wired"))  # fmt: skip
            return
        p50 = percentile(gone, 50)
        res.add(
            Row(
                "4. lifecycle",
                "`systemctl --user kill -s USR1` → request file gone from new/ and cur/",
                "p50 ≤ 50 ms",
                summary(gone),
                f"systemctl kill itself: {summary(signals)}",
                f"p50 {'within' if p50 <= 0.05 else 'over'} 50 ms (cycle of deacon)"
                + (f"; stopped early: {why}" if why else ""),
                p50 <= 0.05,
            )
        )
        res.add(
            Row(
                "4. lifecycle",
                "USR1 → deacon pane has a new pane_pid (tmux polled every 10 ms)",
                "(informational)",
                summary(panes),
                "-",
                "the agent restart inside the request",
            )
        )
        res.detail(f"lifecycle request samples: {samples(gone)}")

    def _one_request(self, spool: pathlib.Path) -> tuple[float, float, float | None] | str:
        """Queue one ``cycle`` of the deacon, send USR1, time it; a string says why not."""
        old = self.b.live_deacon()
        flags = self.b.root / "deacon" / "state.json"
        try:
            current = json.loads(flags.read_text())
        except (OSError, ValueError):
            current = {}
        now = datetime.datetime.now(datetime.UTC).isoformat()
        current.update({"requesting_cycle": True, "requesting_time": now})
        self.b.um.write_file(flags.relative_to(self.b.um.home), json.dumps(current))
        # gtd's id shape (gtd/lifecycle.py new_id): a file named otherwise is not a request.
        rid = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        request = {"id": rid, "identity": "deacon", "action": "cycle", "created_at": now,
                   "from": "bench"}  # fmt: skip
        name = f"{rid}.json"
        tmp = self.b.um.write_file((spool / "tmp" / name).relative_to(self.b.um.home),
                                 json.dumps(request))  # fmt: skip
        os.rename(tmp, spool / "new" / name)
        watcher = PaneWatcher(self.b, old.pid)
        watcher.start()
        begun = time.perf_counter()
        proc = self.b.user.systemctl("kill", "-s", "USR1", DAEMON)
        sent = time.perf_counter() - begun
        if proc.returncode != 0:
            watcher.stop()
            return f"systemctl kill failed: {proc.stderr.strip()}"
        deadline = begun + 5.0
        failed = spool / "failed" / name
        while (spool / "new" / name).exists() or (spool / "cur" / name).exists():
            if failed.exists() or time.perf_counter() > deadline:
                break
            time.sleep(0.001)
        done = time.perf_counter() - begun
        pane = watcher.wait(5.0)
        if failed.exists() or any(p.name.startswith(rid) for p in (spool / "failed").iterdir()):
            return "request moved to failed/"
        if done >= 5.0:
            for sub in ("new", "cur"):
                with contextlib.suppress(FileNotFoundError):
                    (spool / sub / name).unlink()
            return "the request was still queued 5 s after USR1"
        return sent, done, (pane - begun if pane is not None else None)

    # -- 5. dead deacon ----------------------------------------------------------------

    def dead_deacon(self) -> None:
        """Target 5: a killed deacon is alive again within 2 s (healthy, then quick kills)."""
        res = self.b.results
        healthy: list[float] = []
        for _ in range(self.b.counts.healthy_kills):
            time.sleep(
                max(0.0, self.b.last_deacon_start + self.b.counts.kill_spacing - time.monotonic())
            )
            healthy.append(self._kill_and_time())
        quick = [self._kill_and_time() for _ in range(self.b.counts.quick_kills)]
        expected = [2.0**i for i in range(len(quick))]
        as_designed = all(e <= q <= e + 0.5 for q, e in zip(quick, expected, strict=True))
        worst = max(healthy)
        res.add(
            Row(
                "5. dead deacon",
                "SIGKILL of a healthy deacon (up > 10 s) → new live pane_pid running node",
                "≤ 2 s",
                summary(healthy),
                "upstream: next heartbeat (up to 5 min)",
                f"max {'within' if worst <= 2 else 'over'} 2 s: pidfd wakes the loop at once",
                worst <= 2,
            )
        )
        res.add(
            Row(
                "5. dead deacon",
                f"{len(quick)} kills each right after the restart (< startsecs 10 s)",
                "back-off " + ", ".join(f"{e:g} s" for e in expected),
                samples(quick),
                "-",
                "back-off as designed (a quick exit is a crash loop, not the 2 s case)"
                if as_designed
                else "not the designed back-off: a kill within ms of the restart can beat "
                "pidfd_open(), and the death is then seen only at the startsecs deadline",
                as_designed,
            )
        )
        res.detail(f"healthy kill samples: {samples(healthy)}")

    def _kill_and_time(self) -> float:
        """SIGKILL the deacon; seconds until a new live one shows in tmux (10 ms polls)."""
        old = self.b.live_deacon()
        begun = time.perf_counter()
        os.kill(old.pid, signal.SIGKILL)
        found: list[float] = []

        def back() -> bool:
            pane = self.b.deacon()
            if pane is not None and pane.pid != old.pid and pane.alive:
                found.append(time.perf_counter() - begun)
            return bool(found)

        retry_until(back, 30, 0.01)
        self.b.last_deacon_start = time.monotonic()
        return found[0]


class PaneWatcher:
    """A thread polling tmux every 10 ms until the deacon's pane_pid differs from *old*."""

    def __init__(self, bench: ServiceBench, old: int) -> None:
        self.bench = bench
        self.old = old
        self.when: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join(5)

    def wait(self, timeout: float) -> float | None:
        """The perf_counter time the new pane was first seen, or None after *timeout*."""
        self._thread.join(timeout)
        self._stop.set()
        return self.when

    def _poll(self) -> None:
        deadline = time.monotonic() + 10
        while not self._stop.is_set() and time.monotonic() < deadline:
            pane = self.bench.deacon()
            if pane is not None and pane.pid != self.old and pane.alive:
                self.when = time.perf_counter()
                return
            time.sleep(0.01)
