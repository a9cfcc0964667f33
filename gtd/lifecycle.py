"""Lifecycle requests: a crash-safe, trusted spool, and the actions they ask for.

Requests live in ``<town>/daemon/lifecycle/``. :func:`enqueue` writes one whole to
``tmp/`` and renames it into ``new/``; the daemon claims it by renaming it into
``cur/``, records ``attempts`` there before acting and ``executed`` after, and removes
it only once everything succeeded, or moves it to ``failed/`` with a reason. A crash
anywhere means the next pass finishes the request; a broken one is tried at most
:data:`MAX_ATTEMPTS` times and never blocks the others; a full disk is waited out.
Only a spool and files that the daemon's user owns, and no one else can write, are
trusted. ``gt mail`` requests come in through :mod:`gtd.mail`. Pure parsing comes first.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import stat
import time
import typing as t

from gtd import actions, mail, store
from gtd.exc import GtdError, IdentityError, RequestError, StateError, TmuxError
from gtd.identities import Identity, parse_identity

if t.TYPE_CHECKING:
    from gtd.config import Config
    from gtd.tmux import Tmux

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
MAX_REQUEST_BYTES = 64 * 1024
SUBDIRS = ("tmp", "new", "cur", "failed")
KEEP_FAILED = 1000
"""failed/ keeps this many newest entries (each holds its reason); older ones go."""
STALE_TMP = 3600.0
_QUEUES = SUBDIRS[1:]
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
"""Errors that say "the disk is full", not "the request is bad": retried without limit."""

_ID = re.compile(r"[0-9]{20}-[0-9a-f]{8}|mail-[A-Za-z0-9_-]{1,100}")
_FIELDS = ("id", "identity", "action", "created_at", "from")
_KINDS = {stat.S_IFLNK: "symlink", stat.S_IFDIR: "directory", stat.S_IFIFO: "FIFO"}
Record: t.TypeAlias = dict[str, t.Any]


# -- pure: ids and records ------------------------------------------------------


def new_id() -> str:
    """A fresh request id; ids sort in creation order."""
    return f"{time.time_ns():020d}-{secrets.token_hex(4)}"


def file_id(name: str) -> str | None:
    """The request id of a spool file name ``<id>.json``, or None.

    >>> file_id("00000000000000000001-0a0b0c0d.json"), file_id("../x.json")
    ('00000000000000000001-0a0b0c0d', None)
    """
    stem = name.removesuffix(".json")
    return stem if stem != name and _ID.fullmatch(stem) else None


def check_record(rec: t.Mapping[str, t.Any], rid: str) -> tuple[Identity, str]:
    """Validate a spool record read from ``<rid>.json``; return its identity and action.

    Raises
    ------
    RequestError
        A problem noted at import, a missing or wrong-typed field, an id that is not
        the file's, a ``mail_id`` unfit for ``gt``, an unknown action or identity.
    """
    if isinstance(rec.get("problem"), str):
        raise RequestError(rec["problem"])
    for key in _FIELDS:
        if not isinstance(rec.get(key), str):
            msg = f"field {key!r} must be a string ({type(rec.get(key)).__name__})"
            raise RequestError(msg)
    if rec["id"] != rid:
        msg = f"id {rec['id'][:40]!r} does not match the file name {rid}.json"
        raise RequestError(msg)
    mail_id = rec.get("mail_id", "-")
    if "mail_id" in rec and not (isinstance(mail_id, str) and mail.MAIL_ID.fullmatch(mail_id)):
        msg = f"unusable mail_id {str(rec['mail_id'])[:40]!r}"
        raise RequestError(msg)
    action = actions.canonical_action(rec["action"])
    try:
        return parse_identity(rec["identity"]), action
    except IdentityError as err:
        raise RequestError(str(err)) from None


def _what(rid: str, rec: t.Mapping[str, t.Any]) -> str:
    action, identity = actions.shown(rec.get("action")), actions.shown(rec.get("identity"))
    return f"lifecycle request {rid} ({action} {identity})"


def _fields(rid: str, rec: t.Mapping[str, t.Any], outcome: str) -> dict[str, str]:
    identity, action = actions.shown(rec.get("identity", "")), actions.shown(rec.get("action", ""))
    with contextlib.suppress(IdentityError):
        identity = parse_identity(rec.get("identity")).dash  # type: ignore[arg-type]
    fields = {"GTD_REQUEST_ID": rid, "GTD_IDENTITY": identity, "GTD_ACTION": action}
    return fields | {"GTD_OUTCOME": outcome}


# -- the spool on disk ---------------------------------------------------------


def spool_dir(town: pathlib.Path) -> pathlib.Path:
    """``<town>/daemon/lifecycle``."""
    return town / "daemon" / "lifecycle"


def untrusted(st: os.stat_result) -> str | None:
    """Why a spool entry with this ``lstat`` is not to be trusted, or None.

    Only the daemon's own user may have written it: owned by the effective uid, not
    writable by group or others, and (for a file) not a hard link to a file elsewhere.
    """
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by the daemon's uid {os.geteuid()}"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        return f"a hard link ({st.st_nlink} names)"
    return None


def _ensure_spool(town: pathlib.Path) -> pathlib.Path:
    """Create the spool directories (0700); refuse any that is not a real directory.

    Raises
    ------
    GtdError
        A spool directory is a symlink or another non-directory, or is not trusted
        (:func:`untrusted`). Nothing is changed: a person must look at it.
    """
    root = spool_dir(town)
    root.parent.mkdir(parents=True, exist_ok=True)
    for path in (root, *(root / sub for sub in SUBDIRS)):
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            msg = f"{path} is not a directory (a symlink?); refusing to use it"
            raise GtdError(msg)
        if (why := untrusted(st)) is not None:
            msg = f"{path} is {why}; the spool is not trusted, requests stay untouched"
            raise GtdError(msg)
    return root


def _dumps(rec: t.Mapping[str, t.Any]) -> bytes:
    return (json.dumps(rec, indent=2) + "\n").encode()


def _write_new(root: pathlib.Path, rec: t.Mapping[str, t.Any]) -> None:
    """Write *rec* to ``tmp/``, fsync, rename into ``new/``: never seen half-written.

    On any failure (disk full included) the temp file is removed and nothing is
    queued; an OSError without a file name gets the spool's.
    """
    name = f"{rec['id']}.json"
    tmp = root / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_dumps(rec))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, root / "new" / name)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(root)
        raise
    dirfd = os.open(root / "new", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def enqueue(town: pathlib.Path, identity: str, action: str, *, sender: str) -> str:
    """Queue a lifecycle request and return its id; the agent's flag is not touched.

    Raises
    ------
    IdentityError, RequestError
        *identity* or *action* is invalid (nothing is written).
    OSError, GtdError
        The spool cannot be created or written.
    """
    ident, act = parse_identity(identity), actions.canonical_action(action)
    rid = new_id()
    rec = {"id": rid, "identity": ident.dash, "action": act, "created_at": store.now_iso()}
    _write_new(_ensure_spool(town), rec | {"from": sender})
    return rid


def _names(directory: pathlib.Path) -> list[str]:
    """Entries to process, in name order; dotfiles and temp files are not requests."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if not n.startswith(".") and not n.endswith(".tmp"))


