"""A real ``systemd --user`` manager and journald for system tests.

This harness lets the system tests run where PID 1 is not systemd (containers, CI
VMs). It starts the manager in a private mount namespace whose ``/run/systemd`` is a
fresh tmpfs holding ``/run/systemd/system``, so systemd believes it was booted. A
private ``systemd-journald`` in that namespace writes persistent journals to
``/var/log/journal``, which there is this run's own directory
(``/var/log/gtd-sandbox/USER``) mounted over the machine's. The manager lives in
cgroup ``user.slice/user-UID.slice/user@UID.service`` in every cgroup hierarchy, so
unit cgroups, ``_SYSTEMD_USER_UNIT``, ``Type=notify``, ``WatchdogSec=``,
``systemctl --user kill`` and ``Restart=`` all behave as they do under a real login
session. Commands run as the user (:meth:`UserManager.run`) enter that namespace, as
a login session shares its manager's, so ``journalctl --user -u UNIT`` reads the
journal exactly as a user would type it.

Two test runs on one machine never share anything: each clone has its own sandbox
user (:func:`default_user`, derived from the clone's path; ``$GTD_SYSTEST_USER``
overrides it), with its own uid, runtime directory, cgroups, tmux sockets, journal
directory and fallback venv, and a lock (``/run/gtd-sandbox/USER.lock``) turns a
second run on the same user into a clear error instead of a teardown of the first.

Everything here needs root. Every process the harness starts has stdin, stdout and
stderr on ``/dev/null`` and runs in its own session, so none of them holds the test
runner's output open.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import json
import linecache
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import time
import typing as t

from gtd import proc as gtd_proc
from gtd.exc import CommandTimeout

if t.TYPE_CHECKING:
    import types
    from collections.abc import Callable, Mapping

JournalEntry: t.TypeAlias = dict[str, t.Any]
T = t.TypeVar("T")

SYSTEMD = pathlib.Path("/lib/systemd/systemd")
JOURNALD = pathlib.Path("/lib/systemd/systemd-journald")
SYSTEM_PYTHON = pathlib.Path("/usr/bin/python3")
REPO = pathlib.Path(__file__).resolve().parents[1]
#: Lock files and journald pidfiles, one each per sandbox user.
STATE_DIR = pathlib.Path("/run/gtd-sandbox")
#: Each sandbox user's journal directory, mounted over /var/log/journal in its namespace.
JOURNAL_ROOT = pathlib.Path("/var/log/gtd-sandbox")
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Hierarchies the manager is placed in, when they exist (hybrid v1 + v2, or pure v2).
CGROUP_HIERARCHIES = (
    pathlib.Path("/sys/fs/cgroup/systemd"),
    pathlib.Path("/sys/fs/cgroup/unified"),
    pathlib.Path("/sys/fs/cgroup"),
)
REQUIRED_TOOLS = (
    "unshare", "nsenter", "setpriv", "runuser", "useradd", "pkill", "pgrep", "mount",
)  # fmt: skip

# Root, new session: join the user's cgroups, enter a private mount namespace, put this
# run's journal directory over /var/log/journal, start journald and the manager. bash
# stays their parent and reaps them: PID 1 here may never reap orphans.
_BOOTSTRAP = r"""
for d in $SB_CGDIRS; do echo $$ > "$d/cgroup.procs" || true; done
exec unshare --mount --propagation private bash -c '
  mount -t tmpfs tmpfs /run/systemd
  mkdir -p /run/systemd/system /run/systemd/journal /var/log/journal
  mount --bind "$SB_JOURNAL" /var/log/journal
  touch /run/systemd/journal/flushed   # journald writes /var/log/journal at once
  /lib/systemd/systemd-journald & journald=$!; echo $journald > "$SB_PIDFILE"
  for i in $(seq 100); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.05; done
  setpriv --reuid="$SB_USER" --regid="$SB_USER" --init-groups env -i \
    HOME="$SB_HOME" USER="$SB_USER" LOGNAME="$SB_USER" PATH="$SB_PATH" \
    XDG_RUNTIME_DIR="$SB_RT" SYSTEMD_LOG_TARGET=journal /lib/systemd/systemd --user &
  wait $!
  kill -TERM $journald; wait $journald'
