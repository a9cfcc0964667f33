"""Target 8: the daemon's tmux work per heartbeat does not grow with the number of sessions.

``gtd -v run`` runs directly (no systemd) with a 1 s heartbeat against a private
tmux server holding 1, 10 and 100 extra sessions. ``tmux`` on its PATH is a
wrapper that appends one timestamped line per invocation to a counter file and
execs the real tmux. Each invocation is charged to the heartbeat whose
``heartbeat #N done`` line follows it; gtd's own debug log (``tmux <args>`` per
call) is counted the same way, as a cross-check.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import typing as t

from bench.common import Results, Row, Table, grow_sessions, mb, median
from tests.sandbox import retry_until

REPO = pathlib.Path(__file__).resolve().parents[1]
FAKE_AGENT = REPO / "tests" / "fakeagent" / "agent.py"
DONE = re.compile(r"heartbeat #(\d+) done")
WRAPPER = """#!/bin/bash
printf '%s %s\\n' "$EPOCHREALTIME" "$*" >> @COUNT@
exec @TMUX@ "$@"
"""
UPSTREAM_PER_HEARTBEAT = 6
"""Upstream 9afd6c557 with a live deacon: has-session and list-panes (ensureDeaconRunning),
has-session (pokeDeacon), send-keys C-u, send-keys -l, send-keys Enter (SendKeysReplace)."""
POKE_SUBCOMMANDS = frozenset({"send-keys", "display-message", "capture-pane"})


def per_session_model(sessions: int) -> int:
    """A daemon probing every session: has-session + display-message each, plus the 4-call poke.

    >>> per_session_model(1), per_session_model(101)
    (6, 206)
    """
    return 2 * sessions + 4


class Run:
    """One ``gtd -v run`` process and what it logged, with arrival times."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.time(), line.rstrip("\n")))

    def done_count(self) -> int:
        """How many ``heartbeat #N done`` lines arrived so far."""
        return sum(1 for _, line in list(self.lines) if DONE.search(line))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; wait for the reader to drain."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)


def charge(done_times: list[float], stamps: t.Iterable[float]) -> list[int]:
    """Count *stamps* per heartbeat: each goes to the first done time at or after it.

    >>> charge([1.0, 2.0, 3.0], [0.5, 0.9, 1.5, 2.5, 2.6, 2.7, 9.0])
    [2, 1, 3]
    """
    counts = [0] * len(done_times)
    for stamp in stamps:
        for i, done in enumerate(done_times):
            if stamp <= done:
                counts[i] += 1
                break
    return counts


def log_blocks(lines: t.Sequence[str]) -> list[list[str]]:
    """Group gtd's debug ``tmux <subcommand> ...`` lines by the heartbeat they precede.

    >>> log_blocks(["<7>tmux a -x", "<6>heartbeat #1 done", "<7>tmux b", "<7>tmux c",
    ...             "<6>heartbeat #2 done", "<7>tmux d"])
    [['a'], ['b', 'c']]
    """
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        text = re.sub(r"^<\d>", "", line)
        if text.startswith("tmux "):
            current.append(text.split()[1])
        elif DONE.search(text):
            blocks.append(current)
            current = []
    return blocks


