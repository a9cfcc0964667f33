"""Targets 1 to 3 on gastown-daemon.service under a real ``systemd --user``, and the town.

One town for the sandbox user, set up as ``tests/system/test_service.py`` does
(``gtd units install``, the fake agent behind a ``node`` symlink, a private tmux
socket), plus two baseline units: ``bench-notify.service``, a python that sends
READY=1 at once and then sleeps, and ``bench-sleep.service`` (``sleep infinity``).
"""

from __future__ import annotations

import compileall
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import resource
import shutil
import time
import typing as t

from bench.common import (
    AsUser,
    ProcSample,
    Results,
    Row,
    mb,
    memory,
    ms,
    percentile,
    sample,
    samples,
    summary,
)
from tests.sandbox import UserManager, retry_until

DAEMON = "gastown-daemon.service"
TMUX_UNIT = "gastown-tmux.service"
NOTIFY_UNIT = "bench-notify.service"
SLEEP_UNIT = "bench-sleep.service"
REPO = pathlib.Path(__file__).resolve().parents[1]
FAKE_AGENT = REPO / "tests" / "fakeagent" / "agent.py"

# One line for ExecStart=: no backslashes, `$` or `%` for systemd to expand.
NOTIFY_SCRIPT = (
    "import os,signal,socket;"
    "a=os.environ['NOTIFY_SOCKET'];"
    "s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM);"
    "s.connect(chr(0)+a[1:] if a[0]=='@' else a);"
    "s.send(b'READY=1');"
    "signal.pause()"
)
BASELINE_UNITS = {
    NOTIFY_UNIT: (
        "[Unit]\nDescription=bench baseline: python3 that sends READY=1 at once\n"
        "[Service]\nType=notify\nNotifyAccess=main\n"
        f'ExecStart=/usr/bin/python3 -c "{NOTIFY_SCRIPT}"\n'
    ),
    SLEEP_UNIT: (
        "[Unit]\nDescription=bench baseline: sleep\n[Service]\nExecStart=/bin/sleep infinity\n"
    ),
}
STDLIB_FLOOR = "typing, dataclasses, enum, logging, pathlib, tomllib, json, subprocess, selectors"
"""Standard modules gtd's design rests on (tomllib alone pulls in typing)."""
WATCHDOG_SEC = 30.0
"""The packaged unit's WatchdogSec=: gtd pings every half of it."""
IDLE_CPU_TARGET = 0.001
"""'Idle CPU about 0' read as: under 0.1 % of one CPU (60 ms of CPU per minute)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Counts:
    """How many times each measurement repeats (``--quick`` shrinks them)."""

    starts: int = 10
    idle_seconds: float = 30.0
    fast_heartbeats: int = 6
    healthy_kills: int = 10
    quick_kills: int = 3
    lifecycle: int = 20
    driver_heartbeats: int = 1000
    kill_spacing: float = 10.6
    """Seconds a fresh deacon runs before it is killed: past gtd's startsecs of 10 s."""


@dataclasses.dataclass(frozen=True, slots=True)
class Pane:
    """The deacon's pane as tmux reports it."""

    pid: int
    dead: bool
    command: str

    @property
    def alive(self) -> bool:
        """Live pane whose foreground command is the fake agent's ``node``."""
        return not self.dead and self.command == "node"


