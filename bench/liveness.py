"""What liveness checking costs per heartbeat (issue 7 point 7), and the real-agent poke.

Liveness: ten agents in a private tmux server, each judged from one pane listing and
its process tree (``gtd.agents.view``), half started directly and half under a
wrapper script that forks them (the tree walk's longer path). The baseline is the
heartbeat's one ``list-panes`` through the control client, measured in the same run.

The real-agent poke (``bench.pokereal``) runs when the pinned Claude Code can run
here; its row says so when it cannot.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

from bench.common import Results, Row, percentile
from gtd import agents
from gtd.config import AgentConfig, Config
from gtd.identities import SESSION_PREFIX, parse_identity
from gtd.tmux import Tmux

REPO = pathlib.Path(__file__).resolve().parents[1]
FAKE_AGENT = REPO / "tests" / "fakeagent" / "agent.py"
AGENTS = 10
ROUNDS = 300


def liveness_cost(results: Results) -> None:
    """CPU and wall time of judging ten agents alive per heartbeat, beside one listing."""
    socket = f"gtd_bench_live_{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as tmp:
        base = pathlib.Path(tmp)
        (base / "node").symlink_to(sys.executable)
        server = subprocess.Popen(
            ["tmux", "-L", socket, "-f", "/dev/null", "-D"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        tmux = Tmux(socket, control=True)
        try:
            _measure(results, tmux, base)
        finally:
            tmux.close()
            subprocess.run(["tmux", "-L", socket, "kill-server"], check=False,
                           capture_output=True, timeout=10)  # fmt: skip
            server.wait(10)


def _measure(results: Results, tmux: Tmux, base: pathlib.Path) -> None:
    deadline = time.monotonic() + 10
    while not tmux.server_running():
        if time.monotonic() > deadline:
            msg = "tmux server did not start"
            raise RuntimeError(msg)
        time.sleep(0.02)
    agent = f"{base / 'node'} {FAKE_AGENT} --log {base / 'agent.log'}"
    config = Config(base / "town", agent=AgentConfig(agent, ("node",), "plain"))
    identities = [parse_identity(f"r{i}-witness") for i in range(AGENTS)]
    for i, identity in enumerate(identities):
        argv = agent.split() if i % 2 == 0 else ["sh", "-c", f"{agent}; sleep 600"]
        tmux.new_session(identity.session, cwd=tmp_dir(base), env={}, argv=argv,
                         tag=identity.dash)  # fmt: skip
    deadline = time.monotonic() + 15
    while True:
        panes = tmux.list_panes(prefix=SESSION_PREFIX)
        alive = [agents.view(panes, i, config).alive for i in identities]
        if all(alive):
            break
        if time.monotonic() > deadline:
            msg = f"agents not all alive: {alive}"
            raise RuntimeError(msg)
        time.sleep(0.05)
    views: list[tuple[float, float]] = []
    listings: list[tuple[float, float]] = []
    for _ in range(ROUNDS):
        wall, cpu = time.perf_counter(), time.process_time()
        panes = tmux.list_panes(prefix=SESSION_PREFIX)
        listings.append((time.perf_counter() - wall, time.process_time() - cpu))
        wall, cpu = time.perf_counter(), time.process_time()
        for identity in identities:
            agents.view(panes, identity, config)
        views.append((time.perf_counter() - wall, time.process_time() - cpu))
    view_wall = percentile([w for w, _ in views], 50) * 1000
    view_cpu = percentile([c for _, c in views], 50) * 1000
    list_wall = percentile([w for w, _ in listings], 50) * 1000
    list_cpu = percentile([c for _, c in listings], 50) * 1000
    results.add(
        Row(
            "10. liveness",
            f"judging {AGENTS} agents alive from one listing and /proc (half under a forking "
            f"wrapper), per heartbeat, p50 of {ROUNDS}",
            "(informational; issue 7 point 7)",
            f"{view_wall:.2f} ms wall, {view_cpu:.2f} ms CPU",
            f"the heartbeat's one list-panes (control client): {list_wall:.2f} ms wall, "
            f"{list_cpu:.2f} ms CPU",
            f"{view_cpu / AGENTS * 1000:.0f} µs of CPU per agent; no tmux call",
        )
    )


def tmp_dir(base: pathlib.Path) -> str:
    """A working directory for the bench's agents."""
    path = base / "work"
    path.mkdir(exist_ok=True)
    return str(path)


def real_poke(results: Results, count: int = 30) -> None:
    """The real-agent poke latency (``bench.pokereal``), or why it was not measured."""
    from bench import pokereal
    from tests.realagent.harness import VERSION, unavailable

    if reasons := unavailable():
        results.add(Row("9. real agent", "poke → the stand-in API has the turn", "-",
                        "not measured", "-", "; ".join(reasons)))  # fmt: skip
        return
    to_api, to_confirmed, calls = pokereal.measure(count)
    p50, p99 = percentile(to_api, 50) * 1000, percentile(to_api, 99) * 1000
    done = percentile(to_confirmed, 50) * 1000
    results.add(
        Row(
            "9. real agent",
            f"`gtd.poke.poke()` called → the stand-in API has the turn, idle Claude Code "
            f"{VERSION} (n={count})",
            "(informational; issue 7 point 7)",
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(to_api) * 1000:.0f} ms",
            "-",
            f"`poke()` returns delivered at p50 {done:.0f} ms; "
            f"{sorted(calls)[len(calls) // 2]} tmux calls per poke (median)",
        )
    )


if __name__ == "__main__":
    if shutil.which("tmux") is None or os.geteuid() != 0:
        msg = "needs tmux and root"
        raise SystemExit(msg)
    out = Results()
    liveness_cost(out)
    real_poke(out)
