"""Faults in the town's files, through the running service: a full disk, hostile files.

A full disk is a small tmpfs mounted as the town root. The sandbox's user manager
runs in its own mount namespace, so the tmpfs is mounted there (``nsenter``), the
test reads the town through ``/proc/<pid>/root`` and runs ``gtd`` there too: the
daemon, its agents and the CLI all see the same small filesystem.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pathlib
import shutil
import stat
import subprocess
import typing as t

import pytest

from gtd import lifecycle
from gtd.request import new_id
from gtd.spool import spool_dir
from tests.sandbox import JournalEntry, wait_equal, wait_for
from tests.system.towns import DAEMON, TMUX, Town

if t.TYPE_CHECKING:
    from collections.abc import Iterator

TMPFS_SIZE = "512k"
REQUEST = {"identity": "deacon", "action": "cycle", "created_at": "2025-01-01T00:00:00Z",
           "from": "test"}  # fmt: skip


@dataclasses.dataclass
class SmallTown:
    """A town whose root is a tmpfs of :data:`TMPFS_SIZE` in the user manager's namespace."""

    town: Town
    ns_pid: int
    """A process in the user manager's mount namespace."""

    @property
    def root(self) -> pathlib.Path:
        """The town root as the daemon sees it (on the tmpfs)."""
        return pathlib.Path(f"/proc/{self.ns_pid}/root") / self.town.root.relative_to("/")

    @property
    def filler(self) -> pathlib.Path:
        return self.root / "filler"

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run *argv* as the sandbox user (in the manager's mount namespace, as always)."""
        return self.town.um.run(*argv, check=False, timeout=60)

    def fill(self) -> None:
        """Write to the filler until the tmpfs is full (ENOSPC); safe to call again."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchown(fd, self.town.um.uid, self.town.um.gid)
            chunk = bytes(64 * 1024)
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
                    return
        finally:
            os.close(fd)

    def write(self, rel: str, data: bytes, mode: int = 0o600) -> pathlib.Path:
        """Write a file on the tmpfs owned by the sandbox user (directories created)."""
        path = self.root / rel
        for parent in reversed(path.relative_to(self.root).parents[:-1]):
            if not (self.root / parent).exists():
                (self.root / parent).mkdir()
                os.chown(self.root / parent, self.town.um.uid, self.town.um.gid)
        path.write_bytes(data)
        os.chown(path, self.town.um.uid, self.town.um.gid)
        path.chmod(mode)
        return path


def nsenter(ns_pid: int, *argv: str) -> None:
    subprocess.run(
        ["nsenter", f"--target={ns_pid}", "--mount", "--", *argv],
        check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
    )  # fmt: skip


@pytest.fixture
def outside(town: Town) -> Iterator[pathlib.Path]:
    """A directory of the sandbox user's outside the town, removed afterwards."""
    path = town.um.home / f"{town.name}-outside"
    path.mkdir()
    os.chown(path, town.um.uid, town.um.gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def small_town(town: Town, outside: pathlib.Path) -> Iterator[SmallTown]:
    """The town root is a small tmpfs; heartbeats every 2 s; the agent logs outside it.

    The tmpfs is unmounted (lazily) afterwards, failed test or not, once the units
    are stopped.
    """
    ns_pid = town.um.ns_pid
    assert ns_pid is not None
    town.root.mkdir(exist_ok=True)  # `gtd units install` creates it (ReadWritePaths=)
    assert [] == os.listdir(town.root)
    os.chown(town.root, town.um.uid, town.um.gid)
    um = town.um
    opts = f"size={TMPFS_SIZE},mode=0755,uid={um.uid},gid={um.gid}"
    nsenter(ns_pid, "mount", "-t", "tmpfs", "-o", opts, "gtd-small-town", str(town.root))
    try:
        town.agent_log = outside / "log"
        town.write_config(town.config_text(heartbeat_interval='"2s"'))
        small = SmallTown(town, ns_pid)
        assert "tmpfs" in small.run("stat", "-f", "-c", "%T", str(town.root)).stdout
        yield small
    finally:
        um.systemctl("stop", DAEMON, TMUX, check=False)
        nsenter(ns_pid, "umount", "-l", str(town.root))


def no_space_errors(town: Town, cursor: str | None, name: str) -> list[JournalEntry]:
    """Error entries since *cursor* about writing *name* on a full disk."""
    return [
        e for e in town.um.journal(DAEMON, after_cursor=cursor)
        if e.get("PRIORITY") == "3" and name in str(e.get("MESSAGE"))
        and "No space left on device" in str(e.get("MESSAGE"))
    ]  # fmt: skip


def heartbeat_count(small: SmallTown) -> int:
    try:
        count = json.loads((small.root / "daemon" / "state.json").read_text())["heartbeat_count"]
    except (OSError, ValueError, KeyError):
        return -1
    return int(count)


def spool(small: SmallTown, sub: str) -> list[str]:
    return sorted(os.listdir(small.root / "daemon" / "lifecycle" / sub))


# -- a full disk -------------------------------------------------------------------


def test_a_full_disk_keeps_state_json_and_the_daemon_recovers(small_town: SmallTown) -> None:
    """state.json writes fail on a full tmpfs: old file intact, error logged, no crash.

    ``gtd request`` fails with one clear line and leaves no partial file. Once the
    filler is deleted the daemon writes state.json again on its own.
    """
    small, town = small_town, small_town.town
    town.start()
    wait_for(lambda: heartbeat_count(small), lambda n: n >= 1, what="the first heartbeat")
    deacon_state = small.write("deacon/state.json", b'{"mood": "ok"}\n', 0o644)
    main, state = town.main_pid(), small.root / "daemon" / "state.json"
    cursor = town.um.journal_cursor()

    def failures() -> int:
        small.fill()  # top up: a write in flight while filling can free a page afterwards
        return len(no_space_errors(town, cursor, "state.json"))

    wait_for(failures, lambda n: n >= 1, timeout=30, context=town.messages)
    before = state.read_bytes()
    cursor = town.um.journal_cursor()
    wait_for(failures, lambda n: n >= 2, timeout=30, context=town.messages)
    assert before == state.read_bytes()
    assert json.loads(before)["pid"] == main
    assert [] == [n for n in os.listdir(small.root / "daemon") if n.endswith(".tmp")]
    assert ("active", main) == (town.show("ActiveState")["ActiveState"], town.main_pid())
    status = town.show("StatusText")["StatusText"]
    assert "cannot write state.json: No space left on device" in status

    for argv in (("deacon", "cycle"), ("deacon", "cycle", "--force")):
        proc = small.run(str(town.gtd), "request", *argv)
        assert 1 == proc.returncode
        assert 1 == len(proc.stderr.splitlines()), proc.stderr
        assert "No space left on device" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert ([], [], [], "") == (
            spool(small, "tmp"), spool(small, "new"), spool(small, "cur"), proc.stdout
        )  # fmt: skip
    assert b'{"mood": "ok"}\n' == deacon_state.read_bytes()

    small.filler.unlink()
    count = json.loads(before)["heartbeat_count"]
    wait_for(lambda: heartbeat_count(small), lambda n: n > count + 1, timeout=30,
             context=town.messages)  # fmt: skip
    cursor = town.um.journal_cursor()
    seen = heartbeat_count(small)
    wait_for(lambda: heartbeat_count(small), lambda n: n > seen, timeout=30)
    assert [] == no_space_errors(town, cursor, "")
    props = town.show("ActiveState", "MainPID", "NRestarts", "StatusText")
    assert "No space" not in props["StatusText"]
    assert ("active", str(main), "0") == (
        props["ActiveState"],
        props["MainPID"],
        props["NRestarts"],
    )


def test_a_full_disk_at_the_flag_clear_keeps_the_request(small_town: SmallTown) -> None:
    """The agent state file cannot be rewritten (ENOSPC) after a cycle: the request waits.

    Room is left for the small spool files but not for the large agent state file,
    so the failure is exactly the flag clearing. The request stays in cur/ past
    MAX_ATTEMPTS heartbeats, the state file keeps its old bytes, the agent is not
    cycled again; once the filler goes, the flag is cleared and the request is done.
    """
    small, town = small_town, small_town.town
    town.start()
    first = town.deacon_pid()
    big = {"requesting_cycle": True, "requesting_time": "2025-01-01T00:00:00Z",
           "notes": "x" * 120_000}  # fmt: skip
    deacon_state = small.write("deacon/state.json", json.dumps(big).encode(), 0o644)
    old = deacon_state.read_bytes()
    reserve = small.write("reserve", bytes(64 * 1024))  # room for spool files, not for 120 KB
    small.fill()
    reserve.unlink()
    cursor = town.um.journal_cursor()
    proc = small.run(str(town.gtd), "request", "deacon", "cycle")
    assert 0 == proc.returncode, proc.stderr
    rid = proc.stdout.strip()

    def waits(e: JournalEntry) -> bool:
        return e.get("GTD_REQUEST_ID") == rid and "waits for disk space" in str(e.get("MESSAGE"))

    entry = town.um.wait_journal(DAEMON, waits, after_cursor=cursor, timeout=10)
    assert "No space left on device" in entry["MESSAGE"]
    assert str(town.root / "deacon" / "state.json") in entry["MESSAGE"]
    assert ("4", "retry") == (entry.get("PRIORITY"), entry.get("GTD_OUTCOME"))
    cycled = town.new_deacon(first)

    def waited() -> int:
        return sum(1 for e in town.um.journal(DAEMON, after_cursor=cursor) if waits(e))

    wait_for(waited, lambda n: n > lifecycle.MAX_ATTEMPTS, timeout=60, context=town.messages)
    assert ([f"{rid}.json"], [], []) == (
        spool(small, "cur"),
        spool(small, "failed"),
        spool(small, "new"),
    )
    assert old == deacon_state.read_bytes()
    assert cycled == town.deacon_pid()

    small.filler.unlink()
    done = town.um.wait_journal(
        DAEMON, lambda e: (e.get("GTD_REQUEST_ID"), e.get("GTD_OUTCOME")) == (rid, "done"),
        after_cursor=cursor, timeout=10,
    )  # fmt: skip
    assert "done" in done["MESSAGE"]
    state = json.loads(deacon_state.read_text())
    assert ("requesting_cycle" not in state, big["notes"]) == (True, state.get("notes"))
    assert ([], []) == (spool(small, "cur"), spool(small, "failed"))
    assert cycled == town.deacon_pid()
    assert "active" == town.show("ActiveState")["ActiveState"]


# -- hostile and corrupt files -------------------------------------------------------


def request_bytes(rid: str) -> bytes:
    return json.dumps({"id": rid, **REQUEST}).encode()


def failed_reasons(town: Town) -> dict[str, str]:
    base = spool_dir(town.root) / "failed"
    if not base.exists():
        return {}
    return {p.stem: json.loads(p.read_text())["reason"] for p in base.glob("*.json")}


def test_hostile_spool_files_fail_and_the_service_stays_up(
    town: Town, outside: pathlib.Path
) -> None:
    """A symlink out of the town, a request someone else owns or anyone can write, a FIFO.

    Each is failed unread with its reason and a journal line with its request id;
    the file outside is untouched, the deacon is not cycled, the daemon is not hurt.
    A world-writable spool dir is refused as a whole until a person fixes it.
    """
    town.start()
    main, deacon = town.main_pid(), town.deacon_pid()
    new = spool_dir(town.root) / "new"
    wait_for(new.is_dir, what=f"{new} to exist")
    state = town.um.write_file(
        (town.root / "deacon" / "state.json").relative_to(town.um.home),
        '{"requesting_cycle": true}',
    )
    uid = town.um.uid
    secret = outside / "secret.json"
    ids = [new_id() for _ in range(5)]
    secret.write_bytes(request_bytes(ids[0]))
    os.chown(secret, uid, town.um.gid)
    os.utime(secret, ns=(1_000_000_000, 1_000_000_000))
    (new / f"{ids[0]}.json").symlink_to(secret)
    os.lchown(new / f"{ids[0]}.json", uid, town.um.gid)
    town.um.write_file((new / f"{ids[1]}.json").relative_to(town.um.home), "", 0o666)
    (new / f"{ids[1]}.json").write_bytes(request_bytes(ids[1]))
    (new / f"{ids[2]}.json").write_bytes(request_bytes(ids[2]))  # root's: not the daemon's
    os.mkfifo(new / f"{ids[3]}.json", 0o600)
    os.chown(new / f"{ids[3]}.json", uid, town.um.gid)
    root = 65534 if town.show("PrivateUsers")["PrivateUsers"] == "yes" else 0  # unmapped: nobody
    town.um.systemctl("kill", "-s", "USR1", DAEMON)
    expected = {
        ids[0]: "not a regular file (symlink); left unread",
        ids[1]: "not trusted: writable by group or others (mode 0666); left unread",
        ids[2]: f"not trusted: owned by uid {root}, not by the daemon's uid {uid}; left unread",
        ids[3]: "not a regular file (FIFO); left unread",
    }
    assert expected == wait_equal(expected, lambda: failed_reasons(town), context=town.messages)

    def failures_logged() -> dict[str, str | None]:
        entries = [e for e in town.journal() if e.get("GTD_OUTCOME") == "failed"]
        return {str(e.get("GTD_REQUEST_ID")): e.get("PRIORITY") for e in entries}

    # Each is logged once its file has left new/: the journal is the last thing to wait on.
    logged = wait_for(failures_logged, lambda seen: set(ids[:4]) <= seen.keys())
    assert dict.fromkeys(ids[:4], "3") == {rid: logged[rid] for rid in ids[:4]}
    assert request_bytes(ids[0]) == secret.read_bytes()
    assert 1_000_000_000 == secret.stat().st_mtime_ns
    assert ([], []) == (os.listdir(new), os.listdir(new.parent / "cur"))

    new.chmod(0o777)
    cursor = town.um.journal_cursor()
    refused = town.um.run(str(town.gtd), "request", "deacon", "cycle", check=False)
    assert (1, "") == (refused.returncode, refused.stdout)  # gtd will not queue into it either
    assert "the spool is not trusted" in refused.stderr
    (new / f"{ids[4]}.json").write_bytes(request_bytes(ids[4]))
    os.chown(new / f"{ids[4]}.json", uid, town.um.gid)
    town.um.systemctl("kill", "-s", "USR1", DAEMON)
    entry = town.um.wait_journal(
        DAEMON, lambda e: "the spool is not trusted" in str(e.get("MESSAGE")),
        after_cursor=cursor, timeout=10,
    )  # fmt: skip
    assert f"{new} is writable by group or others (mode 0777)" in entry["MESSAGE"]
    assert ("3", [f"{ids[4]}.json"]) == (entry.get("PRIORITY"), os.listdir(new))
    assert 0o777 == stat.S_IMODE(new.stat().st_mode)
    assert (main, deacon) == (town.main_pid(), town.deacon_pid())
    assert json.loads(state.read_text())["requesting_cycle"] is True

    new.chmod(0o700)  # a person fixes it: the next pass carries the request out
    town.um.systemctl("kill", "-s", "USR1", DAEMON)
    town.new_deacon(deacon)
    assert ("active", main) == (town.show("ActiveState")["ActiveState"], town.main_pid())


class Corrupt(t.NamedTuple):
    test_id: str
    content: bytes | None
    """None: a symlink to a file outside the town."""
    problem: str


CORRUPT = [
    Corrupt("binary", b"\x00\x01\xff\xfe" * 64, "not UTF-8"),
    Corrupt("json-array", b'[{"heartbeat_count": 5}]', "not a JSON object but list"),
    Corrupt("huge", b'{"x": "' + b"x" * (2 << 20) + b'"}', "larger than 1048576 bytes"),
    Corrupt("symlink-outside", None, "cannot open: Too many levels of symbolic links"),
]


@pytest.mark.parametrize("case", CORRUPT, ids=[c.test_id for c in CORRUPT])
def test_a_corrupt_state_json_is_replaced_at_start(
    case: Corrupt, town: Town, outside: pathlib.Path
) -> None:
    """The service starts anyway, warns naming state.json, and writes a regular file.

    A symlink's target outside the town keeps its content and mtime.
    """
    path = town.root / "daemon" / "state.json"
    town.um.write_file(path.relative_to(town.um.home), "")
    target = outside / "precious.json"
    target.write_text('{"heartbeat_count": 41}')
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    if case.content is None:
        path.unlink()
        path.symlink_to(target)
        os.lchown(path, town.um.uid, town.um.gid)
    else:
        path.write_bytes(case.content)
    town.start()
    entry = town.um.wait_journal(
        DAEMON, lambda e: "ignoring the daemon state file" in str(e.get("MESSAGE")),
        after_cursor=town.cursor,
    )  # fmt: skip
    assert f"{path}: {case.problem}" in entry["MESSAGE"]
    assert "4" == entry.get("PRIORITY")
    assert stat.S_ISREG(path.lstat().st_mode)
    state = json.loads(path.read_text())
    assert (True, town.main_pid()) == (state["running"], state["pid"])
    assert ('{"heartbeat_count": 41}', 1_000_000_000) == (
        target.read_text(), target.stat().st_mtime_ns
    )  # fmt: skip
    assert ("active", "0") == (
        town.show("ActiveState")["ActiveState"], town.show("NRestarts")["NRestarts"]
    )  # fmt: skip
