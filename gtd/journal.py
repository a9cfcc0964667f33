"""Reading the service's journal for ``gtd logs``, through python-systemd's ``Reader``.

What is shown is what ``journalctl --user -u gastown-daemon`` shows: the entries the
service wrote (``_SYSTEMD_USER_UNIT=``) and what the user manager said about it
(``USER_UNIT=``: started, stopped, failed), both for the current user only. With an
identity, only the service's entries whose ``GTD_IDENTITY`` is that agent's. Each
line carries the entry's ``GTD_*`` fields, so a request id or an agent is greppable.
"""

from __future__ import annotations

import datetime
import os
import re
import typing as t

from gtd.exc import BadTime, GtdError

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator

UNIT = "gastown-daemon.service"
FOLLOW_LINES = 10
"""Entries shown before following when ``-n`` is not given (as journalctl -f)."""

Entry: t.TypeAlias = dict[str, t.Any]

_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}
_RELATIVE = re.compile(r"(?:-\s*)?((?:[0-9]+\s*[a-z]+\s*)+?)(?:\s*ago)?")
_PART = re.compile(r"([0-9]+)\s*([a-z]+)")


def parse_since(text: str, now: datetime.datetime) -> datetime.datetime:
    """The moment *text* names, in local time, relative to *now* (timezone-aware).

    Accepted: ``now``, ``today``, ``yesterday``, ``YYYY-MM-DD``, ``YYYY-MM-DD HH:MM[:SS]``
    (also with ``T``), ``HH:MM[:SS]`` (today), and relative times ``-5m``, ``90s``,
    ``2 hours ago``, ``1h30m``. Pure.

    >>> now = datetime.datetime(2025, 3, 4, 12, 0, tzinfo=datetime.timezone.utc)
    >>> parse_since("1h30m ago", now).isoformat()
    '2025-03-04T10:30:00+00:00'
    >>> parse_since("09:15", now).isoformat()
    '2025-03-04T09:15:00+00:00'

    Raises
    ------
    BadTime
        *text* is none of these; the message lists what is accepted.
    """
    word = text.strip().lower()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if word == "now":
        return now
    if word == "today":
        return midnight
    if word == "yesterday":
        return midnight - datetime.timedelta(days=1)
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        for candidate in (word, word.replace("t", " ", 1)):
            try:
                return datetime.datetime.strptime(candidate, fmt).replace(tzinfo=now.tzinfo)
            except ValueError:
                pass
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            clock = datetime.datetime.strptime(word, fmt).time()
        except ValueError:
            continue
        return datetime.datetime.combine(now.date(), clock, tzinfo=now.tzinfo)
    match = _RELATIVE.fullmatch(word)
    if match:
        seconds = 0
        for count, unit in _PART.findall(match.group(1)):
            if unit not in _UNITS:
                break
            seconds += int(count) * _UNITS[unit]
        else:
            return now - datetime.timedelta(seconds=seconds)
    msg = (
        f"--since {text!r}: not a time; use YYYY-MM-DD [HH:MM[:SS]], HH:MM[:SS], "
        "today, yesterday, now, or a time ago such as 5m, 2h, '1 day ago'"
    )
    raise BadTime(msg)


def _journal() -> t.Any:
    try:
        from systemd import journal
    except ImportError:
        msg = "gtd logs needs python-systemd (import systemd.journal failed); or use journalctl"
        raise GtdError(msg) from None
    return journal


def open_reader(uid: int, identity: str | None = None) -> t.Any:
    """A ``systemd.journal.Reader`` matching the service's entries for user *uid*.

    Raises
    ------
    GtdError
        python-systemd is missing, or no journal could be opened.
    """
    journal = _journal()
    try:
        reader = journal.Reader()
    except OSError as err:
        msg = f"cannot open the journal: {err.strerror or err}"
        raise GtdError(msg) from None
    own = {"_SYSTEMD_USER_UNIT": UNIT, "_UID": str(uid)}
    if identity is not None:
        reader.add_match(**own, GTD_IDENTITY=identity)
    else:
        reader.add_match(**own)
        reader.add_disjunction()
        reader.add_match(USER_UNIT=UNIT, _UID=str(uid))
    return reader


def _timestamp(entry: Entry) -> float:
    stamp = entry.get("__REALTIME_TIMESTAMP")
    return stamp.timestamp() if isinstance(stamp, datetime.datetime) else 0.0


def select(reader: t.Any, *, lines: int | None, since: datetime.datetime | None) -> list[Entry]:
    """The entries to show first: from *since* on (else all), the last *lines* of them.

    Leaves *reader* positioned after the newest entry, ready to follow.
    """
    floor = since.timestamp() if since is not None else None
    if lines is None:
        if floor is None:
            reader.seek_head()
        else:
            reader.seek_realtime(floor)
        out = list(_forward(reader))
        return [e for e in out if floor is None or _timestamp(e) >= floor]
    reader.seek_tail()
    out = []
    while len(out) < lines:
        entry = reader.get_previous()
        if not entry or (floor is not None and _timestamp(entry) < floor):
            break
        out.append(entry)
    reader.seek_tail()
    reader.get_previous()  # the read pointer on the newest entry: get_next() gives new ones
    return out[::-1]


def _forward(reader: t.Any) -> Iterator[Entry]:
    while entry := reader.get_next():
        yield entry


def format_entry(entry: Entry) -> str:
    """One line like journalctl's short format, then the entry's ``GTD_*`` fields.

    >>> format_entry({"__REALTIME_TIMESTAMP": datetime.datetime(2025, 3, 4, 9, 5, 1),
    ...   "SYSLOG_IDENTIFIER": "gtd", "_PID": 42, "MESSAGE": "started deacon",
    ...   "GTD_IDENTITY": "deacon"})
    'Mar 04 09:05:01 gtd[42]: started deacon [GTD_IDENTITY=deacon]'
    """
    stamp = entry.get("__REALTIME_TIMESTAMP")
    when = stamp.strftime("%b %d %H:%M:%S") if isinstance(stamp, datetime.datetime) else "-"
    who = str(entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM") or "?")
    pid = entry.get("_PID")
    if pid is not None:
        who = f"{who}[{pid}]"
    message = entry.get("MESSAGE", "")
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    fields = " ".join(f"{k}={entry[k]}" for k in sorted(entry) if k.startswith("GTD_"))
    line = f"{when} {who}: {message}"
    return f"{line} [{fields}]" if fields else line


def show(
    *,
    lines: int | None,
    since: datetime.datetime | None,
    identity: str | None,
    follow: bool,
    write: Callable[[str], None],
    uid: int | None = None,
    wait: float = 1.0,
) -> int:
    """Write the selected entries with *write*, then with *follow* new ones as they come.

    Follows until interrupted (KeyboardInterrupt reaches the caller); each wait on
    the journal is at most *wait* seconds. Returns how many entries were written
    before following.
    """
    reader = open_reader(os.getuid() if uid is None else uid, identity)
    if follow and lines is None:
        lines = FOLLOW_LINES
    try:
        shown = select(reader, lines=lines, since=since)
        for entry in shown:
            write(format_entry(entry))
        if not shown and not follow:
            write("-- No entries --")
        while follow:
            reader.wait(wait)
            for entry in _forward(reader):
                write(format_entry(entry))
    finally:
        reader.close()
    return len(shown)