"""


def clone_id(repo: pathlib.Path = REPO) -> str:
    """Eight hex digits that name this clone of the repository (a hash of its path)."""
    return hashlib.sha256(os.fsencode(repo.resolve())).hexdigest()[:8]


def default_user() -> str:
    """The sandbox user of this run: ``$GTD_SYSTEST_USER``, else ``gtdt<clone_id()>``.

    Derived from the clone's path, so two clones never share a user, and one clone
    keeps its user (and its home, made once by ``useradd -m``) from run to run.
    """
    return os.environ.get("GTD_SYSTEST_USER") or f"gtdt{clone_id()}"


#: Where ensure_user_can_run() builds a venv the sandbox user can read, one per clone.
FALLBACK_VENV = pathlib.Path(f"/var/tmp/gtd-systest-venv-{clone_id()}")


class Entries(list[JournalEntry]):
    """Journal entries whose ``repr`` is their last 40 ``MESSAGE`` fields, one a line.

    So a wait on the journal that times out shows what the unit logged, readably.
    """

    def __repr__(self) -> str:
        cut = f" (last 40 of {len(self)})" if len(self) > 40 else ""
        lines = "".join(f"\n  {e.get('MESSAGE')!r}" for e in self[-40:])
        return f"{len(self)} entries{cut}:{lines}"


class SandboxError(AssertionError):
    """The sandbox could not do what a test asked of it.

    It derives from ``AssertionError`` so pytest reports it as a failed expectation.
    """


class CommandFailed(SandboxError):
    """A command run as the sandbox user exited non-zero or timed out."""

    def __init__(
        self,
        argv: t.Sequence[str],
        returncode: int | None,
        stdout: str,
        stderr: str,
        *,
        timeout: float | None = None,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timeout = timeout
        outcome = f"timed out after {timeout}s" if timeout is not None else f"rc={returncode}"
        super().__init__(
            f"{' '.join(self.argv)}: {outcome}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
        )


# --- waiting ----------------------------------------------------------------------------


class WaitTimeout(SandboxError):
    """A condition did not hold before its deadline.

    The message says what was waited for, for how long, and what was seen last (and,
    when the wait was given one, the context: a service's journal, a log).
    """

    def __init__(self, what: str, timeout: float, seen: object, context: str = "") -> None:
        self.what = what
        self.timeout = timeout
        self.seen = seen
        msg = f"waited {timeout:g}s for {what}; last saw: {shown(seen, 8000)}"
        super().__init__(f"{msg}\n{context}" if context else msg)


def shown(value: object, limit: int = 2000) -> str:
    """``repr(value)``, its middle cut out when longer than *limit* characters.

    >>> shown("x" * 10, limit=6)
    "'xx ... xx'"
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} ... {text[-half:]}"


def describe(fn: Callable[..., object]) -> str:
    """What a wait polls, for its timeout message: a lambda's body, else a function's name.

    Reads the source file only when called, so only a wait that times out pays for it.

    >>> describe(lambda: 1 + 1 == 2), describe(lambda: 3 > 2)
    ('1 + 1 == 2', '3 > 2')
    >>> describe(shown)
    'shown()'
    """
    name = getattr(fn, "__name__", "")
    code = getattr(fn, "__code__", None)
    if name != "<lambda>" or code is None:
        return f"{name}()" if name else repr(fn)
    source = "".join(linecache.getlines(code.co_filename))
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return repr(fn)
    here = [
        n for n in ast.walk(tree) if isinstance(n, ast.Lambda) and n.lineno == code.co_firstlineno
    ]
    # Several lambdas on one line: the one whose body starts where its code does.
    starts = {(ln, col) for ln, _end, col, _ecol in code.co_positions()}
    found = [n for n in here if (n.body.lineno, n.body.col_offset) in starts] or here
    body = ast.get_source_segment(source, found[0].body) if len(found) == 1 else None
    return " ".join(body.split()) if body else repr(fn)