class PrivateTmux:
    """A temp dir (HOME, TMUX_TMPDIR, town) and a private tmux server for ``gtd run``."""

    def __init__(self) -> None:
        self.real = shutil.which("tmux") or "/usr/bin/tmux"
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="gtd-bench-"))
        self.socket = f"gtd_bench_{secrets.token_hex(4)}"
        self.server: subprocess.Popen[bytes] | None = None
        (self.tmp / "home").mkdir()
        (self.tmp / "tmux").mkdir(mode=0o700)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.tmp / "home"),
            "LANG": "C.UTF-8",
            "SHELL": "/bin/sh",
            "TMUX_TMPDIR": str(self.tmp / "tmux"),
        }
        self.config = self.tmp / "daemon.toml"

    def write_config(self, command: str, heartbeat: str) -> None:
        """``gtd run``'s config: this server, no gt mail."""
        self.config.write_text(
            f'town_root = "{self.tmp / "town"}"\nheartbeat_interval = "{heartbeat}"\n'
            f'[agent]\ncommand = "{command}"\nalive_commands = ["node"]\nui = "plain"\n'
            f'[tmux]\nsocket = "{self.socket}"\n[lifecycle]\ngt_command = ""\n'
        )

    def gtd(self, *, verbose: bool = False) -> Run:
        """Start ``gtd [-v] --config ... run`` with this environment."""
        flags = ["-v"] if verbose else []
        return Run([sys.executable, "-m", "gtd", *flags, "--config", str(self.config), "run"],
                   self.env)  # fmt: skip

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real tmux on the private server (not counted)."""
        return subprocess.run(
            [self.real, "-L", self.socket, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def start_server(self) -> None:
        """``tmux -L SOCKET -f /dev/null -D`` in the background, as gastown-tmux.service."""
        self.server = subprocess.Popen(
            [self.real, "-L", self.socket, "-f", "/dev/null", "-D"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def up() -> bool:
            proc = self.tmux("list-sessions")
            return proc.returncode == 0 or "no sessions" in proc.stderr

        retry_until(up, 5)

    def close(self) -> None:
        """Kill the server and remove every file; never raises."""
        with contextlib.suppress(Exception):
            self.tmux("kill-server")
        if self.server is not None:
            with contextlib.suppress(Exception):
                if self.server.poll() is None:
                    os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)


class TmuxWork(PrivateTmux):
    """The private server, the counting wrapper, the town; :meth:`measure` fills *results*."""

    def __init__(self, results: Results, sessions: t.Sequence[int], heartbeats: int) -> None:
        super().__init__()
        self.results = results
        self.sessions = list(sessions)
        self.heartbeats = heartbeats
        self.counter = self.tmp / "tmux-calls"
        self.extra = 0
        wrap = self.tmp / "wrap"
        wrap.mkdir()
        script = wrap / "tmux"
        script.write_text(
            WRAPPER.replace("@COUNT@", str(self.counter)).replace("@TMUX@", self.real)
        )
        script.chmod(0o755)
        (self.tmp / "bin").mkdir()
        (self.tmp / "bin" / "node").symlink_to("/usr/bin/python3")
        self.env["PATH"] = f"{wrap}:{self.env['PATH']}"
        node = self.tmp / "bin" / "node"
        self.write_config(f"{node} {FAKE_AGENT} --log {self.tmp / 'agent.log'}", "1s")

    def grow(self, total: int) -> None:
        """Add extra ``sleep infinity`` sessions until there are *total* of them."""
        self.extra = grow_sessions(self.extra, total, self.tmux)

    def one(self, total: int) -> dict[str, t.Any]:
        """Run the daemon for a few heartbeats with *total* extra sessions; count its tmux."""
        self.grow(total)
        self.counter.write_text("")
        run = self.gtd(verbose=True)
        try:
            ok = retry_until(
                lambda: run.done_count() > self.heartbeats or run.proc.poll() is not None,
                30 + 3 * self.heartbeats,
                raises=False,
            )
        finally:
            run.stop()
        if not ok or run.done_count() <= self.heartbeats:
            tail = "\n".join(line for _, line in run.lines[-15:])
            msg = f"gtd run did not log {self.heartbeats + 1} heartbeats:\n{tail}"
            raise RuntimeError(msg)
        done_times = [stamp for stamp, line in run.lines if DONE.search(line)]
        stamps = [float(line.split(" ", 1)[0]) for line in self.counter.read_text().splitlines()]
        wrapped = charge(done_times, stamps)
        logged = log_blocks([line for _, line in run.lines])
        return {"wrapped": wrapped, "logged": [len(b) for b in logged], "blocks": logged,
                "total": len(stamps), "logged_total": sum(len(b) for b in logged)}  # fmt: skip

    def measure(self) -> None:
        """Fill the results: one table row per session count, and a summary row."""
        res = self.results
        self.start_server()
        rows: list[list[str]] = []
        medians: dict[int, float] = {}
        commands: dict[int, float] = {}
        listings: dict[int, set[int]] = {}
        for n in self.sessions:
            got = self.one(n)
            steady = got["wrapped"][1:]
            blocks = got["blocks"][1:]
            medians[n] = median(steady)
            commands[n] = median(got["logged"][1:])
            listings[n] = {sum(1 for c in b if c not in POKE_SUBCOMMANDS) for b in blocks}
            sessions = n + 1  # the extras plus gt-deacon
            rows.append([
                str(n), str(len(steady)), f"{medians[n]:g} ({min(steady)}-{max(steady)})",
                f"{commands[n]:g}", str(got["wrapped"][0]),
                "/".join(str(x) for x in sorted(listings[n])),
                str(UPSTREAM_PER_HEARTBEAT), str(per_session_model(sessions)),
            ])  # fmt: skip
            breakdown: dict[str, int] = {}
            for sub in blocks[-1] if blocks else []:
                breakdown[sub] = breakdown.get(sub, 0) + 1
            res.detail(
                f"n={n}: tmux processes per heartbeat (wrapper) {got['wrapped']}, tmux commands "
                f"(gtd log) {got['logged']}; processes {got['total']} in all vs "
                f"{got['logged_total']} commands (the tail after the last heartbeat included); "
                f"last heartbeat: {breakdown}"
            )
        res.tables.append(
            Table(
                "8. tmux work per heartbeat (gtd run, heartbeat 1 s, real tmux via a counting "
                "wrapper)",
                [
                    "extra sessions",
                    "heartbeats",
                    "tmux processes/heartbeat, median (min-max)",
                    "tmux commands/heartbeat (gtd log), median",
                    "processes in the startup heartbeat",
                    "listing commands (not poke)",
                    "upstream 9afd6c557 processes (computed)",
                    "per-session probing 2·s+4 (computed)",
                ],
                rows,
            )
        )  # fmt: skip
        first, last = self.sessions[0], self.sessions[-1]
        growth = commands[last] - commands[first]
        flat = listings[first] == listings[last] and len(listings[last]) == 1
        res.add(
            Row(
                "8. tmux work",
                f"tmux commands per heartbeat, {first} → {last} extra sessions (median)",
                "constant in the number of sessions",
                " → ".join(f"{commands[n]:g}" for n in self.sessions),
                f"upstream {UPSTREAM_PER_HEARTBEAT} for any n (deacon only); per-session probing "
                + " → ".join(str(per_session_model(n + 1)) for n in self.sessions),
                f"{'constant' if flat and growth <= 1 else 'grows'}: one list-panes -a per "
                "heartbeat; the rest is the poke (send-keys + cursor checks)",
                flat and growth <= 1,
            )
        )
        res.add(
            Row(
                "8. tmux work",
                "tmux processes started per heartbeat (median over the settings)",
                "(informational)",
                " → ".join(f"{medians[n]:g}" for n in self.sessions),
                f"upstream {UPSTREAM_PER_HEARTBEAT} (a process per tmux command)",
                "0: the commands go through the one control-mode client started with the daemon"
                if max(medians.values()) == 0
                else "a process per tmux command",
            )
        )

    def many_heartbeats(self, count: int) -> None:
        """Target 5's second half: VmRSS after *count* heartbeats back to back (bench.driver)."""
        self.grow(max(self.extra, 1))
        proc = subprocess.run(
            [sys.executable, "-m", "bench.driver", str(self.config), str(count)],
            env=self.env, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60 + count, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            msg = f"bench.driver failed: {proc.stderr.strip()[-500:]}"
            raise RuntimeError(msg)
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        first, last, beats = got["after_first"], got["after_last"], got["heartbeats"]
        self.results.add(
            Row(
                "5. memory",
                f"VmRSS / VmHWM after the first heartbeat and after {beats} more, back to back "
                f"(`python -m bench.driver`: gtd run's modules, loop and pokes; {self.extra} "
                "extra sessions)",
                "RSS ≤ 16 MB after 1,000 heartbeats",
                f"{mb(first['VmRSS'])} / {mb(first['VmHWM'])} → {mb(last['VmRSS'])} / "
                f"{mb(last['VmHWM'])}",
                "-",
                f"growth {mb(last['VmRSS'] - first['VmRSS'])} over {beats} heartbeats; "
                f"{got['cpu_s'] / max(beats, 1) * 1000:.1f} ms CPU and "
                f"{got['tmux_commands_per_heartbeat']:.1f} tmux commands per heartbeat",
                last["VmRSS"] <= 16 * 1024,
            )
        )
