"""A real ``systemd --user`` manager and journald for system tests.

This harness lets the system tests run where PID 1 is not systemd (containers, CI
VMs). It starts the manager in a private mount namespace whose ``/run/systemd`` is a
fresh tmpfs holding ``/run/systemd/system``, so systemd believes it was booted. A
private ``systemd-journald`` in that namespace writes persistent journals to
``/var/log/journal``. The manager lives in cgroup
``user.slice/user-UID.slice/user@UID.service`` in every cgroup hierarchy, so unit
cgroups, ``_SYSTEMD_USER_UNIT``, ``Type=notify``, ``WatchdogSec=``, ``systemctl --user
kill`` and ``Restart=`` all behave as they do under a real login session. ``systemctl``
and ``journalctl`` work from outside the namespace because they only need
``$XDG_RUNTIME_DIR/systemd`` and ``/var/log/journal``.

Everything here needs root. Every process the harness starts has stdin, stdout and
stderr on ``/dev/null`` and runs in its own session, so none of them holds the test
runner's output open.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import time
import typing as t

from gtd import proc as gtd_proc

if t.TYPE_CHECKING:
    import types
    from collections.abc import Callable, Mapping

JournalEntry: t.TypeAlias = dict[str, t.Any]

SYSTEMD = pathlib.Path("/lib/systemd/systemd")
JOURNALD = pathlib.Path("/lib/systemd/systemd-journald")
SYSTEM_PYTHON = pathlib.Path("/usr/bin/python3")
FALLBACK_VENV = pathlib.Path("/var/tmp/gtd-systest-venv")
REPO = pathlib.Path(__file__).resolve().parents[1]
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Hierarchies the manager is placed in, when they exist (hybrid v1 + v2, or pure v2).
CGROUP_HIERARCHIES = (
    pathlib.Path("/sys/fs/cgroup/systemd"),
    pathlib.Path("/sys/fs/cgroup/unified"),
    pathlib.Path("/sys/fs/cgroup"),
)
REQUIRED_TOOLS = ("unshare", "setpriv", "runuser", "useradd", "pkill", "pgrep", "mount")

# Root, new session: join the user's cgroups, enter a private mount namespace, start journald
# and the manager. bash stays their parent and reaps them: PID 1 here may never reap orphans.
_BOOTSTRAP = r"""
for d in $SB_CGDIRS; do echo $$ > "$d/cgroup.procs" || true; done
exec unshare --mount --propagation private bash -c '
  mount -t tmpfs tmpfs /run/systemd
  mkdir -p /run/systemd/system /run/systemd/journal /var/log/journal
  touch /run/systemd/journal/flushed   # journald writes /var/log/journal at once
  /lib/systemd/systemd-journald & journald=$!; echo $journald > "$SB_PIDFILE"
  for i in $(seq 100); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.05; done
  setpriv --reuid="$SB_USER" --regid="$SB_USER" --init-groups env -i \
    HOME="$SB_HOME" USER="$SB_USER" LOGNAME="$SB_USER" PATH="$SB_PATH" \
    XDG_RUNTIME_DIR="$SB_RT" SYSTEMD_LOG_TARGET=journal /lib/systemd/systemd --user &
  wait $!
  kill -TERM $journald; wait $journald'
