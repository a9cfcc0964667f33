"""Atomic files and state.json: never half-written, bad files are clear errors."""

from __future__ import annotations

import json
import os
import pathlib

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
