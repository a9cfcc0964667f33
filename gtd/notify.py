"""sd_notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING to the service manager.

Sent with python-systemd's ``systemd.daemon.notify``, libsystemd's own sd_notify(3):
it returns ``False`` when ``NOTIFY_SOCKET`` is unset (a no-op outside systemd), reads
a leading ``@`` as an abstract socket, sends the text as UTF-8 and raises ``OSError``
for a broken socket, which this module lets through for the caller to decide on.

``sdnotify`` is not used. It encodes with latin-1: "→" raises ``UnicodeEncodeError``
and "ü" goes out as the byte 0xFC, so systemd drops the whole STATUS line as "not
UTF-8 clean". Its ``SystemdNotifier`` also swallows every error unless
``debug=True``, and then raises ``TypeError`` outside systemd.
"""

from __future__ import annotations

import os
import time
import typing as t

# systemd.daemon.notify is this very function; systemd.daemon also imports the socket
# module (for one constant), 3 ms of start-up and a quarter megabyte of RSS.
from systemd._daemon import notify as sd_notify

MAX_FIELD_BYTES = 1024
"""Longest ``KEY=VALUE`` field sent, in UTF-8 bytes; longer ones are cut.

systemd ignores a whole datagram over 4096 bytes (``READY=1`` included), so a long
status line must never take the other fields with it.
"""


class Notifier:
    """The daemon's line to systemd.

    Parameters
    ----------
    env
        Where ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` are read
        (default ``os.environ``). Without ``NOTIFY_SOCKET`` every call is a no-op.

    Raises
    ------
    ValueError
        *env* names a ``NOTIFY_SOCKET`` other than the process environment's:
        libsystemd sends only to the one in the process environment.
    """

    def __init__(self, env: t.Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.socket = env.get("NOTIFY_SOCKET", "")
        if self.socket and self.socket != os.environ.get("NOTIFY_SOCKET", ""):
            msg = f"NOTIFY_SOCKET={self.socket!r} is not the process environment's"
            raise ValueError(msg)
        self._last_status: str | None = None
        self.watchdog_interval = _watchdog_interval(env)
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when off."""

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; ``False`` when not under systemd.

        Each field is made one line of valid UTF-8 without NUL and at most
        :data:`MAX_FIELD_BYTES` long, so systemd never drops the datagram for its text.
        Opens, sends and closes a socket each call; never blocks on a live manager.

        Raises
        ------
        OSError
            The socket is set but broken, or ``NOTIFY_SOCKET`` left the process
            environment since this notifier was made.
        """
        if not self.socket:
            return False
        if not sd_notify("\n".join(map(clean_field, fields))):
            msg = f"NOTIFY_SOCKET={self.socket!r} is no longer in the process environment"
            raise OSError(msg)
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


def clean_field(field: str) -> str:
    r"""One ``KEY=VALUE`` line that systemd accepts whatever text it carries.

    Newlines become spaces (a newline would start a new field), NUL becomes ``\0``
    (systemd ignores a datagram holding one), text that is not valid Unicode (lone
    surrogates from undecodable file names) becomes ``?``, and anything over
    :data:`MAX_FIELD_BYTES` is cut at a character boundary and ends with ``…``.

    >>> clean_field("STATUS=a\nb\0c"), clean_field("STATUS=\udcff ü")
    ('STATUS=a b\\0c', 'STATUS=? ü')
    >>> len(clean_field("STATUS=" + "→" * 1000).encode())
    1024
    """
    text = field.replace("\r\n", " ").replace("\n", " ").replace("\0", "\\0")
    raw = text.encode("utf-8", "replace")
    if len(raw) > MAX_FIELD_BYTES:
        ellipsis = "…".encode()
        raw = raw[: MAX_FIELD_BYTES - len(ellipsis)]
        raw = raw.decode("utf-8", "ignore").encode() + ellipsis
    return raw.decode("utf-8")


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
