"""The daemon's loop: one thread that blocks on signals, timers and the deacon's pidfd.

Every iteration does its work, then pings the watchdog, then sleeps in
``select()`` until the next deadline (heartbeat, watchdog ping, backoff retry)
or an event (a signal through ``signal.set_wakeup_fd``, the deacon's process
exiting through a pidfd). Nothing polls; nothing pings from a side thread, so a
hung loop stops the pings and systemd's watchdog kills it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import logging
import os
import pathlib
import selectors
import signal
import time
import typing as t

from gtd import agents, store
from gtd import state as sv
from gtd.agents import Stopping
from gtd.config import Config, read_config
from gtd.exc import ConfigError, GtdError, NoServer, TmuxError
from gtd.identities import DEACON
from gtd.notify import Notifier
from gtd.systemd import start_tmux_server
from gtd.tmux import DEFAULT_TIMEOUT, PaneInfo, Tmux

logger = logging.getLogger(__name__)

TMUX_RETRY_MIN, TMUX_RETRY_MAX = 2.0, 60.0
"""While tmux does not answer, the listing is retried this often (doubling), not per heartbeat."""

HANG_SWITCH = "GTD_TEST_HANG_FILE"
"""Test-only fault switch: while the file it names exists, the loop hangs."""


class Lifecycle(t.Protocol):
    """Where lifecycle requests are carried out (the spool and ``gt mail``)."""

    def process(self, config: Config, tmux: Tmux, tick: t.Callable[[], None]) -> None:
        """Carry out every pending request; *tick* between requests keeps the watchdog fed."""


@dataclasses.dataclass(slots=True)
class Wake:
    """Why the loop woke up."""

    signals: set[int] = dataclasses.field(default_factory=set)
    deacon_exited: bool = False


class Daemon:
    """The Gas Town daemon.

    Parameters
    ----------
    config
        The configuration it starts with; SIGHUP re-reads *config_path*.
    config_path, explicit
        Where the config came from, for reload.
    notifier
        The line to systemd.
    lifecycle
        Lifecycle processing, or None while not wired.
    start_tmux
        Brings the tmux server up through systemd when it is not running.
    clock
        Monotonic clock (injected for tests).
    """

    def __init__(
        self,
        config: Config,
        *,
        config_path: pathlib.Path | None = None,
        explicit: bool = False,
        notifier: Notifier | None = None,
        lifecycle: Lifecycle | None = None,
        start_tmux: t.Callable[[], None] | None = None,
        policy: sv.Policy | None = None,
        clock: t.Callable[[], float] = time.monotonic,
        env: t.Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.explicit = explicit
        self.notifier = notifier or Notifier()
        self.lifecycle = lifecycle
        self.start_tmux = start_tmux or (
            lambda: start_tmux_server(self.config.tmux.socket, self.config_path)
        )
        self.policy = policy or sv.Policy()
        self.clock = clock
        self.env = dict(os.environ if env is None else env)
        self.tmux = self._make_tmux(config.tmux.socket)
        self.tmux_retry_at: float | None = None
        self._tmux_backoff = TMUX_RETRY_MIN
        self.guard = sv.Guard()
        self.state = store.DaemonState()
        self.stopping = False
        self.next_heartbeat = 0.0
        self.next_ping = 0.0
        self.deacon_pid: int | None = None
        self._pidfd: int | None = None
        self._deacon_gone = False
        self._disk = ""
        self._selector = selectors.DefaultSelector()
        self._wakeup_r = -1
        self._note = ""
        self._problem = ""

    # -- start and stop ------------------------------------------------------

    def prepare(self) -> None:
        """Check that the daemon can work: state dir writable, tmux reachable.

        Raises
        ------
        GtdError
            Something it cannot work without; the message says what.
        """
        town = self.config.town_root
        try:
            (town / "daemon").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            if err.errno == errno.EROFS:
                # The unit lets the service write only where `gtd units install` saw the
                # town; exit 78 so systemd does not restart-loop on it.
                problem = (
                    f"{town} is read-only for the service; run 'gtd units install' "
                    "after changing town_root"
                )
                raise ConfigError(self.config.source, "town_root", problem) from None
            msg = f"cannot create {town / 'daemon'}: {err.strerror}"
            raise GtdError(msg) from None
        previous = store.load_daemon_state(town)
        self.state = store.DaemonState(
            running=True,
            pid=os.getpid(),
            started_at=store.now_iso(),
            heartbeat_count=previous.heartbeat_count,
            motd_index=previous.motd_index,
        )
        self._save_state()
        self.ensure_tmux()

    def ensure_tmux(self) -> None:
        """Make sure the tmux server runs, starting it through systemd if not."""
        agents.ensure_server(
            self.tmux, self.start_tmux, stop_requested=lambda: _stop_requested, clock=self.clock
        )

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit status."""
        self._install_signals()
        try:
            self.prepare()
            self.heartbeat(ready=True)
            while not self.stopping:
                self.tick()
                wake = self._wait(self._timeout())
                self.handle(wake)
        except Stopping as err:
            logger.info("%s", err)
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        """Say STOPPING, record ``running: false``; agents are left alone."""
        with contextlib.suppress(OSError):
            self.notifier.stopping("stopping; agents keep running")
        self.state.running = False
        with contextlib.suppress(OSError):
            self._save_state()
        logger.info("gtd stopped; agents left running")

    # -- the loop ------------------------------------------------------------

    def handle(self, wake: Wake) -> None:
        """Act on one wake-up: signals first, then the deacon, then due timers."""
        if signal.SIGTERM in wake.signals or signal.SIGINT in wake.signals:
            self.stopping = True
            return
        if signal.SIGHUP in wake.signals:
            self.reload()
        if signal.SIGUSR1 in wake.signals:
            logger.info("SIGUSR1: processing lifecycle requests now")
            if self.tmux_retry_at is None or self._list_panes() is not None:
                self.process_lifecycle()
        now = self.clock()
        guard_deadline = sv.next_deadline(self.guard, self.policy)
        gone, self._deacon_gone = self._deacon_gone, False
        if (
            gone
            or wake.deacon_exited
            or (guard_deadline is not None and now >= guard_deadline)
            or (self.tmux_retry_at is not None and now >= self.tmux_retry_at)
        ):
            self.ensure_deacon()
        if self.clock() >= self.next_heartbeat:
            self.heartbeat()
        self.notifier.status(self.status_text())

    def tick(self) -> None:
        """Ping the watchdog if due. Called only from the loop's own thread, between steps."""
        self._maybe_hang()
        interval = self.notifier.watchdog_interval
        now = self.clock()
        if interval is not None and now >= self.next_ping:
            self.notifier.watchdog()
            self.next_ping = now + interval

    def _timeout(self) -> float:
        """Seconds until the next thing the loop must do by itself."""
        if self._deacon_gone:
            return 0.0
        deadlines = [self.next_heartbeat]
        if self.notifier.watchdog_interval is not None:
            deadlines.append(self.next_ping)
        guard_deadline = sv.next_deadline(self.guard, self.policy)
        if guard_deadline is not None:
            deadlines.append(guard_deadline)
        if self.tmux_retry_at is not None:
            deadlines.append(self.tmux_retry_at)
        return max(0.0, min(deadlines) - self.clock())

    def _wait(self, timeout: float) -> Wake:
        """Block until an event or *timeout*; report what happened."""
        wake = Wake()
        for key, _ in self._selector.select(timeout):
            if key.fd == self._wakeup_r:
                with contextlib.suppress(BlockingIOError):
                    while data := os.read(self._wakeup_r, 512):
                        wake.signals.update(data)
            elif key.fd == self._pidfd:
                wake.deacon_exited = True
                self._unwatch_deacon()
        return wake

    def _install_signals(self) -> None:
        """Route TERM, INT, HUP, USR1 into the selector through a wakeup pipe."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup_r = r
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, _note_signal)
        self._selector.register(r, selectors.EVENT_READ)

    def _maybe_hang(self) -> None:
        """The test-only hang: blocks this thread while the switch file exists."""
        path = self.env.get(HANG_SWITCH)
        if path and os.path.exists(path):
            logger.warning("fault switch %s: loop hangs now", HANG_SWITCH)
            while os.path.exists(path):
                time.sleep(0.5)

    # -- work ----------------------------------------------------------------

    def heartbeat(self, *, ready: bool = False) -> None:
        """Ensure the deacon, poke it, process lifecycle requests, save state.json.

        With *ready*, READY=1 goes out as soon as the deacon is ensured (the daemon
        can work), before the slower poke.
        """
        begun = self.clock()
        self.next_heartbeat = begun + self.config.heartbeat_interval
        panes = self.ensure_deacon()
        if ready:
            self.notifier.ready(self.status_text())
            logger.info(
                "gtd ready: town %s, heartbeat every %gs, tmux %s",
                self.config.town_root,
                self.config.heartbeat_interval,
                self.tmux.socket or "(default server)",
            )
        self.tick()
        started = self.guard.started_at
        if panes is None:
            logger.warning("tmux unavailable: no poke, lifecycle requests wait (none lost)")
        elif started is not None and started >= begun:
            logger.info("deacon started this heartbeat; first poke next heartbeat")
        else:
            self.poke_deacon(panes)
        self.tick()
        if panes is not None:
            self.process_lifecycle()
        self.state.heartbeat_count += 1
        self.state.last_heartbeat = store.now_iso()
        self._save_state()
        logger.info(
            "heartbeat #%d done",
            self.state.heartbeat_count,
            extra={"GTD_HEARTBEAT": self.state.heartbeat_count},
        )

    def _list_panes(self) -> list[PaneInfo] | None:
        """One listing of every pane, or None when tmux is unavailable (logged, in STATUS).

        A server that is gone is started again through systemd.
        """
        try:
            try:
                panes = self.tmux.list_panes(missing_ok=False)
            except NoServer:
                self.ensure_tmux()
                panes = self.tmux.list_panes()
        except Stopping:
            raise
        except GtdError as err:
            self.tmux_retry_at = self.clock() + self._tmux_backoff
            logger.error(  # noqa: TRY400 - no traceback for an outage
                "tmux unavailable: %s; retrying in %gs", err, self._tmux_backoff
            )
            self._tmux_backoff = min(self._tmux_backoff * 2, TMUX_RETRY_MAX)
            self._problem = f"tmux unavailable: {err}"
            return None
        if self.tmux_retry_at is not None:
            logger.info("tmux answers again")
        self.tmux_retry_at = None
        self._tmux_backoff = TMUX_RETRY_MIN
        self._problem = ""
        return panes

    def ensure_deacon(self) -> list[PaneInfo] | None:
        """Start the deacon if not alive and the crash-loop guard allows; return the panes.

        None means tmux did not answer (logged; retried soon, see ``tmux_retry_at``).
        """
        panes = self._list_panes()
        if panes is None:
            return None
        view = agents.view(panes, DEACON, self.config)
        self.guard, action = sv.step(self.guard, view.alive, self.clock(), self.policy)
        if action is sv.Action.START:
            if view.pane is not None:
                logger.warning(
                    "deacon not alive (pane %s: %s); restarting",
                    view.pane.pane_id,
                    "dead" if view.pane.dead else view.pane.current_command,
                    extra={"GTD_IDENTITY": DEACON.dash},
                )
            try:
                pane = agents.start_agent(
                    self.tmux, DEACON, self.config, panes=panes, create_workdir=True
                )
            except (GtdError, OSError) as err:
                logger.error(  # noqa: TRY400 - the message is the whole story
                    "could not start the deacon: %s", err, extra={"GTD_IDENTITY": DEACON.dash}
                )
                self._unwatch_deacon()
                return panes
            self._watch_deacon(pane.pane_pid)
            panes = [p for p in panes if p.pane_id != pane.pane_id] + [pane]
        elif view.alive and view.pane is not None:
            self._watch_deacon(view.pane.pane_pid)
        elif self.guard.phase is sv.Phase.BACKOFF:
            logger.warning(
                "deacon %s",
                sv.describe(self.guard, self.clock()),
                extra={"GTD_IDENTITY": DEACON.dash, "GTD_STATE": "backoff"},
            )
        self.state.deacon = {
            "phase": self.guard.phase.value,
            "starts": self.guard.starts,
            "quick_exits": len(self.guard.failures),
            "pid": self.deacon_pid,
        }
        return panes

    def poke_deacon(self, panes: t.Sequence[PaneInfo]) -> None:
        """Type ``HEARTBEAT: <motd>`` into a deacon that has been up for a while."""
        view = agents.view(panes, DEACON, self.config)
        if not view.alive or view.pane is None:
            logger.info("deacon not alive; no poke this heartbeat")
            return
        messages = self.config.motd.effective
        index = sv.next_motd(len(messages), self.state.motd_index)
        text = f"HEARTBEAT: {messages[index]}"
        try:
            result = agents.poke(self.tmux, view.pane.pane_id, text)
        except TmuxError as err:
            logger.error("poke failed: %s", err, extra={"GTD_IDENTITY": DEACON.dash})  # noqa: TRY400
            return
        self.state.motd_index = index
        fields = {"GTD_IDENTITY": DEACON.dash, "GTD_ENTERS": result.enters}
        if not result.submitted:
            logger.warning("poke to deacon not confirmed: %s", text, extra=fields)
        elif result.enters > 1:
            logger.warning(
                "poked deacon: %s (agent swallowed %d Enter)", text, result.enters - 1, extra=fields
            )
        else:
            logger.info("poked deacon: %s", text, extra=fields)
        if result.restored:
            logger.info(
                "put back %d characters a person had typed in the deacon's input line",
                len(result.restored),
                extra=fields,
            )

    def process_lifecycle(self) -> None:
        """Carry out pending lifecycle requests (a failure never stops the loop)."""
        if self.lifecycle is None:
            return
        try:
            self.lifecycle.process(self.config, self.tmux, self.tick)
        except (GtdError, OSError) as err:
            logger.error("lifecycle processing failed: %s", err)  # noqa: TRY400
        except Exception:
            # A bug in request handling must not take the deacon's supervisor down with it.
            logger.exception("lifecycle processing crashed; requests stay queued")

    def reload(self) -> None:
        """Re-read the config; a bad one keeps the old running and says why."""
        self.notifier.reloading()
        if self.config_path is None:
            self.notifier.ready(self.status_text())
            return
        try:
            new = read_config(
                self.config_path, explicit=self.explicit, env=self.env, home=_home(self.env)
            )
        except ConfigError as err:
            logger.error("reload refused, still running on the previous config: %s", err)  # noqa: TRY400
            self._note = f"reload failed ({err}); running on previous config"
            self.notifier.ready(self.status_text())
            return
        moved = new.tmux.socket != self.config.tmux.socket
        if moved:
            # Agents on the old server are left alone; the deacon is ensured on the new one.
            self.tmux = self._make_tmux(new.tmux.socket)
            self._unwatch_deacon()
            self.guard = sv.Guard()
        self.config = new
        self._note = ""
        logger.info("config reloaded from %s", self.config_path)
        if moved:
            self.ensure_deacon()
        self.next_heartbeat = min(
            self.next_heartbeat, self.clock() + self.config.heartbeat_interval
        )
        self.notifier.ready(self.status_text())

    def _make_tmux(self, socket: str) -> Tmux:
        """A tmux client whose timeout fits well inside the watchdog period."""
        interval = self.notifier.watchdog_interval
        timeout = DEFAULT_TIMEOUT if interval is None else min(DEFAULT_TIMEOUT, interval / 3)
        return Tmux(socket, timeout=max(timeout, 0.5))

    # -- deacon pidfd --------------------------------------------------------

    def _watch_deacon(self, pid: int) -> None:
        """Wake the loop the moment *pid* exits (pidfd: no polling, no child needed)."""
        if pid == self.deacon_pid and self._pidfd is not None:
            return
        self._unwatch_deacon()
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            # Gone before it could be watched (an agent that dies at once): that is
            # an exit too, handled on the next turn of the loop, not at startsecs.
            self.deacon_pid = None
            self._deacon_gone = True
            return
        self._pidfd = fd
        self.deacon_pid = pid
        self._selector.register(fd, selectors.EVENT_READ)

    def _unwatch_deacon(self) -> None:
        if self._pidfd is not None:
            self._selector.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self.deacon_pid = None

    # -- reporting -----------------------------------------------------------

    def status_text(self) -> str:
        """The STATUS= line: deacon, heartbeats, any problem."""
        deacon = sv.describe(self.guard, self.clock())
        if self.deacon_pid is not None and self.guard.phase in (
            sv.Phase.RUNNING,
            sv.Phase.STARTING,
        ):
            deacon = f"{deacon} (pid {self.deacon_pid})"
        last = self.state.last_heartbeat
        when = ""
        if last:
            with contextlib.suppress(ValueError):
                when = f" at {datetime.datetime.fromisoformat(last).strftime('%H:%M:%S')}"
        text = f"deacon {deacon}; heartbeat #{self.state.heartbeat_count}{when}"
        for note in (self._problem, self._disk, self._note):
            if note:
                text = f"{text}; {note}"
        return text

    def _save_state(self) -> None:
        """Write state.json; a failure (disk full) keeps the old file and shows in STATUS."""
        path = store.state_path(self.config.town_root)
        try:
            store.save_daemon_state(self.config.town_root, self.state)
        except OSError as err:
            logger.error("cannot write %s: %s", path, err.strerror or err)  # noqa: TRY400
            self._disk = f"cannot write state.json: {err.strerror or err}"
        else:
            self._disk = ""


_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_stop_requested = False


def _note_signal(signum: int, frame: object) -> None:
    """Record stop requests; the wakeup fd carries every signal to the loop."""
    global _stop_requested  # a signal handler has nowhere else to write
    if signum in _STOP_SIGNALS:
        _stop_requested = True


def _home(env: t.Mapping[str, str]) -> pathlib.Path:
    return pathlib.Path(env.get("HOME") or pathlib.Path.home())
