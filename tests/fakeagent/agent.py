"""A stand-in for Claude Code: a line-reading prompt that records what it is sent.

Run through a symlink named like the real agent's process (``node``), so tmux's
``pane_current_command`` sees that name. Options:

--log PATH        append every line read (and every trapped signal) to PATH
--exit-after S    exit with status 1 after S seconds (a crashing agent)
--exit-file PATH  exit at once with status 1 while PATH exists (crash on every start)
--trap            record SIGUSR1, SIGTERM, SIGHUP, SIGINT instead of dying on them
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
import threading


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", type=pathlib.Path, required=True)
    parser.add_argument("--exit-after", type=float, default=0.0)
    parser.add_argument("--exit-file", type=pathlib.Path)
    parser.add_argument("--trap", action="store_true")
    args = parser.parse_args()

    def record(text: str) -> None:
        with args.log.open("a") as f:
            f.write(f"{os.getpid()} {text}\n")

    record("START")
    if args.exit_file is not None and args.exit_file.exists():
        record("EXIT exit-file")
        return 1
    if args.exit_after > 0:
        threading.Timer(args.exit_after, lambda: os._exit(1)).start()
    if args.trap:
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, lambda n, _f: record(f"SIGNAL {signal.Signals(n).name}"))
    while True:
        sys.stdout.write("> ")
        sys.stdout.flush()
        try:
            line = sys.stdin.readline()
        except InterruptedError:  # pragma: no cover - PEP 475 retries reads
            continue
        if not line:
            record("EOF")
            return 0
        record(f"LINE {line.rstrip(chr(10))}")


if __name__ == "__main__":
    sys.exit(main())
