"""exec → READY of two gtd installations, interleaved, next to a bare python notify script.

Runs under systemd at different times see different load on a shared machine, so
two such runs cannot compare start-up fairly. Here ``gtd run`` of this tree and
of an earlier one (``--before-venv``) and the baseline script start in turn, N
rounds, each against the same private tmux server (the deacon already alive),
each timed from spawn to the READY=1 datagram on a socket the bench binds as
``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import compileall
import pathlib
import socket
import subprocess
import sys
import time

from bench.common import Results, Row, percentile, summary
from bench.tmuxcount import PrivateTmux

NOTIFY = (
    "import os,socket;a=os.environ['NOTIFY_SOCKET'];"
    "s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM);s.connect(a);s.send(b'READY=1')"
)


def interleaved(results: Results, before_venv: pathlib.Path, rounds: int) -> None:
    """Add a row: spawn → READY=1 of this gtd and the earlier one, with their ratios."""
    tm = PrivateTmux()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        tm.write_config("sleep 100000", "300s")
        # The earlier tree may not know every key of today's config (agent.ui): leave
        # it out, so both read the same file; READY=1 comes before any poke anyway.
        text = tm.config.read_text().replace('["node"]', '["sleep"]')
        tm.config.write_text(text.replace('ui = "plain"\n', ""))
        tm.start_server()
        path = tm.tmp / "notify"
        sock.bind(str(path))
        sock.settimeout(30)
        env = tm.env | {"NOTIFY_SOCKET": str(path)}
        here = pathlib.Path(sys.prefix) / "bin" / "gtd"
        there = before_venv / "bin" / "gtd"
        for tree in (pathlib.Path(__file__).resolve().parents[1], before_venv.parent):
            compileall.compile_dir(str(tree / "gtd"), quiet=1)
        runs = {
            "python3 notify script": ["/usr/bin/python3", "-c", NOTIFY],
            "gtd before": [str(there), "--config", str(tm.config), "run"],
            "gtd now": [str(here), "--config", str(tm.config), "run"],
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for argv in runs.values():
            _once(argv, env, sock)  # the deacon is made, caches are warm
        for _ in range(rounds):
            for label, argv in runs.items():
                times[label].append(_once(argv, env, sock))
    finally:
        sock.close()
        tm.close()
    base = percentile(times["python3 notify script"], 50)
    ratios = {k: percentile(v, 50) / base for k, v in times.items()}
    results.add(
        Row(
            "1. exec → READY",
            f"spawn → READY=1 of `gtd run` before and now, interleaved ({rounds} rounds, no "
            "systemd, private tmux server, deacon alive)",
            "(before and after)",
            f"before: {summary(times['gtd before'], p90=False)} ({ratios['gtd before']:.1f}x); "
            f"now: {summary(times['gtd now'], p90=False)} ({ratios['gtd now']:.1f}x)",
            f"python3 notify script: {summary(times['python3 notify script'], p90=False)}",
            f"now/before p50: {ratios['gtd now'] / ratios['gtd before']:.2f}",
        )
    )


def _once(argv: list[str], env: dict[str, str], sock: socket.socket) -> float:
    """Seconds from spawn to READY=1; the process is then stopped."""
    begun = time.monotonic()
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
        return time.monotonic() - begun
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
