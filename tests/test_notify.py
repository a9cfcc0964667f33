"""sd_notify against a real datagram socket (python-systemd's test_notify_with_socket)."""

from __future__ import annotations

import os
import pathlib
import socket
import typing as t

import pytest

from gtd.notify import Notifier


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
    assert Notifier(env={}).ready("x") is False


def test_ready_and_status(notify_socket: socket.socket) -> None:
    """READY=1 comes with STATUS; an unchanged status is not sent again."""
    n = Notifier()
    assert n.ready("deacon running")
    assert b"READY=1\nSTATUS=deacon running" == notify_socket.recv(4096)
    assert n.status("deacon running") is False
    assert n.status("deacon backoff")
    assert b"STATUS=deacon backoff" == notify_socket.recv(4096)


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


def test_broken_socket_is_raised(tmp_path: pathlib.Path) -> None:
    """A NOTIFY_SOCKET nobody listens on is an error the caller sees, not swallowed."""
    with pytest.raises(OSError):  # noqa: PT011 - any socket error is the point
        Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone")}).notify("READY=1")


def test_watchdog_interval_is_half_and_pid_checked() -> None:
    """WATCHDOG_USEC gives half the period; a WATCHDOG_PID of another process turns it off."""
    assert 5.0 == Notifier(env={"WATCHDOG_USEC": "10000000"}).watchdog_interval
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert 1.0 == Notifier(env=mine).watchdog_interval
    other = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
    assert Notifier(env=other).watchdog_interval is None


def test_abstract_socket_address() -> None:
    """A NOTIFY_SOCKET starting with @ names an abstract socket (leading NUL)."""
    name = f"gtd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier(env={"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert b"WATCHDOG=1" == sock.recv(4096)
    finally:
        sock.close()
