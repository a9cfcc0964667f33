r"""A stand-in for Claude Code: a line-reading prompt that records what it is sent.

Run through a symlink named like the real agent's process (``node``), so tmux's
``pane_current_command`` sees that name. Options:

--log PATH            append every line read (and every trapped signal) to PATH
--exit-after S        exit with status 1 after S seconds (a crashing agent)
--exit-file PATH      exit at once with status 1 while PATH exists (crash on every start)
--trap                record SIGUSR1, SIGTERM, SIGHUP, SIGINT instead of dying on them
--raw                 read key by key with the tty's echo off and edit the line itself,
                      as a full-screen agent does: printable keys echo, DEL/^H erase one,
                      ^U clears the line, Enter (``\r`` or ``\n``) submits it
--swallow-enters N    (with --raw) ignore the first N Enter keys, keeping the line, as
                      Claude Code under load does; each is recorded as ``SWALLOWED``
--no-echo             (with --raw) never show typed keys (only the prompt)

Without ``--raw`` the tty stays cooked: the kernel echoes and edits the line.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import os
import pathlib
import signal
import sys
import termios
import threading
import typing as t

PROMPT = "> "
ENTER = ("\r", "\n")
ERASE = ("\x7f", "\b")
KILL = "\x15"
EOF = "\x04"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", type=pathlib.Path, required=True)
    parser.add_argument("--exit-after", type=float, default=0.0)
    parser.add_argument("--exit-file", type=pathlib.Path)
    parser.add_argument("--trap", action="store_true")
    parser.add_argument("--raw", action="store_true")
    parser.add_argument("--swallow-enters", type=int, default=0)
    parser.add_argument("--no-echo", action="store_true")
    args = parser.parse_args()

    def record(text: str) -> None:
        with args.log.open("a") as f:
            f.write(f"{os.getpid()} {text}\n")

    record("START")
    if args.exit_file is not None and args.exit_file.exists():
        record("EXIT exit-file")
        return 1
    restore_tty = raw_tty() if args.raw else _nothing

    def crash() -> None:
        restore_tty()
        os._exit(1)

    if args.exit_after > 0:
        threading.Timer(args.exit_after, crash).start()
    if args.trap:
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, lambda n, _f: record(f"SIGNAL {signal.Signals(n).name}"))
    elif args.raw:
        # Die of the signal as before, but through `finally`, so the tty is restored.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda n, _f: sys.exit(128 + n))
    record("READY")  # past the start-up checks, traps in place
    try:
        if args.raw:
            return raw_loop(record, swallow=args.swallow_enters, echo=not args.no_echo)
        return cooked_loop(record)
    finally:
        restore_tty()


def _nothing() -> None:
    """No tty to restore."""


def raw_tty() -> t.Callable[[], None]:
    """Turn off the tty's line editing and echo (signals stay); return the undo."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~termios.ICRNL  # Enter arrives as the \r a terminal sends
    attrs[3] &= ~(termios.ICANON | termios.ECHO)
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)

    def restore() -> None:
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSANOW, saved)

    return restore


def cooked_loop(record: t.Callable[[str], None]) -> int:
    """Read whole lines the kernel edited and echoed."""
    while True:
        write(PROMPT)
        try:
            line = sys.stdin.readline()
        except InterruptedError:  # pragma: no cover - PEP 475 retries reads
            continue
        if not line:
            record("EOF")
            return 0
        record(f"LINE {line.rstrip(chr(10))}")


def raw_loop(record: t.Callable[[str], None], *, swallow: int, echo: bool) -> int:
    """Read key by key, echo and edit the line here, submit on Enter."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    shown = write if echo else _hide
    line: list[str] = []
    write(PROMPT)
    while True:
        data = os.read(sys.stdin.fileno(), 1024)
        if not data:
            record("EOF")
            return 0
        for key in decoder.decode(data):
            if key in ENTER:
                if swallow > 0:
                    swallow -= 1
                    record("SWALLOWED")
                    continue
                record(f"LINE {''.join(line)}")
                line.clear()
                write("\n" + PROMPT)
            elif key in ERASE:
                if line:
                    line.pop()
                    shown("\b \b")
            elif key == KILL:
                shown("\b \b" * len(line))
                line.clear()
            elif key == EOF and not line:
                record("EOF")
                return 0
            elif key.isprintable():
                line.append(key)
                shown(key)


def write(text: str) -> None:
    """Show *text* on the terminal at once."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _hide(_text: str) -> None:
    """Show nothing (``--no-echo``)."""


if __name__ == "__main__":
    sys.exit(main())
