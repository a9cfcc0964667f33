"""Poke latency against the real Claude Code: ``sudo .venv/bin/python -m bench.pokereal``.

For each of N pokes to an idle agent (the pinned version, as the test user, against
the stand-in API): from calling :func:`gtd.poke.poke` to the stand-in receiving the
turn (``to API``), to ``poke()`` returning delivered (``to confirmed``), and the tmux
calls one poke makes. Prints the samples and a Markdown table for docs/benchmarks.md.
Everything it starts is stopped again, also on failure.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

from bench.common import percentile, samples
from gtd import poke
from gtd.screen import Condition
from tests.fakeapi import FakeAPI
from tests.realagent.harness import USER, VERSION, RealAgent, ensure_user, unavailable


def measure(count: int) -> tuple[list[float], list[float], list[int]]:
    """Poke an idle agent *count* times; return (to API, to confirmed, tmux calls) per poke."""
    to_api: list[float] = []
    to_confirmed: list[float] = []
    calls: list[int] = []
    scratch = pathlib.Path(ensure_user(USER).pw_dir) / "gtd-realagent"
    scratch.mkdir(exist_ok=True)
    with FakeAPI() as api, tempfile.TemporaryDirectory(dir=scratch) as tmp:
        agent = RealAgent(api, pathlib.Path(tmp))
        try:
            agent.start()
            agent.wait_for(Condition.IDLE)
            for n in range(count):
                text = f"HEARTBEAT: bench {n}"
                before = agent.tmux.calls.copy()
                start = time.monotonic()
                outcome = poke.poke(agent.tmux, agent.pane, text, agent.ui)
                confirmed = time.monotonic()
                if not outcome:
                    msg = f"poke {n} not delivered: {outcome.describe()}"
                    raise RuntimeError(msg)
                calls.append((agent.tmux.calls - before).total())
                api.wait_for(lambda a: text in a.user_turns(), 60, text)  # noqa: B023
                [arrived] = [r.at for r in api.main_requests() if r.user_text() == text]
                to_api.append(arrived - start)
                to_confirmed.append(confirmed - start)
                agent.wait_for(Condition.IDLE)
        finally:
            agent.stop()
    return to_api, to_confirmed, calls


def table(to_api: list[float], to_confirmed: list[float], calls: list[int]) -> str:
    """The Markdown rows for docs/benchmarks.md."""

    def row(name: str, values: list[float]) -> str:
        p50, p99 = percentile(values, 50), percentile(values, 99)
        return (
            f"| {name} | {p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms | {max(values) * 1000:.0f} ms |"
        )

    return "\n".join(
        [
            (
                f"Poke against the real Claude Code {VERSION} (n={len(to_api)}, idle agent, "
                f"tmux calls per poke: median {sorted(calls)[len(calls) // 2]}, max {max(calls)})"
            ),
            "",
            "| from `poke()` called to | p50 | p99 | max |",
            "| --- | --- | --- | --- |",
            row("the stand-in API has the turn", to_api),
            row("`poke()` returns delivered", to_confirmed),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pokereal", description=__doc__)
    parser.add_argument("-n", "--count", type=int, default=30, help="pokes (default 30)")
    args = parser.parse_args()
    reasons = unavailable()
    if reasons:
        print("cannot run the real agent: " + "; ".join(reasons))
        return 1
    to_api, to_confirmed, calls = measure(args.count)
    print(f"to API:       {samples(to_api)}")
    print(f"to confirmed: {samples(to_confirmed)}")
    print(f"tmux calls:   {calls}")
    print()
    print(table(to_api, to_confirmed, calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