def pending(town: pathlib.Path) -> list[str]:
    """Ids of the requests waiting: those in ``cur/`` (interrupted) first, then ``new/``."""
    root = spool_dir(town)
    return [rid for sub in ("cur", "new") for n in _names(root / sub) if (rid := file_id(n))]


def failed(town: pathlib.Path) -> list[Record]:
    """The records in ``failed/`` in name order (spool ids by age, then mail); skips unreadable."""
    records, directory = [], spool_dir(town) / "failed"
    for name in _names(directory):
        with contextlib.suppress(OSError, StateError):
            if rid := file_id(name):
                records.append(store.read_json_object(directory / name) | {"id": rid})
    return records


# -- processing ------------------------------------------------------------------


class Lifecycle:
    """Carries out spool and ``gt mail`` requests (the daemon's ``Lifecycle``)."""

    def __init__(self) -> None:
        self._busy = False
        self.mail = mail.MailSource()

    def process(self, config: Config, tmux: Tmux, tick: t.Callable[[], None]) -> None:
        """One pass: import lifecycle mail, finish ``cur/``, then ``new/`` in name order.

        *tick* is called between requests and steps. Bad requests and failing tools
        are logged, never raised; a nested call (from *tick*) returns at once. An
        untrusted spool is logged (an error) and left alone, mail import included.
        """
        if self._busy:
            return
        self._busy = True
        try:
            _Pass(self, config, tmux, tick).run()
        except (GtdError, OSError) as err:
            logger.error("lifecycle spool unusable: %s", err)  # noqa: TRY400 - no traceback
        finally:
            self._busy = False


