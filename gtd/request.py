"""Lifecycle requests as values: the actions, one request, parsed once at the edge.

Text from outside (a CLI argument, a spool file, a mail body) becomes an
:class:`Action` or a :class:`Request` here and nowhere else; past this module
requests travel typed. Everything here is pure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import re
import time
import typing as t

from gtd.exc import IdentityError, RequestError
from gtd.identities import Identity, parse_identity

_ID = re.compile(r"[0-9]{20}-[0-9a-f]{8}|mail-[A-Za-z0-9_-]{1,100}")
MAIL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
"""Mail ids gtd passes to ``gt mail delete``: no leading ``-``, nothing a shell would read."""
FIELDS = ("id", "identity", "action", "created_at", "from")
"""The fields every spool record has (SPEC), all strings."""


class Action(enum.Enum):
    """What a request asks for; the value is the word in records and journal fields."""

    SHUTDOWN = "shutdown"
    CYCLE = "cycle"
    RESTART = "restart"

    @property
    def flag(self) -> str:
        """The agent state-file flag upstream's guard wants: ``requesting_<action>``."""
        return f"requesting_{self.value}"

    @property
    def starts(self) -> bool:
        """Whether the agent runs again afterwards (cycle, restart)."""
        return self is not Action.SHUTDOWN


WORDS = {"shutdown": Action.SHUTDOWN, "stop": Action.SHUTDOWN, "cycle": Action.CYCLE}
WORDS["restart"] = Action.RESTART
"""Accepted action words (any case); ``stop`` is upstream's alias of ``shutdown``."""


def parse_action(word: object) -> Action:
    """The action a word names.

    >>> parse_action("Stop"), parse_action("cycle")
    (<Action.SHUTDOWN: 'shutdown'>, <Action.CYCLE: 'cycle'>)

    Raises
    ------
    RequestError
        Not a string, or not one of :data:`WORDS`.
    """
    if isinstance(word, str) and word.lower() in WORDS:
        return WORDS[word.lower()]
    what = repr(word[:40]) if isinstance(word, str) else type(word).__name__
    msg = f"unknown action {what} (expected one of: {', '.join(WORDS)})"
    raise RequestError(msg)


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """One lifecycle request: who it is for, what it asks, where it came from."""

    id: str
    identity: Identity
    action: Action
    created_at: str
    sender: str
    source: str = "spool"
    """The request source that delivered it (``spool``, ``mail``); told when it is done."""
    mail_id: str | None = None
    word: str = ""
    """The action as the requester wrote it (``stop``), lower-cased; records keep it."""

    def record(self) -> dict[str, t.Any]:
        """The spool record: SPEC's five fields (``from`` is the sender), then the source's."""
        rec: dict[str, t.Any] = {
            "id": self.id,
            "identity": self.identity.dash,
            "action": self.word or self.action.value,
            "created_at": self.created_at,
            "from": self.sender,
        }
        if self.source != "spool":
            rec["source"] = self.source
        if self.mail_id is not None:
            rec["mail_id"] = self.mail_id
        return rec


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    """Something a source received that can never be a request, kept to fail visibly."""

    id: str
    reason: str
    sender: str
    source: str
    mail_id: str | None = None
    word: str = ""
    """The action word, when that much could be read."""

    def record(self) -> dict[str, t.Any]:
        """A spool record that fails with :attr:`reason` when processed."""
        rec = {"id": self.id, "identity": self.sender, "action": self.word, "created_at": ""}
        rec |= {"from": self.sender, "source": self.source, "problem": self.reason}
        return rec | ({"mail_id": self.mail_id} if self.mail_id is not None else {})


def new_id() -> str:
    """A fresh request id; ids sort in creation order."""
    return f"{time.time_ns():020d}-{os.urandom(4).hex()}"


def file_id(name: str) -> str | None:
    """The request id of a spool file name ``<id>.json``, or None.

    >>> file_id("00000000000000000001-0a0b0c0d.json"), file_id("../x.json")
    ('00000000000000000001-0a0b0c0d', None)
    """
    stem = name.removesuffix(".json")
    return stem if stem != name and _ID.fullmatch(stem) else None


def from_record(rec: t.Mapping[str, t.Any], rid: str) -> Request:
    """Validate a spool record read from ``<rid>.json`` into a :class:`Request`.

    Raises
    ------
    RequestError
        A problem noted when it was received, a missing or wrong-typed field, an id
        that is not the file's, a ``mail_id`` unfit for ``gt``, an unknown action or
        identity.
    """
    if isinstance(rec.get("problem"), str):
        raise RequestError(rec["problem"])
    for key in FIELDS:
        if not isinstance(rec.get(key), str):
            msg = f"field {key!r} must be a string ({type(rec.get(key)).__name__})"
            raise RequestError(msg)
    if rec["id"] != rid:
        msg = f"id {rec['id'][:40]!r} does not match the file name {rid}.json"
        raise RequestError(msg)
    mail_id = rec.get("mail_id")
    if "mail_id" in rec and not (isinstance(mail_id, str) and MAIL_ID.fullmatch(mail_id)):
        msg = f"unusable mail_id {str(mail_id)[:40]!r}"
        raise RequestError(msg)
    action = parse_action(rec["action"])
    try:
        identity = parse_identity(rec["identity"])
    except IdentityError as err:
        raise RequestError(str(err)) from None
    source = rec.get("source")
    source = source if isinstance(source, str) else ("mail" if mail_id else "spool")
    return Request(
        rid,
        identity,
        action,
        rec["created_at"],
        rec["from"],
        source,
        mail_id,
        rec["action"].lower(),
    )


def shown(value: object) -> str:
    r"""Untrusted text, made safe and short for a log line or field.

    >>> shown("cycle"), shown("a\x1b[2J"), shown(3)
    ('cycle', "'a\\x1b[2J'", '3')
    """
    text = value if isinstance(value, str) else repr(value)
    return text[:100] if text.isascii() and text.isprintable() else repr(text)[:100]


def log_fields(rid: str, rec: t.Mapping[str, t.Any], outcome: str) -> dict[str, str]:
    """Journal fields of a request, from a record that may be malformed."""
    identity = shown(rec.get("identity", ""))
    with contextlib.suppress(IdentityError):
        identity = parse_identity(rec.get("identity")).dash  # type: ignore[arg-type]
    action = rec.get("action", "")
    action = (
        action.lower() if isinstance(action, str) and action.lower() in WORDS else shown(action)
    )
    return {
        "GTD_REQUEST_ID": rid,
        "GTD_IDENTITY": identity,
        "GTD_ACTION": action,
        "GTD_OUTCOME": outcome,
    }