class ServiceBench:
    """The sandbox town and every measurement that needs systemd."""

    def __init__(self, um: UserManager, results: Results, counts: Counts) -> None:
        self.um = um
        self.results = results
        self.counts = counts
        self.user = AsUser(um)
        self.venv = pathlib.Path()
        self.root = um.home / "benchtown"
        self.socket = "gtd_bench"
        self.last_deacon_start = 0.0
        self.cursor: str | None = None

    # -- set-up ----------------------------------------------------------------------

    def setup(self, venv: pathlib.Path) -> None:
        """Fake agent, config, ``gtd units install``, the baseline units."""
        self.venv = venv
        # As an installed package would be: without .pyc files the user (who cannot
        # write them here) would compile every module at each start.
        compileall.compile_dir(str(REPO / "gtd"), quiet=1)
        # A sandbox home outlives the manager: drop-ins or a town left by an earlier
        # (or interrupted) run would change what is measured.
        for unit in (DAEMON, TMUX_UNIT, *BASELINE_UNITS):
            shutil.rmtree(self.um.unit_dir / f"{unit}.d", ignore_errors=True)
        # A pane holds a descriptor in the tmux server: 1,000 extra sessions need more
        # than the soft limit of 1,024 the user manager gives (tmux then spins on accept).
        self.um.write_file(
            self.um.unit_dir.relative_to(self.um.home) / f"{TMUX_UNIT}.d" / "bench-nofile.conf",
            "[Service]\nLimitNOFILE=16384\n",
        )
        shutil.rmtree(self.root, ignore_errors=True)
        self.cursor = self.um.journal_cursor()
        fake = self.um.home / "fake"
        self.um.write_file("fake/agent.py", FAKE_AGENT.read_text())
        if not (fake / "node").is_symlink():
            (fake / "node").symlink_to("/usr/bin/python3")
        self.write_config("300s")
        self.um.run(
            str(venv / "bin" / "gtd"), "units", "install", "--force"
        )  # units of an earlier run are its own
        for name, text in BASELINE_UNITS.items():
            self.um.write_file(self.um.unit_dir.relative_to(self.um.home) / name, text)
        self.um.systemctl("daemon-reload")
        dropins = self.user.show(DAEMON, "DropInPaths").get("DropInPaths", "")
        if dropins:
            self.results.problems.append(f"{DAEMON} has drop-ins: {dropins}")

    def write_config(self, heartbeat: str, agents: t.Sequence[str] = ("deacon",)) -> None:
        """The daemon's config: the fake agent, a private tmux socket, no gt mail.

        *agents* are supervised; the deacon (always the first) is the one poked.
        """
        node = self.um.home / "fake" / "node"
        agent = self.um.home / "fake" / "agent.py"
        command = f"{node} {agent} --log {self.root / 'agent.log'}"
        self.um.write_file(
            ".config/gastown/daemon.toml",
            f"town_root = {json.dumps(str(self.root))}\n"
            f'heartbeat_interval = "{heartbeat}"\n'
            f'[agent]\ncommand = {json.dumps(command)}\nalive_commands = ["node"]\nui = "plain"\n'
            f'[tmux]\nsocket = "{self.socket}"\n'
            '[lifecycle]\ngt_command = ""\n'
            f'[supervise]\nagents = {json.dumps(list(agents))}\npoke = ["deacon"]\n',
        )

    def make_dirs(self, path: pathlib.Path) -> None:
        """Create *path* and its missing parents 0700, owned by the user (as gtd would)."""
        for directory in [*reversed(path.parents), path]:
            if not directory.exists():
                directory.mkdir(mode=0o700)
                os.chown(directory, self.um.uid, self.um.gid)

    # -- probes ----------------------------------------------------------------------

    def deacon(self) -> Pane | None:
        """The deacon's pane now (one tmux client call as the user), or None."""
        proc = self.user.run(
            "tmux", "-L", self.socket, "list-panes", "-t", "=gt-deacon",
            "-F", "#{pane_pid} #{pane_dead} #{pane_current_command}", timeout=5,
        )  # fmt: skip
        parts = proc.stdout.split("\n", 1)[0].split()
        if proc.returncode != 0 or len(parts) != 3 or not parts[0].isdigit():
            return None
        return Pane(int(parts[0]), parts[1] == "1", parts[2])

    def live_deacon(self) -> Pane:
        """Wait (at most 15 s) for a live deacon and return it."""
        found: list[Pane] = []

        def alive() -> bool:
            pane = self.deacon()
            found[:] = [pane] if pane is not None and pane.alive else []
            return bool(found)

        retry_until(alive, 15, 0.02)
        return found[0]

    def main_pid(self, unit: str = DAEMON) -> int:
        """The unit's MainPID (0 when not running)."""
        return int(self.user.show(unit, "MainPID").get("MainPID", "0") or 0)

    def state(self) -> dict[str, t.Any]:
        """The daemon's state.json ({} while unreadable)."""
        try:
            obj: dict[str, t.Any] = json.loads((self.root / "daemon" / "state.json").read_text())
        except (OSError, ValueError):
            return {}
        return obj

    def wait_heartbeats(self, pid: int, after: int, timeout: float = 30.0) -> int:
        """Wait until the daemon *pid* has recorded heartbeat number > *after*; return it."""

        def done() -> bool:
            st = self.state()
            return st.get("pid") == pid and int(st.get("heartbeat_count", 0)) > after

        retry_until(done, timeout, 0.02)
        return int(self.state()["heartbeat_count"])

    def start(self, unit: str) -> tuple[float, float | None]:
        """Start *unit*: wall time of ``systemctl --user start`` and systemd's own.

        systemd's own is InactiveExit to ActiveEnter: fork to READY=1 for Type=notify.

        Raises
        ------
        RuntimeError
            systemctl failed.
        """
        begun = time.perf_counter()
        proc = self.user.systemctl("start", unit)
        wall = time.perf_counter() - begun
        if proc.returncode != 0:
            msg = f"systemctl --user start {unit}: {proc.stderr.strip()}"
            raise RuntimeError(msg)
        props = self.user.show(
            unit, "InactiveExitTimestampMonotonic", "ActiveEnterTimestampMonotonic"
        )
        try:
            inner = (
                int(props["ActiveEnterTimestampMonotonic"])
                - int(props["InactiveExitTimestampMonotonic"])
            ) / 1e6
        except (KeyError, ValueError):
            return wall, None
        return wall, inner if inner >= 0 else None

    def stop(self, unit: str) -> float:
        """Stop *unit*; return the wall time of ``systemctl --user stop``."""
        begun = time.perf_counter()
        self.user.systemctl("stop", unit)
        return time.perf_counter() - begun

    # -- 1. start to READY -----------------------------------------------------------

    def start_latency(self) -> None:
        """Target 1: fork → READY=1 within twice a bare python notify unit's."""
        res = self.results
        cold, cold_inner = self.start(DAEMON)
        self.last_deacon_start = time.monotonic()
        self.live_deacon()
        gtd: list[float] = []
        gtd_inner: list[float] = []
        base: list[float] = []
        base_inner: list[float] = []
        stops: list[float] = []
        for _ in range(self.counts.starts):
            # Alternate gtd and the baseline so both see the same background noise.
            stops.append(self.stop(DAEMON))
            self.live_deacon()
            for unit, wall, inner in ((DAEMON, gtd, gtd_inner), (NOTIFY_UNIT, base, base_inner)):
                if unit == NOTIFY_UNIT:
                    self.stop(unit)
                w, i = self.start(unit)
                wall.append(w)
                if i is not None:
                    inner.append(i)
        if gtd_inner and base_inner:
            limit = 2 * percentile(base_inner, 50)
            p50 = percentile(gtd_inner, 50)
            res.add(
                Row(
                    "1. exec → READY",
                    "fork → READY=1 (systemd's InactiveExit → ActiveEnter timestamps; tmux "
                    "unit up, deacon alive)",
                    "p50 ≤ 2x the python notify unit's",
                    summary(gtd_inner),
                    f"python3 notify unit: {summary(base_inner)}",
                    f"p50 {p50 / percentile(base_inner, 50):.1f}x the baseline's "
                    f"(limit {ms(limit)})",
                    p50 <= limit,
                )
            )
        res.add(
            Row(
                "1. exec → READY",
                "`systemctl --user start` wall time (the same starts, client round trip included)",
                "(informational)",
                summary(gtd),
                f"python3 notify unit: {summary(base)}",
                f"gtd's own share ≈ {ms(percentile(gtd, 50) - percentile(base, 50))} "
                "(p50 minus baseline p50)",
            )
        )
        res.add(
            Row(
                "1. exec → READY",
                "first start: also starts gastown-tmux.service and creates the deacon",
                "(informational)",
                ms(cold) + (f" (fork → READY {ms(cold_inner)})" if cold_inner else ""),
                "-",
                "cold path, once per boot",
            )
        )
        res.detail(f"start samples gtd: {samples(gtd)}")
        res.detail(f"start samples baseline: {samples(base)}")
        res.detail(f"`systemctl --user stop gastown-daemon` wall: {summary(stops)}")
        self._import_cost()

    def _import_cost(self) -> None:
        """Where a start's time goes: the interpreter, the stdlib gtd needs, gtd's modules."""
        python = str(self.venv / "bin" / "python")
        cases = {
            "python3 -c pass": ["/usr/bin/python3", "-c", "pass"],
            "python3 importing the stdlib gtd cannot do without": [
                "/usr/bin/python3", "-c", f"import {STDLIB_FLOOR}"],
            "python importing what `gtd run` imports": [
                python, "-c", "import gtd.cli, gtd.daemon, gtd.control"],
        }  # fmt: skip
        cpu: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(7):
            for label, argv in cases.items():
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                self.user.run(*argv)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[label].append(
                    after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                )
        p50 = {k: percentile(v, 50) for k, v in cpu.items()}
        labels = list(cases)
        self.results.add(
            Row(
                "1. exec → READY",
                "CPU of a process that only imports (p50 of 7): " + "; ".join(labels),
                "(informational)",
                " / ".join(ms(p50[k]) for k in labels),
                f"stdlib floor: {STDLIB_FLOOR}",
                f"the imports alone are {p50[labels[2]] / p50[labels[0]]:.1f}x a bare python; "
                f"the stdlib gtd needs is {p50[labels[1]] / p50[labels[0]]:.1f}x",
            )
        )

    # -- 2 and 3. idle CPU and memory ----------------------------------------------------

    def idle_and_memory(self) -> None:
        """Targets 5 and 6: RSS after start; CPU and wake-ups while idle."""
        res = self.results
        main = self.main_pid()
        self.wait_heartbeats(main, 0)
        self.user.systemctl("start", NOTIFY_UNIT, SLEEP_UNIT)
        # Idle means nothing due: the deacon (just restarted by target 2) past gtd's
        # startsecs of 10 s, when its guard deadline fires and its state is saved.
        time.sleep(max(1.0, self.last_deacon_start + self.counts.kill_spacing - time.monotonic()))
        notify_pid, sleep_pid = self.main_pid(NOTIFY_UNIT), self.main_pid(SLEEP_UNIT)
        after_start = memory(main)
        base_mem = memory(notify_pid)
        units = {DAEMON: main, NOTIFY_UNIT: notify_pid, SLEEP_UNIT: sleep_pid}
        cgroups = {u: self.user.show(u, "ControlGroup").get("ControlGroup") for u in units}
        before = {u: sample(p, cgroups[u]) for u, p in units.items()}
        before_children = {pid: _switches(pid) for pid in children(main)}
        begun = time.monotonic()
        time.sleep(self.counts.idle_seconds)
        after = {u: sample(p, cgroups[u]) for u, p in units.items()}
        window = time.monotonic() - begun
        if self.main_pid() != main:
            res.problems.append("gastown-daemon's MainPID changed during the idle window")
        rates = {u: _rates(before[u], after[u], window) for u in units}
        cpu, wake = rates[DAEMON]
        pings = window / (WATCHDOG_SEC / 2)
        woke = after[DAEMON].voluntary - before[DAEMON].voluntary
        res.add(
            Row(
                "6. idle",
                f"CPU of the daemon's cgroup over {window:.0f} s idle (heartbeat 300 s)",
                "≈ 0 (read: < 60 ms/min, 0.1 %)",
                f"{cpu * 60 * 1000:.1f} ms/min ({cpu * 100:.3f} %)",
                f"python3 notify unit {rates[NOTIFY_UNIT][0] * 60000:.1f} ms/min; "
                f"sleep unit {rates[SLEEP_UNIT][0] * 60000:.1f} ms/min",
                f"{'about zero' if cpu < IDLE_CPU_TARGET else 'not idle'}: "
                "the loop sleeps in select() until the watchdog ping or the heartbeat",
                cpu < IDLE_CPU_TARGET,
            )
        )
        res.add(
            Row(
                "6. idle",
                "wake-ups of the daemon (voluntary context switches, all threads)",
                f"only the watchdog's (WatchdogSec={WATCHDOG_SEC:g}s: a ping every "
                f"{WATCHDOG_SEC / 2:g} s)",
                f"{woke} in {window:.0f} s ({wake * 60:.1f}/min)",
                f"watchdog pings due: {pings:.1f}; python3 notify unit "
                f"{rates[NOTIFY_UNIT][1] * 60:.1f}/min; sleep unit "
                f"{rates[SLEEP_UNIT][1] * 60:.1f}/min",
                "nothing but the pings" if woke <= math.ceil(pings) else "more than the pings",
                woke <= math.ceil(pings),
            )
        )
        for unit in units:
            b, a = before[unit], after[unit]
            res.detail(
                f"{unit} idle deltas: cgroup {_delta(b.cgroup_usec, a.cgroup_usec)} µs, "
                f"schedstat {(a.run_ns - b.run_ns) / 1000:.0f} µs, "
                f"stat {a.cpu_ticks - b.cpu_ticks} ticks, "
                f"voluntary {a.voluntary - b.voluntary}, "
                f"involuntary {a.involuntary - b.involuntary}"
            )
        for pid in children(main):
            res.detail(f"daemon child {pid} ({comm(pid)}) over the idle window: "
                       f"{_wakes(pid, before_children.get(pid))}")  # fmt: skip
        after_idle = memory(main)
        res.add(
            Row(
                "5. memory",
                "daemon main PID VmRSS / VmHWM after start (and after the idle window)",
                "RSS ≤ 16 MB",
                f"{mb(after_start['VmRSS'])} / {mb(after_start['VmHWM'])} "
                f"({mb(after_idle['VmRSS'])} / {mb(after_idle['VmHWM'])})",
                f"python3 notify unit {mb(base_mem['VmRSS'])} / {mb(base_mem['VmHWM'])}",
                f"gtd's own ≈ {mb(after_start['VmRSS'] - base_mem['VmRSS'])} over bare python",
                after_idle["VmRSS"] <= 16 * 1024,
            )
        )
        helpers = [(pid, comm(pid), memory(pid)) for pid in children(main)]
        res.add(
            Row(
                "5. memory",
                "the daemon's long-lived children (VmRSS each)",
                "(informational)",
                "; ".join(f"{name} {mb(m['VmRSS'])}" for _, name, m in helpers) or "none",
                "-",
                "a tmux control client (its own process, shared text with the tmux server)"
                if helpers
                else "a tmux process per call, none between calls",
            )
        )