def _context(context: Callable[[], object] | None) -> str:
    if context is None:
        return ""
    try:
        value = context()
    except Exception as err:  # noqa: BLE001 - a failing context must not hide the timeout
        return f"context ({describe(context)}) unavailable: {err}"
    if isinstance(value, list | tuple):
        lines = [f"  {shown(v, 500)}" for v in value[-30:]]
        cut = f" (last 30 of {len(value)})" if len(value) > 30 else ""
        return f"{describe(context)}{cut}:\n" + "\n".join(lines)
    return f"{describe(context)}:\n{value}"


def wait_or_kill(process: subprocess.Popen[t.Any], grace: float = 5.0) -> int | None:
    """Wait up to *grace* seconds for *process* to exit, else SIGKILL and reap it.

    Returns its exit status when it ended by itself, None when it had to be killed.
    """
    try:
        return process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        return None


@contextlib.contextmanager
def machine_lock(name: str, timeout: float) -> t.Iterator[None]:
    """Hold ``/run/gtd-sandbox/NAME.lock``: one run on this machine at a time, for *name*.

    For what every clone's run shares, such as the system package the .deb tests
    install and purge: a second run waits here (up to *timeout*, saying who holds it)
    instead of finding the first one's package. The kernel drops the lock with its
    holder, so a killed run leaves none behind.
    """
    STATE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = STATE_DIR / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:

        def take() -> str | None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.pread(fd, 128, 0).decode(errors="replace").strip() or "unknown"
            return None

        # On timeout the message shows the last holder seen (its pid and clone).
        wait_for(take, lambda holder: holder is None, timeout=timeout, interval=0.5,
                 what=f"{path}, held by another run")  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {REPO}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def wait_for(
    observe: Callable[[], T],
    accept: Callable[[T], object] = bool,
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str | None = None,
    context: Callable[[], object] | None = None,
) -> T:
    """Poll ``observe()`` until ``accept(value)`` holds, for at most ``timeout`` seconds.

    This is the only waiting the tests do (libtmux ``test/retry.py``): a condition,
    polled, with a bound, never a fixed sleep. It is tried at least once, and once
    more at the deadline.

    Parameters
    ----------
    observe
        Reads what the test looks at (a pid, a status line, a list of files).
    accept
        Says whether that is what the test waits for; ``bool`` by default.
    what
        The condition in words, for the timeout message; by default the source of
        ``accept`` (or of ``observe`` when ``accept`` is ``bool``).
    context
        Called once on timeout; its value (a journal, a log) goes into the message.

    Returns
    -------
    T
        The first observed value that was accepted.

    Raises
    ------
    WaitTimeout
        Nothing accepted within ``timeout`` seconds; the message names ``what``, the
        last value seen and the context.
    """
    return _wait(
        observe, accept, timeout, interval, context,
        lambda: what or describe(observe if accept is bool else accept),
    )  # fmt: skip


