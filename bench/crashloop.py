"""Target 5's other side: an agent that exits at once must be backed off, not hammered.

``gtd run`` (no systemd) with ``agent.command = "/bin/false"`` against a private
tmux server; the gaps between its ``started deacon`` lines are compared with the
crash-loop guard's design: 1 s, 2 s, 4 s, 8 s ...
"""

from __future__ import annotations

import itertools
import time

from bench.common import Results, Row
from bench.tmuxcount import PrivateTmux

SLACK = 0.5
"""Seconds a restart may come after its back-off (tmux calls, loop wake-up)."""


def crash_loop(results: Results, seconds: float = 18.0) -> None:
    """Record the restart gaps of an agent that always exits at once."""
    tm = PrivateTmux()
    try:
        tm.write_config("/bin/false", "300s")
        tm.start_server()
        run = tm.gtd()
        try:
            time.sleep(seconds)
        finally:
            run.stop()
    finally:
        tm.close()
    starts = [stamp for stamp, line in run.lines if "started deacon" in line]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    expected = [2.0**i for i in range(len(gaps))]
    designed = len(gaps) >= 3 and all(
        e <= g <= e + SLACK for g, e in zip(gaps, expected, strict=True)
    )
    warned = sum(1 for _, line in run.lines if "crash-looping" in line)
    results.add(
        Row(
            "7. dead deacon",
            f"agent that exits at once (`/bin/false`): gaps between restarts over {seconds:g} s "
            "(`gtd run`, no systemd)",
            "back-off 1 s, 2 s, 4 s, 8 s",
            ", ".join(f"{g:.2f} s" for g in gaps) or "no restart",
            "-",
            "as designed"
            if designed
            else f"not the designed back-off ({warned} crash-looping warnings for "
            f"{len(starts)} starts): an exit before pidfd_open() goes unseen until startsecs, "
            "and is then not counted as a quick exit",
            designed,
        )
    )
    results.detail(f"crash loop: {len(starts)} starts, gaps {[round(g, 3) for g in gaps]}")
