"""What every benchmark shares: result rows, order statistics, /proc and cgroup sampling."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import statistics
import subprocess
import typing as t

if t.TYPE_CHECKING:
    from tests.sandbox import UserManager

CLK_TCK = os.sysconf("SC_CLK_TCK")
UNIFIED = pathlib.Path("/sys/fs/cgroup/unified")
"""Where a unit's cgroup has ``cpu.stat`` (the cgroup v2 hierarchy; v1 hybrid hosts)."""


@dataclasses.dataclass(slots=True)
class Row:
    """One line of the report: a metric, its target, what was measured, the baseline."""

    section: str
    metric: str
    target: str
    measured: str
    baseline: str
    reading: str
    meets: bool | None = None
    """Whether the target is met; None when informational or not measured."""


@dataclasses.dataclass(slots=True)
class Table:
    """A table of its own in the report (a metric with one row per setting)."""

    title: str
    header: list[str]
    rows: list[list[str]]


@dataclasses.dataclass(slots=True)
class Results:
    """Everything a run produced: rows for the table, detail lines, problems seen."""

    rows: list[Row] = dataclasses.field(default_factory=list)
    details: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    tables: list[Table] = dataclasses.field(default_factory=list)

    def add(self, row: Row) -> None:
        """Record a row and echo it, so a long run shows progress."""
        self.rows.append(row)
        print(f"  {row.section} | {row.metric}: {row.measured} (baseline: {row.baseline})")

    def detail(self, text: str) -> None:
        """Record a detail line (raw samples, method notes) and echo it."""
        self.details.append(text)
        print(f"    {text}")


def percentile(values: t.Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); the honest choice for a dozen samples.

    >>> percentile([5, 1, 3, 2, 4], 50), percentile(list(range(1, 11)), 90)
    (3, 9)
    """
    if not values:
        msg = "no samples"
        raise ValueError(msg)
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    """Seconds as a millisecond string.

    >>> ms(0.01234), ms(1.5)
    ('12.3 ms', '1500 ms')
    """
    value = seconds * 1000
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def summary(seconds: t.Sequence[float], *, p90: bool = True) -> str:
    """``p50 X, p90 Y, max Z (n=N)`` for a list of durations in seconds."""
    if not seconds:
        return "no samples"
    parts = [f"p50 {ms(percentile(seconds, 50))}"]
    if p90:
        parts.append(f"p90 {ms(percentile(seconds, 90))}")
    parts.append(f"max {ms(max(seconds))}")
    return f"{', '.join(parts)} (n={len(seconds)})"


def samples(seconds: t.Sequence[float]) -> str:
    """Every sample in milliseconds, in the order taken."""
    return ", ".join(f"{s * 1000:.1f}" for s in seconds) + " ms"


def median(values: t.Sequence[float]) -> float:
    """The median (0.0 for no values)."""
    return statistics.median(values) if values else 0.0


# -- /proc and cgroup sampling ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ProcSample:
    """CPU and wakeup counters of one process (all its threads) plus its unit's cgroup."""

    pid: int
    cpu_ticks: int
    """utime + stime + cutime + cstime from /proc/PID/stat (reaped children included)."""
    run_ns: int
    """Time on CPU from /proc/PID/task/*/schedstat: nanosecond resolution, threads summed."""
    voluntary: int
    involuntary: int
    cgroup_usec: int | None
    """``usage_usec`` of the unit's cgroup (every process in it, children too), if known."""


def sample(pid: int, cgroup: str | None = None) -> ProcSample:
    """Read the counters of *pid* now; *cgroup* is systemd's ``ControlGroup`` property.

    Raises
    ------
    OSError
        The process is gone.
    """
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # Fields after the command name start at field 3 (state): utime is field 14.
    ticks = sum(int(stat[i - 3]) for i in (14, 15, 16, 17))
    run_ns = voluntary = involuntary = 0
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            run_ns += int((task / "schedstat").read_text().split()[0])
            for line in (task / "status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "voluntary_ctxt_switches":
                    voluntary += int(value)
                elif key == "nonvoluntary_ctxt_switches":
                    involuntary += int(value)
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended between listing and reading
    return ProcSample(pid, ticks, run_ns, voluntary, involuntary, cgroup_usage(cgroup))


def cgroup_usage(cgroup: str | None) -> int | None:
    """``usage_usec`` from the unit's ``cpu.stat`` in the v2 hierarchy, or None."""
    if not cgroup:
        return None
    for root in (UNIFIED, pathlib.Path("/sys/fs/cgroup")):
        path = root / cgroup.lstrip("/") / "cpu.stat"
        try:
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value)
        except OSError:
            continue
    return None


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of *pid* in kB."""
    out = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def mb(kb: int) -> str:
    """Kilobytes as MB (MiB) text.

    >>> mb(20480)
    '20.0 MB'
    """
    return f"{kb / 1024:.1f} MB"


# -- commands as the sandbox user, without runuser's PAM cost -------------------------


class AsUser:
    """Run commands as the sandbox user straight from this process (fork, setuid, exec).

    ``UserManager.run`` goes through ``runuser``, whose PAM session costs tens of
    milliseconds: fine for set-up, wrong inside a timed region or a 10 ms poll.
    """

    def __init__(self, um: UserManager) -> None:
        self.uid = um.uid
        self.gid = um.gid
        self.home = um.home
        self.env = {
            "HOME": str(um.home),
            "USER": um.user,
            "LOGNAME": um.user,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": str(um.runtime_dir),
            "DBUS_SESSION_BUS_ADDRESS": "",
        }

    def run(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run *argv* as the user; output captured, never raises on a non-zero exit."""
        return subprocess.run(
            list(argv),
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env=self.env,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def systemctl(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """``systemctl --user ARGS`` as the user."""
        return self.run("systemctl", "--user", *args, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl --user show -p ...`` as a dict."""
        out = self.systemctl("show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


# -- the machine -----------------------------------------------------------------------


def grow_sessions(
    have: int, total: int, tmux: t.Callable[..., subprocess.CompletedProcess[str]]
) -> int:
    """Add ``extra-N`` sessions running ``sleep infinity`` through *tmux* until *total*.

    A hundred per tmux invocation; returns the new count (*total*).

    Raises
    ------
    RuntimeError
        tmux refused; its message is in the error.
    """
    while have < total:
        batch = range(have, min(total, have + 100))
        argv: list[str] = []
        for k in batch:
            argv += [*([";"] if argv else []), "new-session", "-d", "-s", f"extra-{k}",
                     "sleep", "infinity"]  # fmt: skip
        proc = tmux(*argv)
        if proc.returncode != 0:
            msg = f"could not create sessions: {proc.stderr.strip()}"
            raise RuntimeError(msg)
        have = batch.stop
    return have


def first_line(*argv: str) -> str:
    """First line of a command's output, or what went wrong."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except OSError as err:
        return f"unavailable ({err.strerror})"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine_facts(venv_python: str) -> dict[str, str]:
    """nproc, CPU, memory, kernel, python, tmux and systemd versions."""
    cpu = "unknown"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": os.uname().release,
        "python (gtd venv)": first_line(venv_python, "-V"),
        "python (/usr/bin/python3)": first_line("/usr/bin/python3", "-V"),
        "tmux": first_line("tmux", "-V"),
        "systemd": first_line("systemctl", "--version"),
    }
