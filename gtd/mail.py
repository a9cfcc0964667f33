"""Upstream's ``gt mail`` source of lifecycle requests: read the inbox, delete after success.

The deacon's inbox (``gt mail inbox --identity deacon/ --json``) holds mail whose
subject starts with ``LIFECYCLE:``; :func:`mail_request` turns each into a
:class:`~gtd.request.Request` that :mod:`gtd.lifecycle` carries out, and
:meth:`MailSource.done` deletes the mail once it succeeded. A missing, failing or
hanging ``gt`` is logged and skipped; it never blocks other requests. Pure parsing
comes first.
"""

from __future__ import annotations

import json
import logging
import re
import typing as t

from gtd import proc
from gtd.environment import sandbox_hint, which
from gtd.events import Event
from gtd.exc import CommandTimeout, IdentityError, MailError
from gtd.identities import parse_identity
from gtd.request import MAIL_ID, Refused, Request, parse_action

if t.TYPE_CHECKING:
    import pathlib

logger = logging.getLogger(__name__)

MAIL_TIMEOUT = 30.0
_JSON_ACTIONS = ("restart", "shutdown", "stop", "cycle")
_WORDS = {"restart": "restart", "shutdown": "shutdown", "stop": "shutdown", "cycle": "cycle"}
_WORDS |= {f"action: {a}": a for a in ("restart", "shutdown", "cycle")}


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


def parse_inbox(stdout: str) -> list[dict[str, t.Any]]:
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


def mail_request(msg: t.Mapping[str, t.Any], now: str) -> Request | Refused | None:
    """The request a lifecycle mail carries; None for other mail and mail already read.

    The id is ``mail-<mail id>`` (cleaned, plus a hash if cleaning changed it). A
    body or sender that is no request gives a :class:`~gtd.request.Refused`, so it
    fails visibly and its mail is deleted.

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
        import hashlib  # rare: only ids with other characters (hashlib costs 4 MB of RSS)

        clean += "-" + hashlib.sha256(mail_id.encode()).hexdigest()[:8]
    rid, sender = f"mail-{clean}", sender if isinstance(sender, str) else ""
    action = body_action(body) if isinstance(body, str) else None
    if action is None:
        reason = f"unparseable lifecycle mail body {str(body)[:200]!r}"
        return Refused(rid, reason, sender, "mail", mail_id)
    try:
        identity = parse_identity(sender)
    except IdentityError as err:
        return Refused(rid, str(err), sender, "mail", mail_id, action)
    return Request(rid, identity, parse_action(action), now, sender, "mail", mail_id, action)


# -- gt --------------------------------------------------------------------------


class MailSource:
    """``gt mail`` as a request source; one instance per configured ``gt`` command.

    :meth:`collect` lists the inbox; :meth:`done` deletes a request's mail unless
    the last listing no longer showed it (deleted before a crash). A missing ``gt``
    is warned about once, not every heartbeat.

    Parameters
    ----------
    argv
        The ``gt`` command; empty turns the source off.
    cwd
        Where ``gt`` runs (the town root).
    env
        Its environment (no agent identity, ``BD_ACTOR=daemon``).
    """

    name = "mail"

    def __init__(self, argv: t.Sequence[str], cwd: pathlib.Path, env: t.Mapping[str, str]) -> None:
        self.argv = tuple(argv)
        self.cwd = cwd
        self.env = dict(env)
        self.gt_missing = False
        self.listed: set[str] | None = None

    def run(self, *args: str) -> proc.Result:
        """Run ``gt ARGS`` bounded by :data:`MAIL_TIMEOUT`; raises OSError or CommandTimeout."""
        return proc.run((*self.argv, *args), timeout=MAIL_TIMEOUT, cwd=self.cwd, env=self.env)

    def collect(self, now: str) -> list[Request | Refused]:
        """The unread lifecycle mail; [] when gt is off, missing or failing.

        Failures are logged (a warning), never raised. Mail with an id unfit for
        ``gt`` is logged and left out.
        """
        self.listed = None
        if not self.argv:
            return []
        if which(self.argv[0], self.env.get("PATH")) is None:
            level = logging.DEBUG if self.gt_missing else logging.WARNING
            logger.log(level, "gt mail source skipped: %r not found", self.argv[0])
            self.gt_missing = True
            return []
        self.gt_missing = False
        try:
            res = self.run("mail", "inbox", "--identity", "deacon/", "--json")
            problem = f"exit status {res.returncode}: {res.stderr.strip()[-300:]}"
            messages = parse_inbox(res.stdout) if res.returncode == 0 else None
        except (OSError, CommandTimeout, ValueError) as err:
            messages, problem = None, str(err)
        if messages is None:
            extra = {}
            if hint := sandbox_hint(problem, self.cwd):
                problem = f"{problem} ({hint})"
                extra = {"GTD_COMMAND": self.argv[0], "MESSAGE_ID": Event.SANDBOX_DENIED.value}
            logger.warning("gt mail inbox failed; mail skipped this pass: %s", problem, extra=extra)
            return []
        self.listed = {m["id"] for m in messages if isinstance(m.get("id"), str)}
        found: list[Request | Refused] = []
        for message in messages:
            try:
                if (got := mail_request(message, now)) is not None:
                    found.append(got)
            except ValueError as err:
                logger.warning("lifecycle mail not imported: %s", err)
        return found

    def done(self, mail_id: str | None) -> None:
        """Delete a finished request's mail if it has one that is still there.

        Raises
        ------
        MailError
            ``gt mail delete`` failed or timed out (worth retrying).
        """
        if mail_id is None or not MAIL_ID.fullmatch(mail_id):
            return
        if self.listed is not None and mail_id not in self.listed:
            return  # already gone (a crash after the delete)
        if not self.argv:
            logger.warning("gt mail source is off; mail %s stays in the inbox", mail_id)
            return
        try:
            res = self.run("mail", "delete", mail_id)
            problem = f"exit status {res.returncode}: {res.stderr.strip()[-200:]}"
        except (OSError, CommandTimeout) as err:
            res, problem = None, str(err)
        if res is None or res.returncode != 0:
            hint = sandbox_hint(problem, self.cwd)
            msg = f"gt mail delete {mail_id}: {problem}" + (f" ({hint})" if hint else "")
            raise MailError(msg)
