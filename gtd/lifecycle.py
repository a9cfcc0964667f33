"""Carrying out lifecycle requests: sources feed the spool, each record runs to its end.

A pass (:meth:`Processor.process`) asks every :class:`Source` for new requests and
queues those the spool does not know yet, then takes each claimed record through
its steps: count an attempt, check the agent's flag, act, mark it executed, clear
the flag, tell its source it is done, remove it. Every step is recorded in the
record before the next, so a crash anywhere means the next pass finishes it; a
request that cannot succeed ends in ``failed/`` after at most :data:`MAX_ATTEMPTS`
tries and never blocks the others; a full disk is waited out.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import typing as t

from gtd import store
from gtd.events import Event
from gtd.exc import GtdError, MailError, RequestError, TmuxError
from gtd.request import Action, Refused, Request, from_record, log_fields, new_id, shown
from gtd.spool import Entry, Spool

if t.TYPE_CHECKING:
    from gtd.identities import Identity

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
"""Errors that say "the disk is full", not "the request is bad": retried without limit."""
RETRY = (TmuxError, OSError, MailError)
"""Failures worth another attempt; anything else from an actor is a bug (logged, bounded)."""


def submit(
    spool: Spool, identity: Identity, action: Action, *, sender: str, word: str = ""
) -> Request:
    """Queue a request in the spool (``gtd request``); the agent's flag is not touched.

    *word* is the action as the requester wrote it (``stop``), kept in the record.

    Raises
    ------
    OSError, SpoolError
        The spool cannot be created or written; nothing is queued.
    """
    request = Request(new_id(), identity, action, store.now_iso(), sender, word=word.lower())
    spool.enqueue(request.record())
    return request


class Source(t.Protocol):
    """Where requests come from besides ``gtd request`` writing into the spool."""

    name: str

    def collect(self, now: str) -> t.Sequence[Request | Refused]:
        """New requests; failures are logged here, never raised."""

    def done(self, ref: str | None) -> None:
        """The request with *ref* is finished (done or failed); raise MailError to retry."""


class SpoolSource:
    """Requests written straight into the spool (``gtd request``, agents): nothing to do."""

    name = "spool"

    def collect(self, now: str) -> list[Request | Refused]:
        """They are in the spool already."""
        return []

    def done(self, ref: str | None) -> None:
        """Nothing to tell."""


class Actor(t.Protocol):
    """What carrying out a request does to the agent (:class:`gtd.actions.AgentActor`)."""

    def check(self, request: Request) -> None:
        """Raise RequestError unless the agent asked for it (upstream's flag guard)."""

    def act(self, request: Request, tick: t.Callable[[], None]) -> None:
        """Stop, or stop and start, the agent; raise a :data:`RETRY` error to retry."""

    def finish(self, request: Request) -> None:
        """Clear the agent's flag (idempotent)."""


class Processor:
    """Carries out requests from a spool and its sources with an actor.

    Parameters
    ----------
    spool
        The durable queue.
    sources
        Every source; ``spool`` must be among them (records name their source).
    actor
        Does what requests ask.
    """

    def __init__(self, spool: Spool, sources: t.Sequence[Source], actor: Actor) -> None:
        self.spool = spool
        self.sources = {source.name: source for source in sources}
        self.actor = actor
        self._busy = False
        self._tick: t.Callable[[], None] = lambda: None

    def process(self, tick: t.Callable[[], None] = lambda: None) -> None:
        """One pass; *tick* is called between requests and steps.

        Bad requests and failing tools are logged, never raised; a nested call (from
        *tick*) returns at once. An unusable spool is logged and left alone.
        """
        if self._busy:
            return
        self._busy, self._tick = True, tick
        try:
            self.spool.ensure()
            self.collect(tick)
            for entry in self.spool.entries(tick):
                self.handle(entry)
            self.spool.prune()
        except (GtdError, OSError) as err:
            logger.error("lifecycle spool unusable: %s", err)  # noqa: TRY400 - no traceback
        finally:
            self._busy = False

    def collect(self, tick: t.Callable[[], None]) -> None:
        """Queue what the sources have that the spool does not know yet."""
        now = store.now_iso()
        for source in self.sources.values():
            found = source.collect(now)
            tick()
            for got in found:
                if self.spool.knows(got.id):
                    continue  # queued before (a crash), or it failed
                try:
                    self.spool.enqueue(got.record())
                except OSError as err:
                    logger.warning("lifecycle request %s not queued: %s", got.id, err)
                    continue
                extra = log_fields(got.id, got.record(), "imported") | {"GTD_SOURCE": source.name}
                if got.mail_id is not None:
                    extra["GTD_MAIL_ID"] = got.mail_id
                logger.info("imported %s request %s", source.name, got.id, extra=extra)

    def handle(self, entry: Entry) -> None:
        """Take one record as far as it goes this pass."""
        try:
            self.advance(entry)
        except OSError as err:  # the spool itself (disk full ...): next pass
            extra = log_fields(entry.id, entry.record, "retry")
            logger.warning(
                "lifecycle request %s kept for the next pass: %s", entry.id, err, extra=extra
            )
        except Exception:  # a bug, not bad input: the traceback helps; attempts bound it
            logger.exception(
                "request %s failed", entry.id, extra=log_fields(entry.id, entry.record, "retry")
            )

    def advance(self, entry: Entry) -> None:
        """Count an attempt, then act, mark executed, clear the flag, tell the source.

        A full disk (:data:`NO_SPACE`) spends no attempt: the request waits for space.
        """
        rec = entry.record
        attempts = rec.get("attempts")
        attempts = attempts if type(attempts) is int and attempts >= 0 else 0
        if attempts >= MAX_ATTEMPTS:
            last = rec.get("last_error") or "interrupted"
            self.give_up(entry, f"gave up after {attempts} attempts: {last}", tell=True)
            return
        rec["attempts"] = attempts + 1
        self.spool.save(entry)
        try:
            if not isinstance(rec.get("failure"), str):
                try:
                    request = from_record(rec, entry.id)
                    if rec.get("executed") is not True:
                        self.actor.check(request)
                        self.actor.act(request, self._tick)
                        rec["executed"] = True
                        self.spool.save(entry)
                    self.actor.finish(request)
                except RequestError as err:
                    rec["failure"] = str(err)
            self.tell_source(rec)
        except RETRY as err:
            self.retry_later(entry, err)
            return
        self.finish(entry)

    def retry_later(self, entry: Entry, err: Exception) -> None:
        """A step failed in a way worth retrying: record it, or give up after the last try."""
        rec = entry.record
        what = _what(entry.id, rec)
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            rec["attempts"] -= 1  # the disk is full, the request is fine: no attempt spent
            rec["last_error"] = str(err)
            with contextlib.suppress(OSError):
                self.spool.save(entry)
            logger.warning(
                "%s waits for disk space: %s", what, err, extra=log_fields(entry.id, rec, "retry")
            )
            return
        if rec["attempts"] >= MAX_ATTEMPTS:
            reason = f"gave up after {rec['attempts']} attempts: {err}"
            self.give_up(entry, reason, tell=not isinstance(err, MailError))
            return
        rec["last_error"] = str(err)
        self.spool.save(entry)
        logger.warning(
            "%s will be retried, attempt %d of %d: %s", what, rec["attempts"], MAX_ATTEMPTS, err,
            extra=log_fields(entry.id, rec, "retry"),
        )  # fmt: skip

    def tell_source(self, rec: t.Mapping[str, t.Any]) -> None:
        """Tell the record's source it is finished (raises MailError to retry)."""
        name = rec.get("source")
        if not isinstance(name, str):
            name = "mail" if "mail_id" in rec else "spool"
        ref = rec.get("mail_id")
        if (source := self.sources.get(name)) is not None:
            source.done(ref if isinstance(ref, str) else None)

    def give_up(self, entry: Entry, why: str, *, tell: bool) -> None:
        """Retries are spent: tell the source once more, then fail the record."""
        rec = entry.record
        if tell:
            with contextlib.suppress(MailError):
                self.tell_source(rec)
        earlier = rec.get("failure")
        rec["failure"] = f"{earlier}; {why}" if isinstance(earlier, str) else why
        self.finish(entry)

    def finish(self, entry: Entry) -> None:
        """The final state: done (removed) or failed (recorded in ``failed/``, removed)."""
        rec = entry.record
        failure = rec.pop("failure", None)
        what = _what(entry.id, rec)
        if isinstance(failure, str):
            self.spool.fail(entry, failure)
            extra = log_fields(entry.id, rec, "failed") | {"MESSAGE_ID": Event.REQUEST_FAILED.value}
            logger.error("%s failed: %s", what, failure, extra=extra)
        else:
            self.spool.complete(entry)
            extra = log_fields(entry.id, rec, "done") | {"MESSAGE_ID": Event.REQUEST_DONE.value}
            logger.info("%s done", what, extra=extra)


def _what(rid: str, rec: t.Mapping[str, t.Any]) -> str:
    action, identity = shown(rec.get("action")), shown(rec.get("identity"))
    return f"lifecycle request {rid} ({action} {identity})"
