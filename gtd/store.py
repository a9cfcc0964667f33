"""Files gtd writes: always whole (temp file, fsync, rename), never half-written.

Also the daemon's ``state.json`` with upstream's keys (``running``, ``pid``,
``started_at``, ``last_heartbeat``, ``heartbeat_count``) plus gtd's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import logging
import os
import pathlib
import re
import stat
import typing as t

from gtd.exc import StateError

logger = logging.getLogger(__name__)

MAX_STATE_BYTES = 1 << 20
"""State files are small; anything bigger is refused rather than read into memory."""


def atomic_write(
    path: pathlib.Path, data: bytes, *, mode: int = 0o644, sync_dir: bool = True
) -> None:
    """Replace *path* with *data* so readers see the old file or the new one, never a mix.

    Writes a temp file in the same directory, fsyncs it, renames it over *path* and
    fsyncs the directory. On any failure (disk full included) the old file is intact
    and the temp file is removed. A symlink at *path* is replaced, never followed.
    Without *sync_dir*, a power cut may leave the old file in place (still whole); for
    progress notes where redoing a step is harmless.

    Raises
    ------
    OSError
        Whatever the write, fsync or rename raised; without a file name it gets *path*.
    """
    write_new(path, data, mode=mode, replace=True, sync_dir=sync_dir)


def write_new(
    path: pathlib.Path, data: bytes, *, mode: int = 0o644, replace: bool, sync_dir: bool = True
) -> None:
    """Write *data* to *path* whole (temp file, fsync, rename or link, fsync the directory).

    With *replace* false an existing name (a dangling symlink included) is never
    replaced, even one created meanwhile: the file is linked into place, which fails
    where a rename would clobber.

    Raises
    ------
    FileExistsError
        *replace* is false and *path* exists.
    OSError
        Whatever the write, fsync or rename raised; without a file name it gets *path*.
    """
    fd, tmp = _temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)  # "No space left on device" alone does not say where
        raise
    if sync_dir:
        fsync_dir(path.parent)


def _temp_file(path: pathlib.Path) -> tuple[int, str]:
    """Create ``.<name>.<random>.tmp`` beside *path*, mode 0600, as ``tempfile.mkstemp`` does.

    Not ``tempfile`` itself: importing it costs the daemon half a megabyte of RSS.

    Raises
    ------
    OSError
        The directory is not writable (or 100 random names were all taken).
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


def fsync_dir(directory: pathlib.Path) -> None:
    """Make a rename or link in *directory* durable."""
    dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def write_json(path: pathlib.Path, obj: t.Mapping[str, t.Any]) -> None:
    """Atomically write *obj* as indented JSON (upstream's layout)."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json_object(path: pathlib.Path) -> dict[str, t.Any]:
    """Read a JSON object from *path*, refusing symlinks, huge files and non-objects.

    Never blocks: a FIFO or device is refused, not opened for reading and waited on.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    StateError
        Anything else: unreadable, not a regular file, too big, not UTF-8 JSON, not an object.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as err:
        msg = f"{path}: cannot open: {err.strerror}"
        raise StateError(msg) from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            msg = f"{path}: not a regular file"
            raise StateError(msg)
        raw = f.read(MAX_STATE_BYTES + 1)
    if len(raw) > MAX_STATE_BYTES:
        msg = f"{path}: larger than {MAX_STATE_BYTES} bytes"
        raise StateError(msg)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        msg = f"{path}: not UTF-8 (byte {err.start})"
        raise StateError(msg) from None
    except json.JSONDecodeError as err:
        msg = f"{path}: not JSON: {err.msg} at line {err.lineno} column {err.colno}"
        raise StateError(msg) from None
    except RecursionError:
        msg = f"{path}: not JSON: nested too deeply"
        raise StateError(msg) from None
    if not isinstance(obj, dict):
        msg = f"{path}: not a JSON object but {type(obj).__name__}"
        raise StateError(msg)
    return obj


def now_iso() -> str:
    """The current time as RFC 3339 with offset, like upstream's Go ``time.Time``."""
    return datetime.datetime.now(datetime.UTC).astimezone().isoformat()


def iso(timestamp: float) -> str:
    """A Unix time as :func:`now_iso` writes it."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).astimezone().isoformat()


@dataclasses.dataclass(slots=True)
class DaemonState:
    """``<town>/daemon/state.json``: what ``gtd status`` and upstream's ``gt`` read."""

    running: bool = False
    pid: int = 0
    started_at: str = ""
    last_heartbeat: str = ""
    heartbeat_count: int = 0
    motd_index: int = -1
    version: str = ""
    """The gtd version of the daemon that wrote it."""
    agents: dict[str, t.Any] = dataclasses.field(default_factory=dict)
    """Each supervised agent's record by identity (:meth:`gtd.supervisor.Supervisor.record`)."""

    def to_json(self) -> dict[str, t.Any]:
        """Upstream's keys first, then gtd's."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: t.Mapping[str, t.Any]) -> DaemonState:
        """Lenient: wrong-typed or missing keys fall back to defaults (it is only a record)."""
        state = cls()
        for f in dataclasses.fields(cls):
            value = obj.get(f.name)
            default = getattr(state, f.name)
            if isinstance(value, type(default)) and not (
                isinstance(value, bool) and not isinstance(default, bool)
            ):
                setattr(state, f.name, value)
        return state


def state_path(town: pathlib.Path) -> pathlib.Path:
    """``<town>/daemon/state.json``."""
    return town / "daemon" / "state.json"


def load_daemon_state(town: pathlib.Path) -> DaemonState:
    """The last saved state; a missing or unreadable file gives a fresh one.

    An unreadable file (binary, huge, a symlink, not an object) is logged as a warning
    and left as it is; the next save replaces it (a symlink's target is never touched).
    """
    try:
        return DaemonState.from_json(read_json_object(state_path(town)))
    except FileNotFoundError:
        return DaemonState()
    except StateError as err:
        logger.warning("ignoring the daemon state file, starting afresh: %s", err)
        return DaemonState()


def save_daemon_state(town: pathlib.Path, state: DaemonState) -> None:
    """Atomically write state.json, creating ``<town>/daemon`` if it went missing."""
    path = state_path(town)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, state.to_json())


_VERSION_LINE = re.compile(r'^__version__ = "([^"]+)"$', re.MULTILINE)


def installed_version(package_init: pathlib.Path) -> str | None:
    """The ``__version__`` written in an installed ``gtd/__init__.py``, or None.

    A running daemon reads its own package file to notice an upgrade installed under
    it (the file on disk changes; the code in memory does not).
    """
    try:
        text = package_init.read_text(errors="replace")[:4096]
    except OSError:
        return None
    match = _VERSION_LINE.search(text)
    return match.group(1) if match else None


def newer(installed: str, running: str) -> bool:
    """Whether *installed* is a later version than *running* (dotted numbers).

    >>> newer("0.10.0", "0.9.1"), newer("0.2.0", "0.2.0"), newer("1.0", "1.0.1")
    (True, False, False)
    >>> newer("0.3.0rc1", "0.2.0")
    True
    """

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(m) for m in re.findall(r"\d+", version.split("+")[0])[:4])

    return key(installed) > key(running)
