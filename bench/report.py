"""Rendering: a wrapped text table for the terminal, Markdown for docs/benchmarks.md."""

from __future__ import annotations

import re
import textwrap
import typing as t

if t.TYPE_CHECKING:
    from bench.common import Results, Row

COMMAND = "sudo .venv/bin/python -m bench.run"

METHOD = """\
- **1. exec → READY.** The daemon unit is stopped and started {starts} times with the
  tmux unit up and the deacon alive, alternating with the baseline unit
  (`bench-notify.service`: `/usr/bin/python3 -c` a script that sends `READY=1` at once,
  a bare python notify unit). The figure is systemd's own
  `InactiveExitTimestampMonotonic → ActiveEnterTimestampMonotonic`: fork of the main
  process to READY=1. The wall time of `systemctl --user start`, run as the sandbox
  user straight from the bench (fork + setuid + exec, no `runuser`), is shown too.
  Percentiles are nearest-rank.
- **2. exec → deacon session.** The daemon is stopped, the `gt-deacon` session killed
  (the tmux server stays up), the daemon started; a control-mode client of the bench's
  own stamps the `%sessions-changed` after which `gt-deacon` is listed, on the clock of
  systemd's monotonic timestamps, and the unit's `InactiveExitTimestampMonotonic` is
  taken from it. {starts} repetitions.
- **3. USR1 → request done.** `requesting_cycle: true` is set in
  `<town>/deacon/state.json`, a request `{{"id", "identity": "deacon", "action": "cycle",
  "created_at", "from"}}` is written to `daemon/lifecycle/tmp/` and renamed into `new/`,
  then SIGUSR1 goes to the daemon's main PID with kill(2) (what `systemctl --user kill
  --kill-who=main` and `gtd request` deliver); the time runs from just before the signal
  until the file is in neither `new/` nor `cur/` (1 ms polls), and, from a second
  thread, until the deacon pane shows a new live `pane_pid` (10 ms tmux polls).
  {lifecycle} repetitions, then {lifecycle} more through `systemctl --user kill -s USR1`
  (the whole cgroup; systemctl's own time included).
- **4. CPU per heartbeat.** The config is reloaded with `heartbeat_interval = 1s` and
  1, 10, 100, 1,000 extra `sleep infinity` sessions on the agents' server, then with ten
  `[supervise] agents` (deacon, mayor, two witnesses, two refineries, four crew; only the
  deacon in `poke`). After 2 settling heartbeats, the CPU of the daemon's cgroup
  (`cpu.stat usage_usec`: the daemon and every process it starts) over {beats}
  heartbeats is divided by their number (the poke of the fake agent included). The
  reference is the CPU of one `tmux list-panes -a` process in the same run. The tmux
  unit gets `LimitNOFILE=16384` from a bench drop-in: each pane holds a descriptor in
  the server, and the user manager's soft limit of 1,024 leaves a server with 1,000
  extra sessions spinning on `accept()`.
- **5. memory.** `VmRSS` / `VmHWM` of the daemon's main PID after start and after the
  idle window; the baseline is the python notify unit. For growth, `python -m
  bench.driver` builds the daemon as `gtd run` does (same modules) and runs {driver}
  heartbeats back to back through the real loop (poke, `state.json` write each time)
  against a private tmux server, reporting its VmRSS after the first and the last.
- **6. idle.** With heartbeat 300 s and `WatchdogSec=30s` (the packaged unit), CPU of the
  unit's cgroup and the daemon's voluntary context switches (all threads) are sampled
  before and after {idle:g} s of idleness, next to the baseline python notify unit and a
  `sleep infinity` unit over the same window, once the deacon has been up longer than
  gtd's `startsecs` (10 s; its guard then marks it healthy, a one-off). The wake-ups
  the watchdog asks for are one per 15 s.
- **7. dead deacon.** SIGKILL of the deacon's pane PID, then tmux is polled every 10 ms
  until a new pane PID whose `pane_current_command` is `node` appears. Healthy kills are
  spaced {spacing:g} s apart (gtd's `startsecs` is 10 s, so each killed agent had
  become healthy); the quick kills follow each restart at once and show the crash-loop
  guard's back-off instead. Separately, `gtd run` (no systemd) runs an agent command of
  `/bin/false` for 18 s, and the gaps between its restarts are compared with the
  guard's 1 s, 2 s, 4 s, 8 s.
- **8. tmux work.** `gtd -v run` directly (no systemd), heartbeat 1 s, a private
  `tmux -L … -f /dev/null -D` server with 1, 10, 100 and 1,000 extra `sleep infinity`
  sessions, and a `tmux` wrapper first on `PATH` that logs each process started with
  `$EPOCHREALTIME` and execs `/usr/bin/tmux`; gtd's debug log has a line per tmux
  command. Both are charged to the heartbeat whose `heartbeat #N done` line follows
  them; the startup heartbeat is reported apart. Upstream's count is computed from
  `reference/gastown-9afd6c557` (`ensureDeaconRunning` + `pokeDeacon`), not measured.
- **Before and after.** The same bench code, run on the code before issue 10's changes
  just before this run: `git archive 76049ac | tar -x -C /tmp/before`, this commit's
  `bench/` copied in, `python3 -m venv .venv && .venv/bin/pip install -e '.[test]'`
  there, `sudo .venv/bin/python -m bench.run --output /tmp/before.md`; then, here,
  `sudo .venv/bin/python -m bench.run --before /tmp/before.md --before-label "..."`.
  Each run's baselines are its own (shown with each figure); the machine (2 cores
  shared with other work) was not quiet, so read a figure against its own run's
  baseline. For start-up, `--before-venv /tmp/before/.venv` also starts `gtd run` of
  both trees and the bare notify script in turn (no systemd, a private tmux server),
  so the two see the same load.
"""


