"""sd_notify against a real datagram socket (python-systemd's test_notify_with_socket)."""

from __future__ import annotations

import os
import pathlib
import socket
import typing as t

import pytest

from gtd.notify import MAX_FIELD_BYTES, Notifier


@pytest.fixture
def notify_socket(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> t.Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    yield sock
    sock.close()


def test_outside_systemd_is_a_noop() -> None:
    """Without NOTIFY_SOCKET nothing is sent and the call says so."""
    assert Notifier().ready("x") is False
    assert Notifier(env={}).watchdog() is False


def test_empty_env_is_a_noop_under_systemd(notify_socket: socket.socket) -> None:
    """A notifier given an environment without NOTIFY_SOCKET sends nothing, even under systemd."""
    assert Notifier(env={}).ready("not sent") is False
    assert Notifier().watchdog()
    assert b"WATCHDOG=1" == notify_socket.recv(4096)  # the first datagram is the second call's


def test_ready_and_status(notify_socket: socket.socket) -> None:
    """READY=1 comes with STATUS; an unchanged status is not sent again."""
    n = Notifier()
    assert n.ready("deacon running")
    assert b"READY=1\nSTATUS=deacon running" == notify_socket.recv(4096)
    assert n.status("deacon running") is False
    assert n.status("deacon backoff")
    assert b"STATUS=deacon backoff" == notify_socket.recv(4096)


def test_status_text_arrives_as_utf8(notify_socket: socket.socket) -> None:
    """Non-Latin STATUS text reaches systemd intact as UTF-8 (systemd drops non-UTF-8 STATUS)."""
    text = "deacon \u276f gästown-witness → 再起動"  # U+276F: Claude Code's prompt
    assert Notifier().ready(text)
    assert f"READY=1\nSTATUS={text}".encode() == notify_socket.recv(4096)


def test_fields_are_cleaned(notify_socket: socket.socket) -> None:
    """Newlines, NUL and undecodable text cannot split, void or break the datagram."""
    assert Notifier().status("a\nb\0c \udcff")
    assert b"STATUS=a b\\0c ?" == notify_socket.recv(4096)


def test_long_status_cannot_drop_ready(notify_socket: socket.socket) -> None:
    """A status far over systemd's 4096-byte datagram limit is cut, so READY=1 still arrives."""
    assert Notifier().ready("ü" * 10_000)
    ready, status = notify_socket.recv(65536).decode().split("\n")
    assert "READY=1" == ready
    assert MAX_FIELD_BYTES == len(status.encode())
    assert status.startswith("STATUS=üü")
    assert status.endswith("…")


def test_stopping_reloading_watchdog(notify_socket: socket.socket) -> None:
    """STOPPING, RELOADING with MONOTONIC_USEC, and WATCHDOG go out as systemd expects."""
    n = Notifier()
    n.watchdog()
    assert b"WATCHDOG=1" == notify_socket.recv(4096)
    n.reloading()
    fields = notify_socket.recv(4096).decode().split("\n")
    assert "RELOADING=1" == fields[0]
    assert fields[1].startswith("MONOTONIC_USEC=")
    n.stopping("bye")
    assert b"STOPPING=1\nSTATUS=bye" == notify_socket.recv(4096)


def test_broken_socket_is_raised(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NOTIFY_SOCKET nobody listens on is an error the caller sees, not swallowed."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError):
        Notifier().notify("READY=1")


def test_socket_gone_from_environment_is_raised(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOTIFY_SOCKET unset after start is an error, not a silent no-op."""
    n = Notifier()
    monkeypatch.delenv("NOTIFY_SOCKET")
    with pytest.raises(OSError, match="no longer in the process environment"):
        n.watchdog()


def test_other_socket_than_the_process_is_refused(notify_socket: socket.socket) -> None:
    """A NOTIFY_SOCKET not the process's is refused: libsystemd sends only to that one."""
    with pytest.raises(ValueError, match="not the process environment's"):
        Notifier(env={"NOTIFY_SOCKET": "/run/other/notify"})


def test_watchdog_interval_is_half_and_pid_checked() -> None:
    """WATCHDOG_USEC gives half the period; a WATCHDOG_PID of another process turns it off."""
    assert 5.0 == Notifier(env={"WATCHDOG_USEC": "10000000"}).watchdog_interval
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert 1.0 == Notifier(env=mine).watchdog_interval
    other = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
    assert Notifier(env=other).watchdog_interval is None


def test_abstract_socket_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NOTIFY_SOCKET starting with @ names an abstract socket (leading NUL)."""
    name = f"gtd-test-{os.getpid()}-{os.urandom(4).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert Notifier().watchdog()
        assert b"WATCHDOG=1" == sock.recv(4096)
    finally:
        sock.close()
