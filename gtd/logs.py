"""Logging set-up, done once by the CLI: journald when stderr is the journal, else stderr.

Modules log with ``logging.getLogger(__name__)`` and structured ``extra`` keys in
UPPERCASE (``GTD_IDENTITY`` ...): python-systemd's ``JournalHandler`` forwards
``record.__dict__`` and journald drops lowercase field names.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import typing as t

_FIELD = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
"""A journal field name a record attribute may fill (journald drops other names)."""

# sd-daemon(3) levels, as python-systemd's JournalHandler.map_priority.
PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def priority(levelno: int) -> int:
    """Syslog priority of a logging level.

    >>> priority(logging.ERROR), priority(logging.INFO), priority(35)
    (3, 6, 4)
    """
    for level in sorted(PRIORITY, reverse=True):
        if levelno >= level:
            return PRIORITY[level]
    return 7


def journal_stream_is_stderr(env: t.Mapping[str, str], fd: int = 2) -> bool:
    """Whether *fd* is the stream systemd connected to the journal (``JOURNAL_STREAM``)."""
    dev_ino = env.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in dev_ino.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalHandler(logging.Handler):
    """python-systemd's ``JournalHandler``, sending the same fields through the same call.

    Records go to ``sd_journal_sendv`` (python-systemd's ``sendv``) with MESSAGE,
    PRIORITY, LOGGER, THREAD_NAME, PROCESS_NAME, CODE_FILE/LINE/FUNC, CODE_ARGS,
    EXCEPTION_TEXT/INFO, the record's UPPERCASE attributes (``extra``: ``GTD_*``,
    ``MESSAGE_ID``) and the constant fields given here. Not
    ``systemd.journal.JournalHandler`` itself: importing ``systemd.journal`` also
    loads its reader, ``uuid`` and ``platform``, 0.8 MB of the daemon's RSS.

    Parameters
    ----------
    sendv
        Sends ``FIELD=value`` strings as one journal entry (injected in tests).
    **fields
        Fields every entry carries (``SYSLOG_IDENTIFIER``).
    """

    def __init__(self, sendv: t.Callable[..., object], **fields: str) -> None:
        super().__init__()
        self.sendv = sendv
        self.fields = fields

    def emit(self, record: logging.LogRecord) -> None:
        """Send *record* as one journal entry; a failure goes to ``handleError``."""
        try:
            message = self.format(record)
            fields = dict(self.fields)
            if record.exc_text:
                fields["EXCEPTION_TEXT"] = record.exc_text
            if record.exc_info:
                fields["EXCEPTION_INFO"] = str(record.exc_info)
            if record.args:
                fields["CODE_ARGS"] = str(record.args)
            fields |= {k: str(v) for k, v in record.__dict__.items() if _FIELD.fullmatch(k)}
            fields |= {
                "PRIORITY": str(priority(record.levelno)),
                "LOGGER": record.name,
                "THREAD_NAME": str(record.threadName),
                "PROCESS_NAME": str(record.processName),
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
            }
            self.sendv(f"MESSAGE={message}", *(f"{k}={v}" for k, v in fields.items()))
        except Exception:  # noqa: BLE001 - logging must never take the daemon down
            self.handleError(record)


class StderrFormatter(logging.Formatter):
    """``<N>message key=value...`` lines (sd-daemon prefixes), or plain for a terminal."""

    def __init__(self, *, prefix: bool) -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        """Render the message, then the GTD_* fields, then any traceback."""
        text = record.getMessage()
        fields = " ".join(
            f"{k}={v}" for k, v in sorted(record.__dict__.items()) if k.startswith("GTD_")
        )
        if fields:
            text = f"{text} [{fields}]"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        if self.prefix:
            return "\n".join(f"<{priority(record.levelno)}>{line}" for line in text.split("\n"))
        return f"gtd: {record.levelname.lower()}: {text}"


def setup_logging(level: int = logging.INFO, *, env: t.Mapping[str, str] | None = None) -> str:
    """Install one root handler; return ``"journal"`` or ``"stderr"``.

    Idempotent: handlers installed earlier by this function are replaced.
    """
    env = os.environ if env is None else env
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_gtd", False):
            root.removeHandler(old)
    handler: logging.Handler
    kind = "stderr"
    if journal_stream_is_stderr(env):
        try:
            from systemd._journal import sendv
        except ImportError:
            pass
        else:
            handler = JournalHandler(sendv, SYSLOG_IDENTIFIER="gtd")
            kind = "journal"
    if kind == "stderr":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(StderrFormatter(prefix=not sys.stderr.isatty()))
    handler._gtd = True  # type: ignore[attr-defined]  # marks our own handler
    root.addHandler(handler)
    root.setLevel(level)
    return kind