MISSED = {
    "1. exec → READY": (
        "The time is Python's imports. READY=1 goes out after the first reconcile (the "
        "config read, tmux listed, every supervised agent judged and started if need be), "
        "and that needs the standard modules gtd is built on: `tomllib` (which imports "
        "`typing`), `dataclasses` (which imports `inspect`, `ast`, `dis`, `tokenize`), "
        '`logging`, `pathlib`, `enum`, `json`, `subprocess`. The row "CPU of a process '
        'that only imports" measures, in this run, a python that imports just those '
        "modules and nothing of gtd: that alone is several times a bare python, so twice "
        "the bare notify unit is out of reach for any Python daemon built on them. What "
        "could go without losing a guarantee went: `secrets`/`hashlib` (OpenSSL), "
        "`tempfile`, `shutil`, `difflib`, `systemd.journal`, `socket`, `argparse` and "
        "`zoneinfo` are no longer imported by `gtd run` (a test keeps them out), the tmux "
        "client starts "
        "with vfork, and the first tmux round trips go through the control client. Going "
        "further means dropping dataclasses and enums across every module (the other half "
        "of the import time is gtd's own 21 dataclasses and 6 enums being built), or "
        "sending READY before the agents are ensured, which the brief rules out. The "
        'row "spawn → READY=1 of `gtd run` before and now, interleaved" compares the '
        "start with the code before these changes under the same load."
    ),
    "2. exec → deacon session": (
        "The same imports come first: the deacon's session is made within a few ms of "
        "the first tmux command (connect, list, new-session through the control client), "
        "but that command can only come once the modules are loaded (see 1)."
    ),
    "3. USR1 → request done": (
        "A request is crash-safe on disk: before and after acting, its record (attempt "
        "count, then executed) is written whole (temp file, fsync, rename, fsync of the "
        "directory), and the agent's flag file likewise, so a kill -9 or a power cut at "
        "any point neither loses it nor acts twice. Those six fsyncs and the respawn of "
        "the deacon's pane (the tmux server forks the new agent) are most of the time; "
        "the three tmux commands take about 0.2 ms each through the control client, and "
        "a release that changes nothing no longer rewrites state.json. On a quiet moment "
        "of this machine the figure comes to about 15 ms, under load (the baseline "
        "figures of the other rows show how much) well over it. Dropping the fsyncs "
        "would meet it and give up the guarantee."
    ),
    "5. memory": (
        "A bare python is about 8 MB here; the standard modules the design rests on (see "
        "1) bring it to 13.8 MB and libsystemd (python-systemd's sd_notify and journal "
        "sendv, which the structured journal fields need) to 14.8 MB before any of gtd is "
        "loaded; gtd's own modules add about 1.3 MB and the first heartbeat's work the "
        "rest, about 0.8 MB over the target after start. What was not needed went (about "
        "6 MB: OpenSSL's hashlib through secrets, tempfile, shutil with bz2 and lzma, "
        "systemd.journal with uuid and platform, socket, difflib, argparse with gettext, "
        "zoneinfo with sysconfig). Meeting the target means sending to journald and the "
        "notify socket without libsystemd, i.e. writing python-systemd again, which the "
        "design's choice of it rules out. Over heartbeats the RSS levels off: the "
        "bench.driver row's growth is the allocator settling in the first few hundred "
        "(4,000 heartbeats in one process grew 0.16 MB after the first 500, none in the "
        "last 1,500, and tracemalloc shows no Python objects piling up)."
    ),
}
"""Why a target is missed, by target; shown for each one this run misses."""


def ordered(rows: t.Sequence[Row]) -> list[Row]:
    """Rows by target number, in measurement order within one target."""
    return sorted(rows, key=lambda r: int(re.sub(r"\D.*", "", r.section) or 0))


def verdict(row: Row) -> str:
    """``meets`` / ``MISSES`` / ``-``."""
    if row.meets is None:
        return "-"
    return "meets" if row.meets else "MISSES"