"""


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


class WaitTimeout(SandboxError):
    """A condition did not hold before its deadline."""


def retry_until(
    predicate: Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    raises: bool = True,
) -> bool:
    """Poll ``predicate`` until it returns true, for at most ``timeout`` seconds.

    This is the only waiting the system tests do (libtmux ``test/retry.py``): a
    condition, polled, with a bound, never a fixed sleep.

    Returns
    -------
    bool
        True as soon as the predicate holds (it is always tried at least once);
        False on timeout when ``raises`` is false.

    Raises
    ------
    WaitTimeout
        On timeout when ``raises`` is true (the default).
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            if raises:
                name = getattr(predicate, "__name__", repr(predicate))
                msg = f"{name} did not hold within {timeout}s"
                raise WaitTimeout(msg)
            return False
        time.sleep(interval)


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

    ``start()`` creates the user when missing (``useradd -m``), starts journald and the
    manager and returns once the manager answers; ``stop()`` tears everything down and
    kills every process left in the user's cgroups or owned by the user. Commands run
    as the user through ``run()`` with a clean environment, ``cwd`` the user's home.

    Parameters
    ----------
    user
        The sandbox user's name; created with a normal uid when missing.
    ready_timeout
        How long ``start()`` waits for the manager to answer, in seconds.
    """

    def __init__(self, user: str = "gtdtest", *, ready_timeout: float = 10.0) -> None:
        self.user = user
        self.ready_timeout = ready_timeout
        #: Seconds from spawning the bootstrap to the manager answering (set by start()).
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

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
    def cgroup(self) -> str:
        """The manager's cgroup path, relative to each hierarchy's root."""
        return f"user.slice/user-{self.uid}.slice/user@{self.uid}.service"

    @property
    def cgroup_dirs(self) -> list[pathlib.Path]:
        """The manager's cgroup directory in every mounted hierarchy."""
        return [h / self.cgroup for h in CGROUP_HIERARCHIES if (h / "cgroup.procs").is_file()]

    @property
    def _pidfile(self) -> pathlib.Path:
        return pathlib.Path(f"/run/gtd-sandbox.{self.uid}.journald")

    @property
    def journald_pid(self) -> int | None:
        """The private journald's pid as recorded at start, or None."""
        try:
            return int(self._pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    # --- lifecycle ------------------------------------------------------------------

    def _ensure_user(self) -> None:
        try:
            pwd.getpwnam(self.user)
        except KeyError:
            subprocess.run(
                ["useradd", "-m", "-s", "/bin/bash", self.user],
                check=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )

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

        A manager left over from an earlier run (for instance one whose test runner
        was killed) is stopped first, so the tests always get a fresh one.

        Raises
        ------
        SandboxError
            If the manager does not answer within ``ready_timeout`` seconds; whatever
            was started is stopped again first.
        """
        if missing := missing_requirements():
            raise SandboxError("; ".join(missing))
        self._ensure_user()
        if self.is_running() or self.journald_pid is not None:
            self.stop()
        rt = self.runtime_dir
        rt.mkdir(parents=True, exist_ok=True)
        os.chown(rt, self.uid, self.gid)
        rt.chmod(0o700)
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

        def manager_answers() -> bool:
            if proc.poll() is not None:
                msg = f"systemd --user for {self.user} exited with rc={proc.returncode}"
                raise SandboxError(msg)
            return self.is_running()

        try:
            ok = retry_until(manager_answers, self.ready_timeout, raises=False)
        except SandboxError:
            self.stop()
            raise
        if not ok:
            self.stop()
            msg = (
                f"systemd --user for {self.user} did not answer within {self.ready_timeout}s "
                f"(socket {rt}/systemd/private, `systemctl --user show -p Version`)"
            )
            raise SandboxError(msg)
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Stop the manager and journald and kill everything the user still runs.

        Steps: ``systemctl --user exit`` and wait until the manager stops answering;
        SIGTERM the recorded journald (so it closes its files cleanly); SIGKILL every
        process in the user's cgroups and every process the user owns (``pkill -KILL
        -u``, so no tmux server survives); remove the cgroup directories, the runtime
        directory and the pidfile. Each step is bounded in time.

        Idempotent, and never raises, so it is safe in a finalizer; a step that fails
        is skipped and the next one still runs.
        """
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
            for parent in (d.parent, d.parent.parent):
                with contextlib.suppress(OSError):
                    parent.rmdir()
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

        The command gets a clean environment: ``HOME``, ``USER``, ``LOGNAME``, ``PATH``,
        ``LANG``, ``XDG_RUNTIME_DIR``, an empty ``DBUS_SESSION_BUS_ADDRESS``, plus
        ``env``. Its working directory is the user's home and stdin is ``/dev/null``.

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
        full = [
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
        except gtd_proc.Timeout:
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
            If no entry matched within ``timeout`` seconds; the message lists the
            ``MESSAGE`` of every entry that was seen.
        """
        seen: list[JournalEntry] = []
        found: list[JournalEntry] = []

        def matched() -> bool:
            seen[:] = self.journal(unit, after_cursor=after_cursor)
            found[:] = [e for e in seen if predicate(e)][:1]
            return bool(found)

        if retry_until(matched, timeout, interval=0.1, raises=False):
            return found[0]
        messages = "\n".join(f"  {e.get('MESSAGE')!r}" for e in seen)
        msg = f"no journal entry of {unit} matched within {timeout}s; saw:\n{messages}"
        raise WaitTimeout(msg)

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
