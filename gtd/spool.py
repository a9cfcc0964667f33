"""The lifecycle spool: a crash-safe queue of request records in the town.

``<town>/daemon/lifecycle/{tmp,new,cur,failed}/``, one JSON file per request. A
record is written whole to ``tmp/`` and renamed into ``new/``; the daemon claims it
by renaming it into ``cur/``, rewrites it there as it goes, and removes it once
complete, or moves it to ``failed/`` with a reason. What the records ask for is
not this module's business (see :mod:`gtd.lifecycle`). Only a spool and files
that the daemon's user owns, and no one else can write, are trusted; entries that
are no readable record (links, FIFOs, junk) go to ``failed/`` unread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import stat
import time
import typing as t

from gtd import store
from gtd.exc import SpoolError, StateError
from gtd.request import file_id, log_fields, new_id, shown

logger = logging.getLogger(__name__)

SUBDIRS = ("tmp", "new", "cur", "failed")
MAX_RECORD_BYTES = 64 * 1024
KEEP_FAILED = 1000
"""failed/ keeps this many newest entries (each holds its reason); older ones go."""
STALE_TMP = 3600.0
"""A temp file older than this (seconds) is from a writer killed mid-write."""
_QUEUES = SUBDIRS[1:]
_KINDS = {stat.S_IFLNK: "symlink", stat.S_IFDIR: "directory", stat.S_IFIFO: "FIFO"}
Record: t.TypeAlias = dict[str, t.Any]


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


def dumps(rec: t.Mapping[str, t.Any]) -> bytes:
    """A record as the spool stores it."""
    return (json.dumps(rec, indent=2) + "\n").encode()


@dataclasses.dataclass(slots=True)
class Entry:
    """A claimed record in ``cur/``; :attr:`record` is rewritten by :meth:`Spool.save`."""

    id: str
    path: pathlib.Path
    record: Record


class Spool:
    """The spool of one town.

    Every method that touches the disk raises ``OSError`` for the disk's failures
    (full, read-only), and :class:`~gtd.exc.SpoolError` when the spool itself is
    not a trusted directory (nothing is changed then).
    """

    def __init__(self, town: pathlib.Path) -> None:
        self.root = spool_dir(town)

    def ensure(self) -> None:
        """Create the spool directories (0700); refuse any that is not a trusted directory."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.root, *(self.root / sub for sub in SUBDIRS)):
            path.mkdir(mode=0o700, exist_ok=True)
            st = path.lstat()
            if not stat.S_ISDIR(st.st_mode):
                msg = f"{path} is not a directory (a symlink?); refusing to use it"
                raise SpoolError(msg)
            if (why := untrusted(st)) is not None:
                msg = f"{path} is {why}; the spool is not trusted, requests stay untouched"
                raise SpoolError(msg)

    def enqueue(self, rec: t.Mapping[str, t.Any]) -> None:
        """Write *rec* to ``tmp/``, fsync, rename into ``new/``: never seen half-written.

        On any failure (disk full included) the temp file is removed and nothing is
        queued; an OSError without a file name gets the spool's.
        """
        self.ensure()
        name = f"{rec['id']}.json"
        tmp = self.root / "tmp" / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(dumps(rec))
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.root / "new" / name)
        except BaseException as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(err, OSError) and err.filename is None:
                err.filename = str(self.root)
            raise
        store.fsync_dir(self.root / "new")

    def knows(self, rid: str) -> bool:
        """Whether a record with this id is queued, claimed or failed."""
        return any(os.path.lexists(self.root / sub / f"{rid}.json") for sub in _QUEUES)

    def pending(self) -> list[str]:
        """Ids of the records waiting: those in ``cur/`` (interrupted) first, then ``new/``."""
        return [
            rid for sub in ("cur", "new") for n in _names(self.root / sub) if (rid := file_id(n))
        ]

    def failed(self) -> list[Record]:
        """The records in ``failed/`` in name order (ids by age, then mail); skips unreadable."""
        records, directory = [], self.root / "failed"
        for name in _names(directory):
            with contextlib.suppress(OSError, StateError):
                if rid := file_id(name):
                    records.append(store.read_json_object(directory / name) | {"id": rid})
        return records

    # -- claiming ------------------------------------------------------------------

    def entries(self, tick: t.Callable[[], None] = lambda: None) -> t.Iterator[Entry]:
        """Claimed records, ``cur/`` (interrupted earlier) first, then ``new/`` in name order.

        Each ``new/`` record is claimed by renaming it into ``cur/`` just before it is
        yielded. Entries that are no readable record are moved to ``failed/`` on the
        way; *tick* is called before each entry.
        """
        self.ensure()
        for name in os.listdir(self.root / "cur"):  # temp files left by a crash
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(self.root / "cur" / name)
        for name in _names(self.root / "cur"):
            tick()
            if (entry := self._read(self.root / "cur" / name)) is not None:
                yield entry
        for name in _names(self.root / "new"):
            tick()
            src, dst = self.root / "new" / name, self.root / "cur" / name
            if file_id(name) is None:
                self.reject(src, new_id(), f"bad file name {name!r} (expected <id>.json)")
            elif os.path.lexists(dst):
                self.reject(src, new_id(), f"duplicate request id: {name} is already in cur/")
            else:
                try:
                    os.rename(src, dst)
                except FileNotFoundError:
                    continue
                if (entry := self._read(dst)) is not None:
                    yield entry

    def _read(self, path: pathlib.Path) -> Entry | None:
        """The record at *path*, or None after moving a bad entry to ``failed/``."""
        if (rid := file_id(path.name)) is None:
            self.reject(path, new_id(), f"bad file name {path.name!r} (expected <id>.json)")
            return None
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "special file")
            self.reject(path, rid, f"not a regular file ({kind}); left unread")
        elif (why := untrusted(st)) is not None:
            self.reject(path, rid, f"not trusted: {why}; left unread")
        elif st.st_size > MAX_RECORD_BYTES:
            self.reject(path, rid, f"larger than {MAX_RECORD_BYTES} bytes", raw=True)
        else:
            try:
                return Entry(rid, path, store.read_json_object(path))
            except FileNotFoundError:
                return None
            except StateError as err:
                self.reject(path, rid, str(err).removeprefix(f"{path}: "), raw=True)
        return None

    def save(self, entry: Entry) -> None:
        """Rewrite a claimed record atomically (its progress survives a crash).

        The directory is not fsynced: the record is in ``cur/`` either way, and after a
        power cut an older, whole copy at worst redoes a step (actions are idempotent).
        """
        store.atomic_write(entry.path, dumps(entry.record), mode=0o600, sync_dir=False)

    def complete(self, entry: Entry) -> None:
        """The record is done: remove it."""
        entry.path.unlink()

    def fail(self, entry: Entry, reason: str) -> None:
        """The record can never be done: keep it in ``failed/`` with *reason*, remove it."""
        self._write_failed(entry.id, entry.record, reason)
        entry.path.unlink()

    def _write_failed(self, rid: str, fields: Record, reason: str) -> None:
        rec = {"attempts": 1} | fields | {"reason": reason, "failed_at": store.now_iso()}
        store.atomic_write(self.root / "failed" / f"{rid}.json", dumps(rec), mode=0o600)

    def reject(self, path: pathlib.Path, rid: str, reason: str, *, raw: bool = False) -> None:
        """Move an entry that is no usable record to ``failed/``; symlinks stay unread."""
        fields: Record = {"name": shown(path.name)}
        with contextlib.suppress(OSError):
            if raw:  # a regular file: checked by the caller, O_NOFOLLOW in case it changed
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as f:
                    fields["raw"] = repr(f.read(4096))
        try:
            self._write_failed(rid, fields, reason)
            if path.is_dir() and not path.is_symlink():
                os.rename(path, self.root / "failed" / f"{rid}.entry")
            else:
                path.unlink()
        except OSError as err:
            extra = log_fields(rid, {}, "retry")
            logger.error("cannot move %s to failed/: %s", path, err, extra=extra)  # noqa: TRY400
            return
        extra = log_fields(rid, {}, "failed")
        logger.error("lifecycle request %s rejected: %s", rid, reason, extra=extra)

    def prune(self) -> None:
        """Bound the spool: keep the newest :data:`KEEP_FAILED` failures, drop stale temp files.

        Nothing is followed: links are removed, not resolved.
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
                        import shutil  # rare: a stale temp directory

                        shutil.rmtree(path)
                    else:
                        path.unlink()
            if doomed:
                logger.info("spool %s/: removed %d old entries", directory, len(doomed))


def _names(directory: pathlib.Path) -> list[str]:
    """Entries to process, in name order; dotfiles and temp files are not requests."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if not n.startswith(".") and not n.endswith(".tmp"))