def text_table(header: t.Sequence[str], rows: t.Sequence[t.Sequence[str]],
               widths: t.Sequence[int]) -> str:  # fmt: skip
    """A grid table whose cells wrap to *widths*.

    >>> print(text_table(["a", "b"], [["xx yy", "z"]], [2, 1]))
    +----+---+
    | a  | b |
    +----+---+
    | xx | z |
    | yy |   |
    +----+---+
    """
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [rule]
    for i, row in enumerate([header, *rows]):
        cells = [textwrap.wrap(c, w) or [""] for c, w in zip(row, widths, strict=True)]
        for k in range(max(len(c) for c in cells)):
            parts = [
                (c[k] if k < len(c) else "").ljust(w) for c, w in zip(cells, widths, strict=True)
            ]
            out.append("| " + " | ".join(parts) + " |")
        if i == 0 or i == len(rows):
            out.append(rule)
    return "\n".join(out)


def console(results: Results) -> str:
    """The run's results for the terminal."""
    header = ["target", "metric", "goal", "measured", "baseline", "verdict"]
    rows = [
        [r.section, r.metric, r.target, r.measured, r.baseline, verdict(r)]
        for r in ordered(results.rows)
    ]
    parts = [text_table(header, rows, [16, 34, 14, 30, 30, 7])]
    for table in results.tables:
        parts.append(table.title)
        columns = zip(table.header, *table.rows, strict=True)
        widths = [max(8, min(22, max(len(x) for x in col))) for col in columns]
        parts.append(text_table(table.header, table.rows, widths))
    if results.problems:
        parts.append("Problems seen:\n" + "\n".join(f"  - {p}" for p in results.problems))
    return "\n\n".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "-"


def measured_rows(text: str) -> dict[tuple[str, str], str]:
    """Measured (and baseline) of a benchmarks.md Results table, by (target, metric).

    >>> measured_rows("| 1. a | m | g | 5 ms | b | meets | r |")
    {('1. a', 'm'): '5 ms (baseline: b)'}
    """
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 7 and cells[0][:1].isdigit():
            base = f" (baseline: {cells[4]})" if cells[4] != "-" else ""
            rows[(cells[0], cells[1])] = cells[3] + base
    return rows


def before_after(results: Results, before: t.Mapping[tuple[str, str], str]) -> list[str]:
    """A Markdown table of every targeted row: the earlier run's figure and this run's."""
    lines = ["| target | metric | goal | before | after | verdict now |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in ordered(results.rows):
        if r.meets is None:
            continue
        was = before.get((_cell(r.section), _cell(r.metric)), "-")
        now = _cell(r.measured) + (f" (baseline: {_cell(r.baseline)})" if r.baseline != "-" else "")
        lines.append(
            f"| {_cell(r.section)} | {_cell(r.metric)} | {_cell(r.target)} | {was} "
            f"| {now} | {verdict(r)} |"
        )
    return lines


def markdown(
    results: Results,
    *,
    date: str,
    elapsed: float,
    facts: t.Mapping[str, str],
    method: t.Mapping[str, float],
    before: tuple[str, t.Mapping[tuple[str, str], str]] | None = None,
    missed: t.Mapping[str, str] | None = None,
) -> str:
    """docs/benchmarks.md.

    *before* is (what it was, its rows) from an earlier run's file; *missed* says,
    by target, why a target this run misses is missed.
    """
    lines = [
        "# Benchmarks",
        "",
        "Generated by the benchmark script; do not edit by hand, re-run it instead:",
        "",
        "```sh",
        COMMAND,
        "```",
        "",
        "from the repository root (root is needed for the real `systemd --user` manager and",
        "journald of `tests/sandbox.py`, here for the sandbox user `gtdbench`).",
        f"`--quick` gives a shorter, noisier run. This run: {date}, {elapsed:.0f} s.",
        "",
        "The targets are those of issue 10. Every number is a measurement on the machine",
        "below; the baseline column is measured in the same run (upstream's Go figures are",
        "quoted from issue 10's table, not measured here).",
        "",
        "## Machine",
        "",
        "| fact | value |",
        "| --- | --- |",
        *(f"| {k} | {_cell(v)} |" for k, v in facts.items()),
        "",
        "## Results",
        "",
        "| target | metric | goal | measured | baseline | verdict | reading |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {_cell(r.section)} | {_cell(r.metric)} | {_cell(r.target)} | {_cell(r.measured)} "
        f"| {_cell(r.baseline)} | {verdict(r)} | {_cell(r.reading)} |"
        for r in ordered(results.rows)
    ]
    misses = [r for r in ordered(results.rows) if r.meets is False]
    if misses and missed:
        lines += ["", "## Targets missed, and why", ""]
        for section in dict.fromkeys(r.section for r in misses):
            lines += [f"- **{section}.** {missed.get(section, 'not explained')}", ""]
    if before is not None:
        lines += ["", f"## Before and after ({before[0]})", ""]
        lines += before_after(results, before[1])
    for table in results.tables:
        lines += ["", f"### {table.title}", ""]
        lines.append("| " + " | ".join(_cell(h) for h in table.header) + " |")
        lines.append("|" + " --- |" * len(table.header))
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    lines += ["", "## Method", "", METHOD.format(**method).rstrip()]
    if results.details:
        lines += ["", "## Raw samples and details", ""]
        lines += [f"- {d}" for d in results.details]
    lines += ["", "## Problems seen during the run", ""]
    lines += [f"- {p}" for p in results.problems] or ["- none"]
    return "\n".join(lines) + "\n"
