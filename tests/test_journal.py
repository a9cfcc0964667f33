"""gtd.journal's pure parts: --since times and the line format."""

from __future__ import annotations

import datetime
import typing as t

import pytest

from gtd import journal
from gtd.exc import BadTime

NOW = datetime.datetime(
    2025, 3, 4, 12, 0, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
)


class SinceCase(t.NamedTuple):
    test_id: str
    text: str
    expected: datetime.datetime


SINCE_CASES = [
    SinceCase("now", "now", NOW),
    SinceCase("today", "today", NOW.replace(hour=0, minute=0, second=0)),
    SinceCase("yesterday", " Yesterday ", datetime.datetime(2025, 3, 3, tzinfo=NOW.tzinfo)),
    SinceCase("date", "2025-01-02", datetime.datetime(2025, 1, 2, tzinfo=NOW.tzinfo)),
    SinceCase(
        "date-time", "2025-01-02 03:04", datetime.datetime(2025, 1, 2, 3, 4, tzinfo=NOW.tzinfo)
    ),
    SinceCase(
        "iso", "2025-01-02T03:04:05", datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=NOW.tzinfo)
    ),
    SinceCase("clock", "09:15", NOW.replace(hour=9, minute=15, second=0)),
    SinceCase("minus", "-5m", NOW - datetime.timedelta(minutes=5)),
    SinceCase("ago", "2 hours ago", NOW - datetime.timedelta(hours=2)),
    SinceCase("compound", "1h30m", NOW - datetime.timedelta(minutes=90)),
    SinceCase("days", "3d", NOW - datetime.timedelta(days=3)),
]


@pytest.mark.parametrize(SinceCase._fields, SINCE_CASES, ids=[c.test_id for c in SINCE_CASES])
def test_parse_since(test_id: str, text: str, expected: datetime.datetime) -> None:
    """Each accepted spelling names the moment journalctl's --since would."""
    assert expected == journal.parse_since(text, NOW)


@pytest.mark.parametrize("text", ["soon", "5 fortnights", "25:00", "2025-13-01", "", "-", "5"])
def test_parse_since_rejects(text: str) -> None:
    """Anything else is a BadTime that quotes the value and lists what is accepted."""
    with pytest.raises(BadTime, match="YYYY-MM-DD") as info:
        journal.parse_since(text, NOW)
    assert repr(text) in str(info.value)


def test_format_entry_without_pid_or_fields() -> None:
    """Entries the manager wrote have no GTD_* fields; bytes messages are decoded."""
    entry = {
        "__REALTIME_TIMESTAMP": datetime.datetime(2025, 3, 4, 9, 5, 1),
        "_COMM": "systemd",
        "MESSAGE": b"Started \xffx",
    }
    assert "Mar 04 09:05:01 systemd: Started \ufffdx" == journal.format_entry(entry)
