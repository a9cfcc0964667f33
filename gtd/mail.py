"""Upstream's ``gt mail`` source of lifecycle requests: read the inbox, delete after success.

The deacon's inbox (``gt mail inbox --identity deacon/ --json``) holds mail whose
subject starts with ``LIFECYCLE:``; :func:`mail_record` turns each into a spool
record that :mod:`gtd.lifecycle` imports and carries out, and :meth:`MailSource.delete`
removes the mail once the request succeeded. A missing, failing or hanging ``gt``
is logged and skipped; it never blocks the spool. Pure parsing comes first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import typing as t

from gtd import proc
from gtd.exc import GtdError

if t.TYPE_CHECKING:
    import pathlib

logger = logging.getLogger(__name__)

MAIL_TIMEOUT = 30.0
MAIL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
"""Mail ids gtd passes to ``gt mail delete``: no leading ``-``, nothing a shell would read."""
_JSON_ACTIONS = ("restart", "shutdown", "stop", "cycle")
_WORDS = {"restart": "restart", "shutdown": "shutdown", "stop": "shutdown", "cycle": "cycle"}
_WORDS |= {f"action: {a}": a for a in ("restart", "shutdown", "cycle")}
Record: t.TypeAlias = dict[str, t.Any]


class DeleteFailed(GtdError):
    """``gt mail delete`` failed; the request is kept and the delete retried."""


# -- pure ----------------------------------------------------------------------


def body_action(body: str) -> str | None:
    r"""The action a lifecycle mail body asks for, read as upstream reads it, or None.

    >>> body_action('{"action": "Cycle"}'), body_action(" Action: Restart\n"), body_action("x")
    ('cycle', 'restart', None)
    """
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        return _WORDS.get(body.strip().lower())
    # Go's encoding/json matches field names case-insensitively.
    value = next((v for k, v in obj.items() if k.lower() == "action"), None)
    return value.lower() if isinstance(value, str) and value.lower() in _JSON_ACTIONS else None


def parse_inbox(stdout: str) -> list[Record]:
    """The messages in ``gt mail inbox --json`` output. Raises ValueError if not a JSON list."""
    try:
        data = json.loads(stdout) if stdout.strip() else []
    except RecursionError:
        msg = "JSON nested too deeply"
        raise ValueError(msg) from None
    if not isinstance(data, list):
        msg = f"expected a JSON list, got {type(data).__name__}"
        raise ValueError(msg)  # noqa: TRY004 - one error type for "bad output"
    return [m for m in data if isinstance(m, dict)]


def mail_record(msg: t.Mapping[str, t.Any], now: str) -> Record | None:
    """The spool record of a lifecycle mail; None for other mail and mail already read.

    The id is ``mail-<mail id>`` (cleaned, plus a hash if cleaning changed it). An
    unparseable body gives a record with a ``problem``, so it fails visibly.

    Raises
    ------
    ValueError
        A lifecycle mail whose id is unfit for ``gt mail delete``.
    """
    subject, mail_id, sender, body = (msg.get(k) for k in ("subject", "id", "from", "body"))
    if not isinstance(subject, str) or not subject.lower().startswith("lifecycle:"):
        return None
    if msg.get("read") is True:
        return None  # upstream: already processed
    if not isinstance(mail_id, str) or not MAIL_ID.fullmatch(mail_id):
        problem = f"lifecycle mail with unusable id {str(mail_id)[:60]!r}"
        raise ValueError(problem)
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", mail_id)[:80]
    if clean != mail_id:
        clean += "-" + hashlib.sha256(mail_id.encode()).hexdigest()[:8]
    sender = sender if isinstance(sender, str) else ""
    rec: Record = {"id": f"mail-{clean}", "identity": sender, "action": "", "created_at": now}
    rec |= {"from": sender, "mail_id": mail_id}
    if (action := body_action(body) if isinstance(body, str) else None) is None:
        rec["problem"] = f"unparseable lifecycle mail body {str(body)[:200]!r}"
    else:
        rec["action"] = action
    return rec


# -- gt --------------------------------------------------------------------------


class MailSource:
    """``gt mail`` for the daemon; one instance lives as long as the daemon.

    :meth:`requests` starts a pass (it lists the inbox); :meth:`delete` in the same
    pass skips mail that listing no longer showed. A missing ``gt`` is warned about
    once, not every heartbeat.
    """

    def __init__(self) -> None:
        self.gt_missing = False
        self.argv: tuple[str, ...] = ()
        self.cwd: pathlib.Path | None = None
        self.env: dict[str, str] = {}
        self.listed: set[str] | None = None

    def run(self, *args: str) -> proc.Result:
        """Run ``gt ARGS`` bounded by :data:`MAIL_TIMEOUT`; raises OSError or proc.Timeout."""
        return proc.run((*self.argv, *args), timeout=MAIL_TIMEOUT, cwd=self.cwd, env=self.env)

    def requests(
        self, argv: t.Sequence[str], cwd: pathlib.Path, env: t.Mapping[str, str], now: str
    ) -> list[Record]:
        """Spool records of the unread lifecycle mail; [] when gt is off, missing or failing.

        Failures are logged (a warning), never raised. Mail with an id unfit for
        ``gt`` is logged and left out.
        """
        self.argv, self.cwd, self.env, self.listed = tuple(argv), cwd, dict(env), None
        if not self.argv:
            return []
        if shutil.which(self.argv[0]) is None:
            level = logging.DEBUG if self.gt_missing else logging.WARNING
            logger.log(level, "gt mail source skipped: %r not found", self.argv[0])
            self.gt_missing = True
            return []
        self.gt_missing = False
        try:
            res = self.run("mail", "inbox", "--identity", "deacon/", "--json")
            problem = f"exit status {res.returncode}: {res.stderr.strip()[-300:]}"
            messages = parse_inbox(res.stdout) if res.returncode == 0 else None
        except (OSError, proc.Timeout, ValueError) as err:
            messages, problem = None, str(err)
        if messages is None:
            logger.warning("gt mail inbox failed; mail skipped this pass: %s", problem)
            return []
        self.listed = {m["id"] for m in messages if isinstance(m.get("id"), str)}
        records = []
        for message in messages:
            try:
                if (rec := mail_record(message, now)) is not None:
                    records.append(rec)
            except ValueError as err:
                logger.warning("lifecycle mail not imported: %s", err)
        return records

    def delete(self, rec: t.Mapping[str, t.Any]) -> None:
        """Delete the request's mail if it has one that is still there.

        Raises
        ------
        DeleteFailed
            ``gt mail delete`` failed or timed out (worth retrying).
        """
        mail_id = rec.get("mail_id")
        if not isinstance(mail_id, str) or not MAIL_ID.fullmatch(mail_id):
            return
        if self.listed is not None and mail_id not in self.listed:
            return  # already gone (a crash after the delete)
        if not self.argv:
            logger.warning("gt mail source is off; mail %s stays in the inbox", mail_id)
            return
        try:
            res = self.run("mail", "delete", mail_id)
            problem = f"exit status {res.returncode}: {res.stderr.strip()[-200:]}"
        except (OSError, proc.Timeout) as err:
            res, problem = None, str(err)
        if res is None or res.returncode != 0:
            msg = f"gt mail delete {mail_id}: {problem}"
            raise DeleteFailed(msg)
