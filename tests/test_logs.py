"""Logging set-up: journald when stderr is the journal stream, prefixed stderr otherwise."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from gtd import logs


def test_stderr_lines_carry_priority_and_fields() -> None:
    """Outside a terminal, lines start with <N> and end with the GTD_* fields."""
    record = logging.LogRecord("gtd.x", logging.WARNING, __file__, 1, "deacon %s", ("down",), None)
    record.GTD_IDENTITY = "deacon"
    assert "<4>deacon down [GTD_IDENTITY=deacon]" == logs.StderrFormatter(prefix=True).format(
        record
    )
    assert "gtd: warning: deacon down [GTD_IDENTITY=deacon]" == logs.StderrFormatter(
        prefix=False
    ).format(record)


def test_journal_stream_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    """JOURNAL_STREAM matching stderr's device:inode selects the journal handler."""
    st = os.fstat(sys.stderr.fileno())
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    assert logs.journal_stream_is_stderr(env, sys.stderr.fileno())
    assert not logs.journal_stream_is_stderr({"JOURNAL_STREAM": "1:2"}, sys.stderr.fileno())
    assert "journal" == logs.setup_logging(env=env)
    handler = logging.getLogger().handlers[-1]
    assert "JournalHandler" == type(handler).__name__
    assert "stderr" == logs.setup_logging(env={})
    assert 1 == sum(1 for h in logging.getLogger().handlers if getattr(h, "_gtd", False))


def test_journal_handler_sends_what_python_systemds_sends() -> None:
    """Field for field what ``systemd.journal.JournalHandler`` sends (journald drops the rest)."""
    from systemd.journal import JournalHandler

    theirs: list[dict[str, str]] = []
    ours: list[dict[str, str]] = []

    def capture(text: str, /, **fields: object) -> None:
        theirs.append({"MESSAGE": text} | {k: str(v) for k, v in fields.items()})

    def sendv(*lines: str) -> None:
        ours.append(dict(line.split("=", 1) for line in lines))

    try:
        boom = "boom"
        raise ValueError(boom)  # noqa: TRY301 - a record with exception text
    except ValueError:
        record = logging.getLogger("gtd.x").makeRecord(
            "gtd.x", logging.ERROR, __file__, 7, "deacon %s", ("down",), sys.exc_info(),
            extra={"GTD_IDENTITY": "deacon", "MESSAGE_ID": "0123abcd", "lowercase": "dropped"},
        )  # fmt: skip
    for handler in (
        JournalHandler(sender_function=capture, SYSLOG_IDENTIFIER="gtd"),
        logs.JournalHandler(sendv, SYSLOG_IDENTIFIER="gtd"),
    ):
        handler.handle(record)
    [expected], [got] = theirs, ours
    journald_keeps = {k: v for k, v in expected.items() if logs._FIELD.fullmatch(k)}
    assert journald_keeps == got
    assert ("3", "deacon", "0123abcd") == (got["PRIORITY"], got["GTD_IDENTITY"], got["MESSAGE_ID"])
    assert got["MESSAGE"].startswith("deacon down\nTraceback")