def _wait(
    observe: Callable[[], T],
    accept: Callable[[T], object],
    timeout: float,
    interval: float,
    context: Callable[[], object] | None,
    what: Callable[[], str],
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        last_try = time.monotonic() >= deadline
        seen = observe()
        if accept(seen):
            return seen
        if last_try:
            raise WaitTimeout(what(), timeout, seen, _context(context))
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def wait_equal(
    expected: object,
    observe: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str | None = None,
    context: Callable[[], object] | None = None,
) -> T:
    """Poll ``observe()`` until it returns ``expected``; return it (see :func:`wait_for`).

    Raises
    ------
    WaitTimeout
        Not equal within ``timeout`` seconds; the message has both values.
    """
    return _wait(
        observe, lambda seen: seen == expected, timeout, interval, context,
        lambda: what or f"{describe(observe)} == {shown(expected)}",
    )  # fmt: skip


def retry_until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    raises: bool = True,
    what: str | None = None,
    context: Callable[[], object] | None = None,
) -> bool:
    """Poll ``predicate`` until it returns something true (see :func:`wait_for`).

    The timeout message shows the last value the predicate returned: a predicate
    that returns what it looked at (an empty list, ``None``) says more than one that
    returns ``False``, and :func:`wait_for` with an observation says most.

    Returns
    -------
    bool
        True as soon as the predicate holds; False on timeout when ``raises`` is false.

    Raises
    ------
    WaitTimeout
        On timeout when ``raises`` is true (the default).
    """
    try:
        wait_for(predicate, timeout=timeout, interval=interval, what=what, context=context)
    except WaitTimeout:
        if raises:
            raise
        return False
    return True


# --- the sandbox ------------------------------------------------------------------------


def missing_requirements() -> list[str]:
    """Say why a real user manager cannot be started here; empty when it can.

    Returns
    -------
    list[str]
        One human-readable reason per missing requirement (root, systemd, tools).
    """
    reasons = []
    if os.geteuid() != 0:
        reasons.append("needs root to start a systemd --user manager and journald")
    reasons.extend(f"{path} is missing" for path in (SYSTEMD, JOURNALD) if not path.exists())
    reasons.extend(f"{tool} is not on PATH" for tool in REQUIRED_TOOLS if not shutil.which(tool))
    if not any((h / "cgroup.procs").is_file() for h in CGROUP_HIERARCHIES):
        reasons.append("no cgroup hierarchy is mounted under /sys/fs/cgroup")
    return reasons


