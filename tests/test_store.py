"""Atomic files and state.json: never half-written, bad files are clear errors."""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import stat
import threading
import typing as t

import pytest

from gtd import store
from gtd.exc import StateError


def test_atomic_write_replaces_whole(tmp_path: pathlib.Path) -> None:
    """The new content replaces the old; no temp file is left behind."""
    path = tmp_path / "d" / "f.json"
    path.parent.mkdir()
    path.write_text("old")
    store.atomic_write(path, b"new")
    assert ["f.json"] == os.listdir(path.parent)
    assert "new" == path.read_text()


def test_failed_write_keeps_the_old_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If fsync fails (as on a full disk), the old file is intact and the temp file is gone."""
    path = tmp_path / "d" / "state.json"
    path.parent.mkdir()
    path.write_text('{"a": 1}')

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        store.write_json(path, {"a": 2})
    assert ["state.json"] == os.listdir(path.parent)
    assert {"a": 1} == json.loads(path.read_text())


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"[1, 2]", "not a JSON object but list"),
        (b"{nope", "not JSON"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b"{" + b" " * (store.MAX_STATE_BYTES + 1) + b"}", "larger than"),
    ],
    ids=["array", "malformed", "binary", "huge"],
)
def test_read_json_object_rejects(tmp_path: pathlib.Path, content: bytes, problem: str) -> None:
    """Each kind of bad file is a StateError naming the file and the problem."""
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateError, match=problem) as exc:
        store.read_json_object(path)
    assert str(path) in str(exc.value)


def test_read_json_object_refuses_symlinks(tmp_path: pathlib.Path) -> None:
    """A symlink (e.g. to a file outside the town) is not followed."""
    target = tmp_path / "outside.json"
    target.write_text('{"secret": 1}')
    link = tmp_path / "state.json"
    link.symlink_to(target)
    with pytest.raises(StateError, match="cannot open"):
        store.read_json_object(link)


def test_daemon_state_round_trip_keeps_upstream_keys(tmp_path: pathlib.Path) -> None:
    """state.json has upstream's keys, and a bad file loads as a fresh state."""
    state = store.DaemonState(running=True, pid=42, started_at="t", heartbeat_count=3)
    (tmp_path / "daemon").mkdir()
    store.save_daemon_state(tmp_path, state)
    raw = json.loads(store.state_path(tmp_path).read_text())
    assert {"running", "pid", "started_at", "last_heartbeat", "heartbeat_count"} <= raw.keys()
    assert state == store.load_daemon_state(tmp_path)
    store.state_path(tmp_path).write_text('{"pid": "nope", "heartbeat_count": true}')
    assert store.DaemonState() == store.load_daemon_state(tmp_path)


def test_a_failed_write_names_the_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from a write carries the target's name, so a log line says which file."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    path = tmp_path / "d" / "state.json"
    path.parent.mkdir()
    with pytest.raises(OSError, match="No space left on device") as exc:
        store.atomic_write(path, b"{}")
    assert (errno.ENOSPC, str(path)) == (exc.value.errno, exc.value.filename)
    assert [] == os.listdir(path.parent)


def test_atomic_write_replaces_a_symlink_and_leaves_its_target(tmp_path: pathlib.Path) -> None:
    """A symlink at the path (to a file outside the town) becomes a regular file.

    The link's target keeps its content and mtime: nothing outside the town is written.
    """
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    os.utime(outside, ns=(1_000_000_000, 1_000_000_000))
    town = tmp_path / "town"
    (town / "daemon").mkdir(parents=True)
    store.state_path(town).symlink_to(outside)
    store.save_daemon_state(town, store.DaemonState(pid=7))
    assert stat.S_ISREG(store.state_path(town).lstat().st_mode)
    assert 7 == json.loads(store.state_path(town).read_text())["pid"]
    assert ("precious\n", 1_000_000_000) == (outside.read_text(), outside.stat().st_mtime_ns)


def test_read_json_object_never_blocks_on_a_fifo(tmp_path: pathlib.Path) -> None:
    """A FIFO is refused at once; opening it for reading would wait for a writer forever."""
    path = tmp_path / "state.json"
    os.mkfifo(path)
    result: list[BaseException] = []

    def read() -> None:
        try:
            store.read_json_object(path)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            result.append(err)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # free the blocked reader before failing
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail("read_json_object blocked on a FIFO")
    [err] = result
    assert isinstance(err, StateError)
    assert f"{path}: not a regular file" == str(err)


class BadState(t.NamedTuple):
    test_id: str
    make: t.Callable[[pathlib.Path, pathlib.Path], object]
    problem: str


BAD_STATES = [
    BadState("binary", lambda p, _: p.write_bytes(b"\x00\xff\xfe garbage"), "not UTF-8"),
    BadState("truncated", lambda p, _: p.write_bytes(b'{"pid": 4'), "not JSON"),
    BadState("array", lambda p, _: p.write_bytes(b"[1, 2]"), "not a JSON object but list"),
    BadState(
        "huge",
        lambda p, _: p.write_bytes(b'{"x": "' + b"x" * store.MAX_STATE_BYTES + b'"}'),
        "larger than 1048576 bytes",
    ),
    BadState("symlink", lambda p, out: p.symlink_to(out), "cannot open"),
]


@pytest.mark.parametrize("case", BAD_STATES, ids=[c.test_id for c in BAD_STATES])
def test_a_bad_daemon_state_is_a_warning_and_a_fresh_start(
    case: BadState, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreadable state.json loads as a fresh state with one warning naming the file."""
    outside = tmp_path / "outside.json"
    outside.write_text('{"heartbeat_count": 99}')
    town = tmp_path / "town"
    (town / "daemon").mkdir(parents=True)
    case.make(store.state_path(town), outside)
    caplog.set_level(logging.DEBUG, logger="gtd")
    assert store.DaemonState() == store.load_daemon_state(town)
    [record] = caplog.records
    assert (logging.WARNING, "gtd.store") == (record.levelno, record.name)
    assert f"{store.state_path(town)}: {case.problem}" in record.getMessage()
    assert '{"heartbeat_count": 99}' == outside.read_text()


def test_a_missing_daemon_state_is_no_warning(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first start (no state.json yet) is normal: a fresh state, nothing logged."""
    caplog.set_level(logging.DEBUG, logger="gtd")
    assert store.DaemonState() == store.load_daemon_state(tmp_path)
    assert [] == caplog.records
