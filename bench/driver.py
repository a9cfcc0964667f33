"""Many heartbeats back to back in one process, for memory growth: ``python -m bench.driver``.

Usage: ``python -m bench.driver CONFIG COUNT``. Builds the daemon as ``gtd run``
does (``gtd.cli`` imported first, so the same modules are loaded), runs
:meth:`~gtd.daemon.Daemon.prepare` and the first heartbeat, then lets the loop
run with the heartbeat timer due at once until COUNT heartbeats are done: the
real loop, timers, tmux calls, pokes and ``state.json`` writes, without waiting
a second between them. Prints one JSON object: VmRSS/VmHWM (kB) after the first
heartbeat and after the last, the daemon's CPU seconds (its own and its reaped
children's) and the tmux commands per heartbeat.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys


def status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in kB."""
    out = {}
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def main(argv: list[str]) -> int:
    """Run the heartbeats; print the JSON report."""
    import gtd.cli  # noqa: F401 - the modules `gtd run` has loaded
    from gtd.config import read_config
    from gtd.daemon import Daemon

    path, count = pathlib.Path(argv[0]), int(argv[1])
    config = read_config(path, explicit=True, env=os.environ, home=pathlib.Path.home())
    daemon = Daemon(
        dataclasses.replace(config, heartbeat_interval=0.0), config_path=path, explicit=True
    )
    daemon.prepare()
    daemon.heartbeat(ready=True)
    first = status()
    calls = daemon.tmux.calls.total()
    begun = os.times()
    done = daemon.state.heartbeat_count
    while daemon.state.heartbeat_count < done + count:
        daemon.loop.run_once()
    ended = os.times()
    last = status()
    beats = daemon.state.heartbeat_count - done
    report = {
        "heartbeats": beats,
        "after_first": first,
        "after_last": last,
        "cpu_s": sum(ended[:4]) - sum(begun[:4]),
        "tmux_commands_per_heartbeat": (daemon.tmux.calls.total() - calls) / max(beats, 1),
    }
    if hasattr(daemon.tmux, "close"):  # not there before the control client
        daemon.tmux.close()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
