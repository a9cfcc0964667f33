"""Run every benchmark, print the table, write docs/benchmarks.md.

Usage, from the repository root: ``sudo .venv/bin/python -m bench.run [--quick]``.
Everything it starts (the ``gtdbench`` user manager and journald, tmux servers,
``gtd run``) is stopped again, also when a measurement fails or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import pathlib
import sys
import time
import traceback
import typing as t

from bench.ab import interleaved
from bench.common import Results, Row, machine_facts
from bench.crashloop import crash_loop
from bench.heartbeat import HeartbeatCost
from bench.latency import exec_to_session
from bench.liveness import liveness_cost, real_poke
from bench.recovery import Recovery
from bench.report import MISSED, console, markdown, measured_rows
from bench.service import DAEMON, Counts, ServiceBench
from bench.tmuxcount import TmuxWork
from tests.sandbox import UserManager, missing_requirements

REPO = pathlib.Path(__file__).resolve().parents[1]
SANDBOX_USER = "gtdbench"
"""Not the tests' ``gtdtest``, so a concurrent test run never shares a manager with us."""
QUICK = Counts(starts=4, idle_seconds=8.0, fast_heartbeats=3, healthy_kills=2, quick_kills=2,
               lifecycle=5, driver_heartbeats=200)  # fmt: skip


class Namespace(argparse.Namespace):
    """Typed view of the arguments."""

    quick: bool
    only: str
    output: str
    no_write: bool
    before: str | None
    before_label: str
    before_venv: str | None


def create_parser() -> argparse.ArgumentParser:
    """The ``bench.run`` parser."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Measure gtd against its targets (needs root for the systemd sandbox).",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (noisier)")
    parser.add_argument(
        "--only",
        choices=("all", "service", "tmux"),
        default="all",
        help="service: targets 1-7 under systemd; tmux: target 8, memory after many "
        "heartbeats and the crash-loop check (gtd run directly)",
    )
    parser.add_argument(
        "--output", default=str(REPO / "docs" / "benchmarks.md"), help="Markdown report path"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--before",
        metavar="FILE",
        help="a benchmarks.md written by an earlier run (another commit) to compare with",
    )
    parser.add_argument(
        "--before-label", default="an earlier run", help="what --before measured (a commit)"
    )
    parser.add_argument(
        "--before-venv",
        metavar="DIR",
        help="the venv of an earlier tree (DIR/..): its `gtd run` and this one's start "
        "interleaved, for a fair exec → READY comparison",
    )
    return parser


def guarded(results: Results, name: str, step: t.Callable[[], None]) -> None:
    """Run one measurement; a failure is recorded and the next one still runs."""
    try:
        step()
    except Exception as err:  # noqa: BLE001 - any failure is reported, not fatal
        traceback.print_exc()
        results.problems.append(f"{name} failed: {type(err).__name__}: {err}".strip())


def run_service(results: Results, counts: Counts) -> None:
    """Targets 1-5 on a real user manager for ``gtdbench``; always stopped at the end."""
    if missing := missing_requirements():
        results.problems.append("service benchmarks not run: " + "; ".join(missing))
        return
    um = UserManager(SANDBOX_USER)
    try:
        print(f"starting systemd --user and journald for {SANDBOX_USER} ...")
        um.start()
        venv = um.ensure_user_can_run(pathlib.Path(sys.prefix))
        bench = ServiceBench(um, results, counts)
        bench.setup(venv)
        print("1. exec → READY ...")
        guarded(results, "1. exec → READY", bench.start_latency)
        print("2. exec → deacon session ...")
        guarded(results, "2. exec → deacon session", lambda: exec_to_session(bench))
        print("5/6. memory and idle ...")
        guarded(results, "5/6. memory and idle", bench.idle_and_memory)
        print("4. CPU per heartbeat ...")
        guarded(results, "4. CPU per heartbeat", HeartbeatCost(bench).measure)
        print("3. USR1 → request done ...")
        guarded(results, "3. USR1 → request done", Recovery(bench).lifecycle)
        print("7. dead deacon ...")
        guarded(results, "7. dead deacon", Recovery(bench).dead_deacon)
        journal_problems(um, results, bench.cursor)
    finally:
        print(f"stopping the {SANDBOX_USER} manager ...")
        um.stop()


def journal_problems(um: UserManager, results: Results, cursor: str | None) -> None:
    """Warnings and errors gtd logged during this run (evidence for the report)."""
    seen: dict[str, int] = {}
    for entry in um.journal(DAEMON, after_cursor=cursor):
        if int(entry.get("PRIORITY", 6)) <= 4 and entry.get("SYSLOG_IDENTIFIER") == "gtd":
            message = str(entry.get("MESSAGE", ""))[:160]
            seen[message] = seen.get(message, 0) + 1
    for message, count in seen.items():
        results.detail(f"journal (warning or worse) x{count}: {message}")


def run_tmux(results: Results, counts: Counts, before_venv: str | None = None) -> None:
    """Target 8, memory after many heartbeats, the crash-loop check; private tmux servers."""
    if before_venv:
        print("1. exec → READY, before and now interleaved ...")
        rounds = 6 if counts.starts < 10 else 20
        guarded(results, "1. interleaved", lambda: interleaved(results, pathlib.Path(before_venv),
                                                            rounds))  # fmt: skip
    work = TmuxWork(results, (1, 10, 100, 1000), counts.fast_heartbeats)
    try:
        print("8. tmux work per heartbeat ...")
        guarded(results, "8. tmux work", work.measure)
        print(f"5. memory after {counts.driver_heartbeats} heartbeats ...")
        guarded(
            results, "5. memory (driver)", lambda: work.many_heartbeats(counts.driver_heartbeats)
        )
    finally:
        work.close()
    print("7. crash loop of an agent that exits at once ...")
    guarded(results, "7. crash loop", lambda: crash_loop(results))
    print("10. liveness per heartbeat ...")
    guarded(results, "10. liveness", lambda: liveness_cost(results))
    print("9. the real agent's poke ...")
    guarded(results, "9. real agent", lambda: real_poke(results))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; return 0 (they report, they do not judge)."""
    args = create_parser().parse_args(argv, namespace=Namespace())
    counts = QUICK if args.quick else Counts()
    results = Results()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    begun = time.monotonic()
    if args.only in ("all", "service"):
        run_service(results, counts)
    if args.only in ("all", "tmux"):
        run_tmux(results, counts, args.before_venv)
    elapsed = time.monotonic() - begun
    if not results.rows:
        results.rows.append(Row("-", "nothing measured", "-", "-", "-", "see problems"))
    print()
    print(console(results))
    if not args.no_write:
        facts = machine_facts(sys.executable)
        method = dataclasses.asdict(counts)
        before = None
        if args.before:
            rows = measured_rows(pathlib.Path(args.before).read_text())
            before = (args.before_label, rows)
        text = markdown(
            results,
            before=before,
            missed=MISSED,
            date=date,
            elapsed=elapsed,
            facts=facts,
            method={
                "starts": method["starts"],
                "idle": method["idle_seconds"],
                "beats": method["fast_heartbeats"],
                "lifecycle": method["lifecycle"],
                "spacing": method["kill_spacing"],
                "driver": method["driver_heartbeats"],
            },
        )
        pathlib.Path(args.output).write_text(text)
        print(f"\nwrote {args.output} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
