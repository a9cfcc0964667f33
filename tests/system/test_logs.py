"""`gtd logs` under a real user manager, on entries the service itself wrote.

Each test compares `gtd logs` with what `journalctl --user -u gastown-daemon` returns
for the same journal, so a wrong match (unit, user, identity, time) shows as a
difference.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import signal
import subprocess
import typing as t

from tests.sandbox import retry_until
from tests.system.towns import DAEMON, Town

if t.TYPE_CHECKING:
    from tests.sandbox import JournalEntry


def expected_line(entry: JournalEntry) -> str:
    """The line gtd logs prints for a `journalctl -o json` entry (its format, rebuilt)."""
    stamp = datetime.datetime.fromtimestamp(int(entry["__REALTIME_TIMESTAMP"]) / 1e6)
    who = f"{entry.get('SYSLOG_IDENTIFIER') or entry.get('_COMM')}[{entry['_PID']}]"
    fields = " ".join(f"{k}={entry[k]}" for k in sorted(entry) if k.startswith("GTD_"))
    line = f"{stamp:%b %d %H:%M:%S} {who}: {entry['MESSAGE']}"
    return f"{line} [{fields}]" if fields else line


def started(town: Town) -> list[JournalEntry]:
    """Start the service and return the unit's whole journal once the deacon is up."""
    town.start()
    town.um.wait_journal(DAEMON, lambda e: "started deacon" in str(e.get("MESSAGE")))
    return town.um.journal(DAEMON)


def test_logs_show_what_journalctl_shows(town: Town) -> None:
    """`gtd logs` prints every entry of `journalctl --user -u`, in order, with GTD_* fields."""
    entries = started(town)
    out = town.gtd_cmd("logs").splitlines()
    assert [expected_line(e) for e in entries] == out
    assert any("started deacon" in ln and "GTD_IDENTITY=deacon" in ln for ln in out)
    # The user manager's own words about the unit (USER_UNIT=) are there too.
    assert any(e.get("USER_UNIT") == DAEMON for e in entries)


def test_logs_last_n_and_identity(town: Town) -> None:
    """-n N gives the last N entries; --identity only the service's entries about that agent."""
    entries = started(town)
    assert [expected_line(e) for e in entries[-2:]] == town.gtd_cmd("logs", "-n", "2").splitlines()
    deacon = [expected_line(e) for e in entries if e.get("GTD_IDENTITY") == "deacon"]
    assert deacon
    assert deacon == town.gtd_cmd("logs", "--identity", "deacon").splitlines()
    assert deacon == town.gtd_cmd("logs", "--identity", "deacon/").splitlines()
    # An agent no test ever logs about (the journal is shared by the whole session).
    assert ["-- No entries --"] == town.gtd_cmd("logs", "--identity", "zz-crew-none").splitlines()


def test_logs_since(town: Town) -> None:
    """--since TIME gives the entries from that second on; a future time gives none."""
    entries = started(town)
    town.um.systemctl("kill", "-s", "USR1", DAEMON)
    town.um.wait_journal(DAEMON, lambda e: "SIGUSR1" in str(e.get("MESSAGE")))
    entries = town.um.journal(DAEMON)
    last = datetime.datetime.fromtimestamp(int(entries[-1]["__REALTIME_TIMESTAMP"]) / 1e6)
    floor = last.replace(microsecond=0)
    want = [
        expected_line(e)
        for e in entries
        if int(e["__REALTIME_TIMESTAMP"]) >= floor.timestamp() * 1e6
    ]
    assert want == town.gtd_cmd("logs", "--since", f"{floor:%Y-%m-%d %H:%M:%S}").splitlines()
    tomorrow = f"{datetime.date.today() + datetime.timedelta(days=1)}"
    assert ["-- No entries --"] == town.gtd_cmd("logs", "--since", tomorrow).splitlines()
    assert [expected_line(e) for e in entries] == town.gtd_cmd(
        "logs", "--since", "1 day ago"
    ).splitlines()


def test_logs_bad_arguments_are_usage_errors(town: Town) -> None:
    """A bad --since or --identity exits 2 with one line naming it, no traceback."""
    for args, word in ((["--since", "soonish"], "soonish"), (["--identity", "../x"], "../x")):
        proc = town.um.run(str(town.gtd), "logs", *args, check=False)
        assert (2, "") == (proc.returncode, proc.stdout)
        assert word in proc.stderr
        assert "Traceback" not in proc.stderr


def test_logs_follow_prints_new_entries(town: Town, tmp_path: pathlib.Path) -> None:
    """`gtd logs -f` prints an entry the service writes after it started following."""
    started(town)
    out = tmp_path / "follow.out"
    um = town.um
    env = [f"HOME={um.home}", f"USER={um.user}", f"XDG_RUNTIME_DIR={um.runtime_dir}"]
    # As UserManager.run does: in the manager's mount namespace, where its journal is.
    ns = um.ns_pid
    enter = [] if ns is None else ["nsenter", f"--target={ns}", "--mount", f"--wd={um.home}"]
    argv = [*enter, "runuser", "-u", um.user, "--", "/usr/bin/env", "-i", *env, str(town.gtd)]
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [*argv, "logs", "-f", "-n", "1"],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # The one old line is out: the follower is past its first read.
        assert retry_until(lambda: len(out.read_text().splitlines()) == 1, 10), out.read_text()
        um.systemctl("kill", "-s", "USR1", DAEMON)
        assert retry_until(lambda: "SIGUSR1" in out.read_text(), 10), out.read_text()
        assert proc.poll() is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=10)
    assert 130 == proc.returncode
    assert "Traceback" not in out.read_text()
