"""sd_notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING to the service manager.

Sent through ``sdnotify``, wrapped with python-systemd's semantics: a no-op
returning ``False`` outside systemd, ``@`` mapped to an abstract socket, and a
broken socket raised for the caller to decide on. sdnotify falls short twice: it
reads ``NOTIFY_SOCKET`` from ``os.environ`` itself and swallows every error
unless ``debug=True``; so this module connects the socket from the environment it
was given and hands it to sdnotify, with ``debug=True``, for sending.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import typing as t

import sdnotify

logger = logging.getLogger(__name__)


class Notifier:
    """The daemon's line to systemd.

    Parameters
    ----------
    env
        Where ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` are read.
    """

    def __init__(self, env: t.Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.socket = env.get("NOTIFY_SOCKET", "")
        self._notifier: sdnotify.SystemdNotifier | None = None
        self._last_status: str | None = None
        self.watchdog_interval = _watchdog_interval(env)
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when off."""

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; ``False`` when not under systemd.

        Raises
        ------
        OSError
            The socket is set but broken.
        """
        if not self.socket:
            return False
        if self._notifier is None:
            self._notifier = _connect(self.socket)
        payload = "\n".join(f.replace("\n", " ") for f in fields)
        # sdnotify encodes latin-1; anything else becomes '?', never an exception.
        self._notifier.notify(payload.encode("latin-1", "replace").decode("latin-1"))
        return True

    def ready(self, status: str) -> bool:
        """``READY=1`` with a status line."""
        self._last_status = status
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        """``STATUS=``, only when it changed."""
        if status == self._last_status:
            return False
        self._last_status = status
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: call only from the working loop."""
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (required by newer systemd)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str) -> bool:
        """``STOPPING=1`` with a status line."""
        self._last_status = status
        return self.notify("STOPPING=1", f"STATUS={status}")


def _connect(address: str) -> sdnotify.SystemdNotifier:
    """An sdnotify notifier on *address* that raises instead of swallowing."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect("\0" + address[1:] if address.startswith("@") else address)
    except OSError:
        sock.close()
        raise
    notifier = sdnotify.SystemdNotifier.__new__(sdnotify.SystemdNotifier)
    notifier.debug = True
    notifier.socket = sock
    return notifier


def _watchdog_interval(env: t.Mapping[str, str]) -> float | None:
    """Half of ``WATCHDOG_USEC`` when the watchdog is meant for this process.

    >>> _watchdog_interval({"WATCHDOG_USEC": "10000000"})
    5.0
    >>> _watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None
    True
    """
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000