def pid_alive(pid: int) -> bool:
    """Return whether ``pid`` exists and is not a zombie."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may contain spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"


class UserManager:
    """A ``systemd --user`` manager plus journald for one sandbox user.

    ``start()`` takes the user's lock, creates the user when missing (``useradd -m``),
    starts journald and the manager and returns once the manager answers; ``stop()``
    tears everything down, kills every process left in the user's cgroups or owned by
    the user, and releases the lock. Commands run as the user through ``run()``, in
    the manager's mount namespace, with a clean environment, ``cwd`` the user's home.

    Parameters
    ----------
    user
        The sandbox user's name; created with a normal uid when missing. By default
        :func:`default_user` (``$GTD_SYSTEST_USER``, else one user per clone).
    ready_timeout
        How long ``start()`` waits for the manager to answer, in seconds.
    """

    def __init__(self, user: str | None = None, *, ready_timeout: float = 30.0) -> None:
        self.user = user or default_user()
        self.ready_timeout = ready_timeout
        #: Seconds from spawning the bootstrap to the manager answering (set by start()).
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None

    def __enter__(self) -> t.Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()

    # --- identity and paths ---------------------------------------------------------

    @property
    def _pw(self) -> pwd.struct_passwd:
        return pwd.getpwnam(self.user)

    @property
    def uid(self) -> int:
        """The sandbox user's uid (the user must exist)."""
        return self._pw.pw_uid

    @property
    def gid(self) -> int:
        """The sandbox user's primary gid (the user must exist)."""
        return self._pw.pw_gid

    @property
    def home(self) -> pathlib.Path:
        """The sandbox user's home directory."""
        return pathlib.Path(self._pw.pw_dir)

    @property
    def runtime_dir(self) -> pathlib.Path:
        """``/run/user/UID``, the manager's ``$XDG_RUNTIME_DIR``."""
        return pathlib.Path(f"/run/user/{self.uid}")

    @property
    def unit_dir(self) -> pathlib.Path:
        """``~/.config/systemd/user``, where ``install_unit()`` writes."""
        return self.home / ".config" / "systemd" / "user"

    @property
    def journal_dir(self) -> pathlib.Path:
        """The user's journal directory: ``/var/log/journal`` inside the namespace.

        Emptied by ``start()``, kept by ``stop()``: after a run, ``journalctl
        --directory=`` on its machine-id subdirectory reads what the run logged.
        """
        return JOURNAL_ROOT / self.user

    @property
    def cgroup(self) -> str:
        """The manager's cgroup path, relative to each hierarchy's root."""
        return f"user.slice/user-{self.uid}.slice/user@{self.uid}.service"

    @property
    def cgroup_dirs(self) -> list[pathlib.Path]:
        """The manager's cgroup directory in every mounted hierarchy."""
        return [h / self.cgroup for h in CGROUP_HIERARCHIES if (h / "cgroup.procs").is_file()]

    @property
    def _pidfile(self) -> pathlib.Path:
        return STATE_DIR / f"{self.user}.journald"

    @property
    def _lockfile(self) -> pathlib.Path:
        return STATE_DIR / f"{self.user}.lock"

    @property
    def journald_pid(self) -> int | None:
        """The private journald's pid as recorded at start, or None."""
        try:
            return int(self._pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def ns_pid(self) -> int | None:
        """A process in the manager's mount namespace (the bootstrap shell), or None.

        None before ``start()``, after ``stop()`` and once the bootstrap has exited.
        """
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return None

    # --- the lock: one run per user -------------------------------------------------

    def _try_lock(self) -> str | None:
        """Take the user's lock; return None, or who holds it when another process does.

        The lock is an ``flock`` on ``/run/gtd-sandbox/USER.lock``: the kernel drops it
        when its holder dies, so a killed run leaves no stale lock, only leftovers.
        """
        if self._lock is not None:
            return None
        STATE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self._lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {REPO}\n".encode(), 0)
        self._lock = fd
        return None

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # --- lifecycle ------------------------------------------------------------------

    def _ensure_user(self) -> None:
        def add() -> str:
            try:
                pwd.getpwnam(self.user)
            except KeyError:
                pass
            else:
                return "exists"
            # Another run's useradd may hold /etc/passwd's lock for a moment: try again.
            result = subprocess.run(
                ["useradd", "-m", "-s", "/bin/bash", self.user],
                check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            )  # fmt: skip
            return "exists" if result.returncode == 0 else result.stderr.strip()

        wait_for(add, lambda out: out == "exists", timeout=30, interval=0.2,
                 what=f"useradd {self.user} to succeed")  # fmt: skip

    def is_running(self) -> bool:
        """Whether the manager answers ``systemctl --user show -p Version``."""
        if not (self.runtime_dir / "systemd" / "private").is_socket():
            return False
        try:
            result = self.run(
                "systemctl", "--user", "show", "-p", "Version", check=False, timeout=5
            )
        except CommandFailed:
            return False
        return result.returncode == 0

    def start(self) -> None:
        """Start journald and the user manager, and wait until the manager answers.

        A manager left over from an earlier run of this user (one whose test runner
        was killed) is stopped first, so the tests always get a fresh one; the
        journal directory is emptied.

        Raises
        ------
        SandboxError
            If another live test run holds this user (nothing of it is touched), or
            the manager does not answer within ``ready_timeout`` seconds (whatever was
            started is stopped again first).
        """
        if missing := missing_requirements():
            raise SandboxError("; ".join(missing))
        if (holder := self._try_lock()) is not None:
            msg = (
                f"sandbox user {self.user} is in use by another test run ({holder}); "
                "give this run its own with GTD_SYSTEST_USER=<name>"
            )
            raise SandboxError(msg)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self._ensure_user()
        self._teardown()
        rt = self.runtime_dir
        rt.mkdir(parents=True, exist_ok=True)
        os.chown(rt, self.uid, self.gid)
        rt.chmod(0o700)
        shutil.rmtree(self.journal_dir, ignore_errors=True)
        self.journal_dir.mkdir(mode=0o755, parents=True)
        for d in self.cgroup_dirs:
            d.mkdir(parents=True, exist_ok=True)
            for sub, _dirs, files in os.walk(d):
                os.chown(sub, self.uid, self.gid)
                for name in files:
                    os.chown(os.path.join(sub, name), self.uid, self.gid)
        pathlib.Path("/run/systemd").mkdir(exist_ok=True)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "SB_USER": self.user,
            "SB_HOME": str(self.home),
            "SB_RT": str(rt),
            "SB_PATH": USER_PATH,
            "SB_PIDFILE": str(self._pidfile),
            "SB_JOURNAL": str(self.journal_dir),
            "SB_CGDIRS": " ".join(str(d) for d in self.cgroup_dirs),
        }
        started = time.monotonic()
        self._proc = subprocess.Popen(
            ["bash", "-c", _BOOTSTRAP],
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        proc = self._proc

        def manager() -> str:
            if proc.poll() is not None:
                msg = f"systemd --user for {self.user} exited with rc={proc.returncode}"
                raise SandboxError(msg)
            return "answers" if self.is_running() else "no answer"

        wait_equal(
            "answers", manager, timeout=self.ready_timeout, interval=0.1,
            what=f"systemd --user of {self.user} to answer `systemctl --user show -p Version` "
            f"on {rt}/systemd/private",
        )  # fmt: skip
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Stop the manager and journald, kill everything the user still runs, unlock.

        Steps: ``systemctl --user exit`` and wait until the manager stops answering;
        SIGTERM the recorded journald (so it closes its files cleanly); SIGKILL every
        process in the user's cgroups and every process the user owns (``pkill -KILL
        -u``, so no tmux server survives); remove the user's cgroup directories, the
        runtime directory and the pidfile. Each step is bounded in time.

        Idempotent, and never raises, so it is safe in a finalizer; a step that fails
        is skipped and the next one still runs. When another live test run holds the
        user's lock, nothing is done: that run's manager is not this one's to stop.
        """
        if self._lock is None and self._try_lock() is not None:
            return
        try:
            self._teardown()
        finally:
            self._unlock()

    def _teardown(self) -> None:
        try:
            pwd.getpwnam(self.user)
        except KeyError:
            return
        steps: list[Callable[[], object]] = [
            self._exit_manager,
            self._stop_journald,
            self._reap_bootstrap,
            self._kill_cgroups,
            self._kill_user_processes,
            self._remove_leftovers,
        ]
        for step in steps:
            with contextlib.suppress(Exception):
                step()

    def _exit_manager(self) -> None:
        if self.is_running():
            self.run("systemctl", "--user", "exit", check=False, timeout=10)
            retry_until(lambda: not self.is_running(), 10, raises=False)

    def _stop_journald(self) -> None:
        pid = self.journald_pid
        if pid is None or not pid_alive(pid):
            return
        # Never signal a recycled pid from a stale pidfile.
        if pathlib.Path(f"/proc/{pid}/comm").read_text().strip() != "systemd-journal":
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not retry_until(lambda: not pid_alive(pid), 5, raises=False):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def cgroup_pids(self) -> set[int]:
        """Pids of every live process in the manager's cgroups, in every hierarchy."""
        pids: set[int] = set()
        for d in self.cgroup_dirs:
            for sub, _dirs, _files in os.walk(d):
                with contextlib.suppress(OSError):
                    text = pathlib.Path(sub, "cgroup.procs").read_text()
                    pids.update(int(p) for p in text.split())
        return {p for p in pids if pid_alive(p)}

    def _kill_cgroups(self) -> None:
        def all_gone() -> bool:
            pids = self.cgroup_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return not pids

        retry_until(all_gone, 5, raises=False)

    def user_pids(self) -> set[int]:
        """Pids of every live process owned by the sandbox user."""
        result = subprocess.run(
            ["pgrep", "-u", self.user],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        return {p for p in (int(x) for x in result.stdout.split()) if pid_alive(p)}

    def _kill_user_processes(self) -> None:
        def all_gone() -> bool:
            if not self.user_pids():
                return True
            subprocess.run(
                ["pkill", "-KILL", "-u", self.user],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            return False

        retry_until(all_gone, 5, raises=False)

    def _reap_bootstrap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)

    def _remove_leftovers(self) -> None:
        self._reap_bootstrap()
        self._proc = None
        for d in self.cgroup_dirs:
            if d.is_dir():
                for sub, _dirs, _files in os.walk(d, topdown=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(sub)
            # user-UID.slice is this user's; user.slice is shared with other runs' users.
            with contextlib.suppress(OSError):
                d.parent.rmdir()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self._pidfile.unlink(missing_ok=True)

    # --- commands as the user -------------------------------------------------------

    def run(
        self,
        *argv: str | os.PathLike[str],
        check: bool = True,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as the sandbox user and capture its text output.

        The command runs in the manager's mount namespace while the manager runs (so
        it sees the same ``/var/log/journal`` and mounts as the user's services), with
        a clean environment: ``HOME``, ``USER``, ``LOGNAME``, ``PATH``, ``LANG``,
        ``XDG_RUNTIME_DIR``, an empty ``DBUS_SESSION_BUS_ADDRESS``, plus ``env``. Its
        working directory is the user's home and stdin is ``/dev/null``.

        Raises
        ------
        CommandFailed
            If it runs longer than ``timeout`` seconds (its whole process group is
            killed), or exits non-zero while ``check`` is true.
        """
        args = [os.fspath(a) for a in argv]
        if not args or "=" in args[0]:
            msg = f"run() needs a command, not {args!r}"
            raise ValueError(msg)
        user_env = {
            "HOME": str(self.home),
            "USER": self.user,
            "LOGNAME": self.user,
            "PATH": USER_PATH,
            "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "DBUS_SESSION_BUS_ADDRESS": "",
            **(env or {}),
        }
        ns = self.ns_pid
        # Entering a mount namespace moves to its root: --wd keeps the home as cwd.
        enter = [] if ns is None else ["nsenter", f"--target={ns}", "--mount", f"--wd={self.home}"]
        full = [
            *enter,
            "runuser",
            "-u",
            self.user,
            "--",
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in user_env.items()),
            *args,
        ]
        try:
            # gtd's own bounded runner: kills the process group on timeout and does
            # not wait for pipes that a tmux server started inside may hold forever.
            res = gtd_proc.run(full, timeout=timeout, cwd=self.home)
        except CommandTimeout:
            raise CommandFailed(args, None, "", "", timeout=timeout) from None
        if check and res.returncode != 0:
            raise CommandFailed(args, res.returncode, res.stdout, res.stderr)
        return subprocess.CompletedProcess(args, res.returncode, res.stdout, res.stderr)

    def systemctl(
        self, *args: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``systemctl --user ARGS`` as the sandbox user (see ``run()``)."""
        return self.run("systemctl", "--user", *args, check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """Return ``systemctl --user show`` properties of ``unit`` (all when none named).

        Raises
        ------
        CommandFailed
            If systemctl fails.
        """
        args = ["show", unit]
        if props:
            args += ["-p", ",".join(props)]
        out = self.systemctl(*args).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, *, after_cursor: str | None = None) -> list[JournalEntry]:
        """Return ``unit``'s entries in the user's journal, oldest first.

        ``after_cursor`` (from ``journal_cursor()``) limits the result to what was
        logged afterwards, so a test sees only what its own actions logged. Entries
        are ``journalctl -o json`` objects (``MESSAGE``, ``_SYSTEMD_USER_UNIT``, ...).

        Raises
        ------
        CommandFailed
            If journalctl fails.
        """
        args = ["journalctl", "--user", "-u", unit, "-o", "json", "--no-pager"]
        if after_cursor is not None:
            args.append(f"--after-cursor={after_cursor}")
        out = self.run(*args).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def journal_cursor(self) -> str | None:
        """Return the cursor of the newest entry in the user's journal, or None if empty."""
        out = self.run("journalctl", "--user", "-o", "json", "-n", "1", "--no-pager").stdout
        for line in out.splitlines():
            if line.startswith("{"):
                cursor: str = json.loads(line)["__CURSOR"]
                return cursor
        return None

    def wait_journal(
        self,
        unit: str,
        predicate: Callable[[JournalEntry], bool],
        *,
        after_cursor: str | None = None,
        timeout: float = 10.0,
    ) -> JournalEntry:
        """Wait until one of ``unit``'s journal entries satisfies ``predicate``.

        journald may write an entry a moment after the unit printed it, so this polls.

        Returns
        -------
        JournalEntry
            The first matching entry.

        Raises
        ------
        WaitTimeout
            If no entry matched within ``timeout`` seconds; the message shows the
            entries seen last.
        """
        entries = _wait(
            lambda: Entries(self.journal(unit, after_cursor=after_cursor)),
            lambda seen: any(predicate(e) for e in seen), timeout, 0.1, None,
            lambda: f"a journal entry of {unit} where {describe(predicate)}",
        )  # fmt: skip
        return next(e for e in entries if predicate(e))

    # --- the user's files -----------------------------------------------------------

    def write_file(
        self, path: str | os.PathLike[str], text: str, mode: int = 0o644
    ) -> pathlib.Path:
        """Write ``text`` to ``path`` (relative to the user's home) owned by the user.

        Missing parent directories are created and owned by the user too.
        """
        target = self.home / path
        missing = [p for p in reversed(target.parents) if not p.exists()]
        for directory in missing:
            directory.mkdir()
            os.chown(directory, self.uid, self.gid)
        target.write_text(text)
        os.chown(target, self.uid, self.gid)
        target.chmod(mode)
        return target

    def install_unit(self, name: str, text: str) -> pathlib.Path:
        """Write unit ``name`` to ``~/.config/systemd/user/`` and ``daemon-reload``.

        Raises
        ------
        CommandFailed
            If the reload fails.
        """
        path = self.write_file(self.unit_dir / name, text)
        self.systemctl("daemon-reload")
        return path

    def ensure_user_can_run(self, venv: pathlib.Path) -> pathlib.Path:
        """Return a venv whose ``bin/python`` imports gtd and ``bin/gtd`` runs, as the user.

        ``venv`` is returned when the user can use it. Otherwise (the repo lives
        somewhere the user cannot read, such as ``/root``) a world-readable venv is
        made at ``/var/tmp/gtd-systest-venv`` with ``/usr/bin/python3``, the repo is
        ``pip install``-ed into it (not editable; reinstalled on every call, so it
        holds the current code) and that venv is returned. This needs pip to reach
        its index or cache for the build backend and dependencies.

        Raises
        ------
        SandboxError
            If the user cannot use the fallback venv either.
        """
        if self._can_use_venv(venv):
            return venv
        fallback = FALLBACK_VENV
        env = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        if not (fallback / "bin" / "python").exists():
            subprocess.run(
                [str(SYSTEM_PYTHON), "-m", "venv", str(fallback)],
                check=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
        pip = [str(fallback / "bin" / "python"), "-m", "pip", "install", "-q"]
        result = subprocess.run(
            [*pip, str(REPO)],
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            msg = f"pip install {REPO} into {fallback} failed:\n{result.stderr}"
            raise SandboxError(msg)
        for sub, dirs, files in os.walk(fallback):
            for name in [*dirs, *files]:
                p = pathlib.Path(sub, name)
                if not p.is_symlink():
                    p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))
        if not self._can_use_venv(fallback):
            msg = f"{self.user} cannot import gtd from {fallback} either"
            raise SandboxError(msg)
        return fallback

    def _can_use_venv(self, venv: pathlib.Path) -> bool:
        check = "import gtd, os, sys; sys.exit(0 if os.access(sys.argv[1], os.X_OK) else 1)"
        python = venv / "bin" / "python"
        result = self.run(python, "-c", check, venv / "bin" / "gtd", check=False)
        return result.returncode == 0