def _delta(a: int | None, b: int | None) -> str:
    return "n/a" if a is None or b is None else str(b - a)


def _delta_seconds(before: ProcSample, after: ProcSample) -> float:
    """CPU seconds between two samples: the cgroup's when known (children included)."""
    if before.cgroup_usec is not None and after.cgroup_usec is not None:
        return (after.cgroup_usec - before.cgroup_usec) / 1e6
    return (after.run_ns - before.run_ns) / 1e9


def _rates(before: ProcSample, after: ProcSample, window: float) -> tuple[float, float]:
    """(CPU fraction of one core, voluntary context switches per second)."""
    return _delta_seconds(before, after) / window, (after.voluntary - before.voluntary) / window


def children(pid: int) -> list[int]:
    """The live children of *pid* (every thread's)."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                kids += [int(x) for x in (task / "children").read_text().split()]
    return sorted(kids)


def comm(pid: int) -> str:
    """A process's name, or ``?`` when it is gone."""
    try:
        return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _switches(pid: int) -> int | None:
    """Voluntary context switches of *pid* (all threads), or None when it is gone."""
    try:
        return sample(pid).voluntary
    except OSError:
        return None


def _wakes(pid: int, before: int | None) -> str:
    now = _switches(pid)
    if now is None or before is None:
        return "not there for the whole window"
    return f"{now - before} wake-ups"