class _Pass:
    """One :meth:`Lifecycle.process` call."""

    def __init__(
        self, owner: Lifecycle, config: Config, tmux: Tmux, tick: t.Callable[[], None]
    ) -> None:
        self.config, self.tmux, self.tick = config, tmux, tick
        self.mail = owner.mail
        self.town = config.town_root
        self.root = spool_dir(self.town)

    def run(self) -> None:
        _ensure_spool(self.town)
        for name in os.listdir(self.root / "cur"):  # temp files left by a crash
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(self.root / "cur" / name)
        self.fetch_mail()
        for name in _names(self.root / "cur"):
            self.tick()
            self.handle(self.root / "cur" / name)
        for name in _names(self.root / "new"):
            self.tick()
            self.claim(name)
        self.prune()

    def prune(self) -> None:
        """Bound the spool: keep the newest :data:`KEEP_FAILED` failures, drop stale temp files.

        A temp file older than :data:`STALE_TMP` seconds is from a writer killed mid-write
        (it was never a request). Nothing is followed: links are removed, not resolved.
        """
        now = time.time()
        for directory, keep in (("tmp", None), ("failed", KEEP_FAILED)):
            entries = []
            for name in os.listdir(self.root / directory):
                with contextlib.suppress(OSError):
                    entries.append((os.lstat(self.root / directory / name).st_mtime, name))
            entries.sort()
            doomed = (
                [n for m, n in entries if now - m > STALE_TMP]
                if keep is None
                else [n for _, n in entries[: max(0, len(entries) - keep)]]
            )
            for name in doomed:
                path = self.root / directory / name
                with contextlib.suppress(OSError):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            if doomed:
                logger.info("spool %s/: removed %d old entries", directory, len(doomed))

    def fetch_mail(self) -> None:
        """Import new lifecycle mail into ``new/``; a failing ``gt`` is logged and skipped."""
        argv, now = self.config.lifecycle.argv, store.now_iso()
        records = self.mail.requests(argv, self.town, actions.daemon_env(), now)
        self.tick()
        for rec in records:
            if any(os.path.lexists(self.root / s / f"{rec['id']}.json") for s in _QUEUES):
                continue  # imported before (a crash, or it failed)
            try:
                _write_new(self.root, rec)
            except OSError as err:
                logger.warning("lifecycle mail not imported: %s", err)
                continue
            extra = _fields(rec["id"], rec, "imported") | {"GTD_MAIL_ID": rec["mail_id"]}
            logger.info("imported lifecycle mail %s as %s", rec["mail_id"], rec["id"], extra=extra)

    def claim(self, name: str) -> None:
        """Move ``new/<name>`` into ``cur/`` (the claim) and handle it."""
        src, dst = self.root / "new" / name, self.root / "cur" / name
        if file_id(name) is None:
            self.reject(src, new_id(), f"bad file name {name!r} (expected <id>.json)")
        elif os.path.lexists(dst):
            self.reject(src, new_id(), f"duplicate request id: {name} is already in cur/")
        else:
            with contextlib.suppress(FileNotFoundError):
                os.rename(src, dst)
                self.handle(dst)

    def handle(self, path: pathlib.Path) -> None:
        """Take one ``cur/`` entry as far as it goes this pass; never follows a symlink."""
        if (rid := file_id(path.name)) is None:
            self.reject(path, new_id(), f"bad file name {path.name!r} (expected <id>.json)")
            return
        with contextlib.suppress(FileNotFoundError):
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                kind = _KINDS.get(stat.S_IFMT(st.st_mode), "special file")
                self.reject(path, rid, f"not a regular file ({kind}); left unread")
            elif (why := untrusted(st)) is not None:
                self.reject(path, rid, f"not trusted: {why}; left unread")
            elif st.st_size > MAX_REQUEST_BYTES:
                self.reject(path, rid, f"larger than {MAX_REQUEST_BYTES} bytes", raw=True)
            else:
                try:
                    rec = store.read_json_object(path)
                except StateError as err:
                    self.reject(path, rid, str(err).removeprefix(f"{path}: "), raw=True)
                    return
                try:
                    self.advance(path, rid, rec)
                except OSError as err:  # the spool itself (disk full ...): next pass
                    extra = _fields(rid, rec, "retry")
                    logger.warning(
                        "lifecycle request %s kept for the next pass: %s", rid, err, extra=extra
                    )
                except Exception:  # a bug, not bad input: the traceback helps; attempts bound it
                    logger.exception("request %s failed", rid, extra=_fields(rid, rec, "retry"))

    def advance(self, path: pathlib.Path, rid: str, rec: Record) -> None:
        """Count an attempt, then act, mark executed, clear the flag, delete the mail.

        A full disk (:data:`NO_SPACE`) spends no attempt: the request waits for space.
        """
        attempts = rec.get("attempts")
        attempts = attempts if type(attempts) is int and attempts >= 0 else 0
        if attempts >= MAX_ATTEMPTS:
            last = rec.get("last_error") or "interrupted"
            self.give_up(path, rid, rec, f"gave up after {attempts} attempts: {last}", True)
            return
        rec["attempts"] = attempts + 1
        store.atomic_write(path, _dumps(rec), mode=0o600)
        try:
            if not isinstance(rec.get("failure"), str):
                try:
                    identity, action = check_record(rec, rid)
                    if rec.get("executed") is not True:
                        actions.check_flag(self.town, identity, action)
                        actions.act(self.config, self.tmux, identity, action, self.tick)
                        rec["executed"] = True
                        store.atomic_write(path, _dumps(rec), mode=0o600)
                    actions.clear_flag(self.town, identity, action)
                except RequestError as err:
                    rec["failure"] = str(err)
            self.mail.delete(rec)
        except (TmuxError, OSError, mail.DeleteFailed) as err:
            what = _what(rid, rec)
            if isinstance(err, OSError) and err.errno in NO_SPACE:
                rec["attempts"] -= 1  # the disk is full, the request is fine: no attempt spent
                rec["last_error"] = str(err)
                with contextlib.suppress(OSError):
                    store.atomic_write(path, _dumps(rec), mode=0o600)
                logger.warning(
                    "%s waits for disk space: %s", what, err, extra=_fields(rid, rec, "retry")
                )
                return
            if rec["attempts"] >= MAX_ATTEMPTS:
                reason = f"gave up after {rec['attempts']} attempts: {err}"
                self.give_up(path, rid, rec, reason, not isinstance(err, mail.DeleteFailed))
                return
            rec["last_error"] = str(err)
            store.atomic_write(path, _dumps(rec), mode=0o600)
            logger.warning(
                "%s will be retried, attempt %d of %d: %s", what, rec["attempts"], MAX_ATTEMPTS,
                err, extra=_fields(rid, rec, "retry"),
            )  # fmt: skip
            return
        self.finish(path, rid, rec)

    def give_up(self, path: pathlib.Path, rid: str, rec: Record, why: str, delete: bool) -> None:
        """Retries are spent: try the mail delete once more, then move to ``failed/``."""
        with contextlib.suppress(mail.DeleteFailed):
            if delete:
                self.mail.delete(rec)
        earlier = rec.get("failure")
        rec["failure"] = f"{earlier}; {why}" if isinstance(earlier, str) else why
        self.finish(path, rid, rec)

    def finish(self, path: pathlib.Path, rid: str, rec: Record) -> None:
        """The final state: done (removed) or failed (recorded in ``failed/``, removed)."""
        failure = rec.pop("failure", None)
        if isinstance(failure, str):
            self.write_failed(rid, rec, failure)
        path.unlink()
        what = _what(rid, rec)
        if isinstance(failure, str):
            logger.error("%s failed: %s", what, failure, extra=_fields(rid, rec, "failed"))
        else:
            logger.info("%s done", what, extra=_fields(rid, rec, "done"))

    def write_failed(self, rid: str, fields: Record, reason: str) -> None:
        rec = {"attempts": 1} | fields | {"reason": reason, "failed_at": store.now_iso()}
        store.atomic_write(self.root / "failed" / f"{rid}.json", _dumps(rec), mode=0o600)

    def reject(self, path: pathlib.Path, rid: str, reason: str, *, raw: bool = False) -> None:
        """Move an entry that is no usable request to ``failed/``; symlinks stay unread."""
        fields: Record = {"name": actions.shown(path.name)}
        with contextlib.suppress(OSError):
            if raw:  # a regular file: checked by the caller, O_NOFOLLOW in case it changed
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as f:
                    fields["raw"] = repr(f.read(4096))
        try:
            self.write_failed(rid, fields, reason)
            if path.is_dir() and not path.is_symlink():
                os.rename(path, self.root / "failed" / f"{rid}.entry")
            else:
                path.unlink()
        except OSError as err:
            extra = _fields(rid, {}, "retry")
            logger.error("cannot move %s to failed/: %s", path, err, extra=extra)  # noqa: TRY400
            return
        extra = _fields(rid, {}, "failed")
        logger.error("lifecycle request %s rejected: %s", rid, reason, extra=extra)
