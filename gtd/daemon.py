"""The daemon: the wiring that holds the loop, the supervisors and request processing.

:meth:`Daemon.run` registers the signals with the :class:`~gtd.loop.Loop`, makes
sure it can work (:meth:`Daemon.prepare`), runs the first heartbeat (which sends
READY=1), then lets the loop dispatch: a heartbeat timer, each supervisor's
pidfd and guard deadline, SIGUSR1 (requests now), SIGHUP (reload), SIGTERM. A
heartbeat lists the panes once, lets every supervisor ensure its agent from that
listing, pokes the agents in ``[supervise] poke``, carries out lifecycle
requests and saves ``state.json``.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import pathlib
import signal
import time
import typing as t

from gtd import __version__, agents, environment, poke, store
from gtd import state as sv
from gtd.actions import AgentActor
from gtd.config import Config, read_config
from gtd.events import Event
from gtd.exc import CommandNotFound, ConfigError, GtdError, NoServer, Stopping, TmuxError
from gtd.identities import DEACON, SESSION_PREFIX, Identity
from gtd.lifecycle import Processor, SpoolSource
from gtd.loop import Loop, stop_requested
from gtd.mail import MailSource
from gtd.notify import Notifier
from gtd.screen import Condition, Reading, adapter
from gtd.spool import Spool
from gtd.supervisor import Supervisor
from gtd.systemd import start_tmux_server
from gtd.tmux import DEFAULT_TIMEOUT, PaneInfo, Tmux

logger = logging.getLogger(__name__)

PACKAGE_INIT = pathlib.Path(__file__).with_name("__init__.py")
"""The installed package's version file: it changes on disk when gtd is upgraded."""
TMUX_RETRY_MIN, TMUX_RETRY_MAX = 2.0, 60.0
"""While tmux does not answer, the listing is retried this often (doubling), not per heartbeat."""


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
    start_tmux
        Brings the tmux server up through systemd when it is not running.
    policy, clock
        The crash-loop guard's timings and the monotonic clock (injected for tests).
    env
        The process environment (PATH, HOME, test switches).
    """

    def __init__(
        self,
        config: Config,
        *,
        config_path: pathlib.Path | None = None,
        explicit: bool = False,
        notifier: Notifier | None = None,
        start_tmux: t.Callable[[], None] | None = None,
        policy: sv.Policy | None = None,
        clock: t.Callable[[], float] = time.monotonic,
        env: t.Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.explicit = explicit
        self.notifier = notifier or Notifier()
        self.start_tmux = start_tmux or (
            lambda: start_tmux_server(self.config.tmux.socket, self.config_path)
        )
        self.policy = policy or sv.Policy()
        self.clock = clock
        self.env = dict(os.environ if env is None else env)
        self.home = pathlib.Path(self.env.get("HOME") or pathlib.Path.home())
        self.loop = Loop(self.notifier, clock=clock, env=self.env)
        self.tmux = self._make_tmux(config.tmux.socket)
        self.state = store.DaemonState()
        self.supervisors: dict[Identity, Supervisor] = {}
        self.stopping = False
        self.problems: dict[str, str] = {}
        """What STATUS= reports besides the agents, by topic (tmux, disk, reload, command)."""
        self._due: set[Identity] = set()
        self._tmux_backoff = TMUX_RETRY_MIN
        self._tmux_down = False
        self._panes: list[PaneInfo] = []
        self._held_changed = False
        self.path = ""
        self.ui = adapter(config.agent.ui)
        self.processor = self._configure()

    # -- start and stop ------------------------------------------------------------

    def prepare(self) -> None:
        """Check that the daemon can work: state dir writable, tmux reachable.

        Raises
        ------
        ConfigError
            The town is read-only for the service (the unit was made for another town).
        GtdError
            Something else it cannot work without; the message says what.
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
            version=__version__,
        )
        self._supervise(previous.agents)
        self._save_state()
        self.ensure_tmux()

    def ensure_tmux(self) -> None:
        """Make sure the tmux server runs, starting it through systemd if not."""
        agents.ensure_server(
            self.tmux, self.start_tmux, stop_requested=stop_requested, clock=self.clock
        )

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit status."""
        self.loop.on_signals(
            {
                signal.SIGTERM: self.stop,
                signal.SIGINT: self.stop,
                signal.SIGHUP: self.reload,
                signal.SIGUSR1: self.usr1,
            }
        )
        try:
            self.prepare()
            self.heartbeat(ready=True)
            while not self.stopping:
                self.loop.run_once()
                if not self.stopping:
                    self.notifier.status(self.status_text())
        except Stopping as err:
            logger.info("%s", err)
        finally:
            self._shutdown()
        return 0

    def stop(self) -> None:
        """SIGTERM/SIGINT: leave the loop after this turn."""
        self.stopping = True

    def _shutdown(self) -> None:
        """Say STOPPING, record ``running: false``; agents are left alone."""
        with contextlib.suppress(OSError):
            self.notifier.stopping("stopping; agents keep running")
        for sup in self.supervisors.values():
            sup.unwatch()
        self.tmux.close()
        self.state.running = False
        with contextlib.suppress(OSError):
            self._save_state()
        logger.info("gtd stopped; agents left running")

    # -- configuration -------------------------------------------------------------

    def _configure(self) -> Processor:
        """Derive what depends on the config: the search PATH and request processing."""
        file_env = environment.read_env_file(environment.env_file(self.env, self.home))
        self.path = environment.search_path(self.env, self.home, file_env)
        helpers = environment.helper_env(self.env, self.path)
        town = self.config.town_root
        actor = AgentActor(self.config, self.tmux, helpers, held=self._hold, released=self._release)
        sources = (SpoolSource(), MailSource(self.config.lifecycle.argv, town, helpers))
        return Processor(Spool(town), sources, actor)

    def _supervise(self, previous: t.Mapping[str, t.Any]) -> None:
        """One supervisor per ``[supervise] agents`` entry; dropped ones stop watching."""
        wanted = self.config.supervise.agents
        for identity in list(self.supervisors):
            if identity not in wanted:
                self.supervisors.pop(identity).reset()
        for identity in wanted:
            if identity not in self.supervisors:
                record = previous.get(identity.dash)
                self.supervisors[identity] = Supervisor(
                    identity,
                    self.loop,
                    self._woken,
                    policy=self.policy,
                    clock=self.clock,
                    previous=record if isinstance(record, dict) else None,
                )

    def reload(self) -> None:
        """Re-read the config; a bad one keeps the old running and says why."""
        self.notifier.reloading()
        if self.config_path is None:
            self.notifier.ready(self.status_text())
            return
        try:
            new = read_config(
                self.config_path, explicit=self.explicit, env=self.env, home=self.home
            )
        except ConfigError as err:
            logger.error(  # noqa: TRY400 - the message is the whole story
                "reload refused, still running on the previous config: %s",
                err,
                extra={"MESSAGE_ID": Event.RELOAD_REFUSED.value},
            )
            self.problems["reload"] = f"reload failed ({err}); running on previous config"
            self.notifier.ready(self.status_text())
            return
        moved = new.tmux.socket != self.config.tmux.socket
        self.config = new
        self.problems.pop("reload", None)
        if moved:
            # Agents on the old server are left alone; they are ensured on the new one.
            self.tmux.close()
            self.tmux = self._make_tmux(new.tmux.socket)
            for sup in self.supervisors.values():
                sup.reset()
        self.ui = adapter(new.agent.ui)
        self.processor = self._configure()
        self._supervise({})
        logger.info("config reloaded from %s", self.config_path)
        self.ensure_agents()
        self._schedule_heartbeat(
            min(self._next_heartbeat(), self.clock() + self.config.heartbeat_interval)
        )
        self.notifier.ready(self.status_text())

    def _make_tmux(self, socket: str) -> Tmux:
        """A tmux control client whose timeout fits well inside the watchdog period."""
        interval = self.notifier.watchdog_interval
        timeout = DEFAULT_TIMEOUT if interval is None else min(DEFAULT_TIMEOUT, interval / 3)
        return Tmux(socket, timeout=max(timeout, 0.5), control=True)

    # -- the heartbeat -------------------------------------------------------------

    def heartbeat(self, *, ready: bool = False) -> None:
        """Ensure every supervised agent, poke, process lifecycle requests, save state.json.

        With *ready*, READY=1 goes out as soon as the agents are ensured (the daemon
        can work), before the slower pokes.
        """
        begun = self.clock()
        self._schedule_heartbeat(begun + self.config.heartbeat_interval)
        panes = self.ensure_agents()
        if ready:
            self.notifier.ready(self.status_text())
            logger.info(
                "gtd ready: town %s, heartbeat every %gs, tmux %s, supervising %s",
                self.config.town_root,
                self.config.heartbeat_interval,
                self.tmux.socket or "(default server)",
                ", ".join(i.dash for i in self.supervisors),
            )
        self.loop.tick()
        if panes is None:
            logger.warning("tmux unavailable: no poke, lifecycle requests wait (none lost)")
        else:
            for identity in self.supervisors:
                if identity in self.config.supervise.poke:
                    self.poke(identity, panes)
                else:
                    self.observe(identity, panes)
                self.loop.tick()
            self.process_lifecycle()
        self.check_upgrade()
        self.state.heartbeat_count += 1
        self.state.last_heartbeat = store.now_iso()
        self._save_state()
        logger.info(
            "heartbeat #%d done",
            self.state.heartbeat_count,
            extra={"GTD_HEARTBEAT": self.state.heartbeat_count},
        )

    def _schedule_heartbeat(self, when: float) -> None:
        self.loop.at("heartbeat", when, self.heartbeat)

    def _next_heartbeat(self) -> float:
        return self.loop.timers.get("heartbeat", (self.clock(),))[0]

    def list_panes(self) -> list[PaneInfo] | None:
        """One listing of every pane, or None when tmux is unavailable (logged, in STATUS).

        A server that is gone is started again through systemd.
        """
        try:
            try:
                panes = self.tmux.list_panes(missing_ok=False, prefix=SESSION_PREFIX)
            except NoServer:
                self.ensure_tmux()
                panes = self.tmux.list_panes(prefix=SESSION_PREFIX)
        except Stopping:
            raise
        except GtdError as err:
            self.loop.at("tmux", self.clock() + self._tmux_backoff, self._retry_tmux)
            logger.error(  # noqa: TRY400 - no traceback for an outage
                "tmux unavailable: %s; retrying in %gs", err, self._tmux_backoff
            )
            self._tmux_backoff = min(self._tmux_backoff * 2, TMUX_RETRY_MAX)
            self._tmux_down = True
            self.problems["tmux"] = f"tmux unavailable: {err}"
            return None
        if self._tmux_down:
            logger.info("tmux answers again")
        self.loop.at("tmux", None, self._retry_tmux)
        self._tmux_down = False
        self._tmux_backoff = TMUX_RETRY_MIN
        self.problems.pop("tmux", None)
        self._panes = panes
        return panes

    def ensure_agents(self, only: t.Collection[Identity] | None = None) -> list[PaneInfo] | None:
        """Let each supervisor (or those in *only*) ensure its agent from one listing.

        Returns the listing (with started panes), or None when tmux did not answer
        (logged; retried soon).
        """
        panes = self.list_panes()
        if panes is None:
            return None
        for identity, sup in self.supervisors.items():
            if only is not None and identity not in only:
                continue
            view = agents.view(panes, identity, self.config)
            try:
                pane = sup.ensure(view, self._start)
            except (GtdError, OSError) as err:
                extra = {"GTD_IDENTITY": identity.dash}
                if isinstance(err, CommandNotFound):
                    extra |= {"GTD_COMMAND": err.command, "GTD_PATH": err.path}
                    extra |= {"MESSAGE_ID": Event.COMMAND_NOT_FOUND.value}
                logger.error("could not start %s: %s", identity.dash, err, extra=extra)  # noqa: TRY400
                continue
            if pane is not None:
                panes = [p for p in panes if p.pane_id != pane.pane_id] + [pane]
        self._panes = panes
        return panes

    def _retry_tmux(self) -> None:
        self.ensure_agents()

    def _start(self, identity: Identity) -> PaneInfo:
        """How a supervisor starts its agent: the agent command must be on the PATH."""
        command = self.config.agent.argv[0]
        if environment.which(command, self.path) is None:
            self.problems["command"] = f"agent command {command!r} not found in PATH={self.path}"
            raise CommandNotFound(command, self.path)
        self.problems.pop("command", None)
        return agents.start_agent(
            self.tmux,
            identity,
            self.config,
            panes=self._panes,
            create_workdir=identity == DEACON,
            path=self.path,
        )

    def _woken(self, sup: Supervisor) -> None:
        """A supervisor's agent exited or its guard is due: look at it once this turn ends."""
        self._due.add(sup.identity)
        self.loop.at("due", self.clock(), self._ensure_due)

    def _ensure_due(self) -> None:
        """Between heartbeats: look at the woken agents, and record what changed."""
        due, self._due = self._due, set()
        self.ensure_agents(only=due)
        self._save_state()

    def _hold(self, identity: Identity) -> None:
        if (sup := self.supervisors.get(identity)) is not None and not sup.state.held:
            sup.hold()
            self._held_changed = True

    def _release(self, identity: Identity) -> None:
        # Only a change is saved: a cycle of an agent that was not held writes nothing.
        if (sup := self.supervisors.get(identity)) is not None and sup.state.held:
            sup.release()
            self._held_changed = True

    # -- pokes and requests ---------------------------------------------------------

    def poke(self, identity: Identity, panes: t.Sequence[PaneInfo]) -> None:
        """Submit ``HEARTBEAT: <motd>`` to a poked agent as its own turn, or leave it alone.

        The poke itself decides from the agent's screen (:mod:`gtd.poke`): a busy agent,
        a dialog, a limit, a start not finished or a person's text get no keystroke.
        The message rotates only once one was delivered.
        """
        sup = self.supervisors[identity]
        fields: dict[str, object] = {"GTD_IDENTITY": identity.dash}
        view = agents.view(panes, identity, self.config)
        if not view.alive or view.pane is None:
            logger.info("%s not alive; no poke this heartbeat", identity.dash, extra=fields)
            return
        messages = self.config.motd.effective
        index = sv.next_motd(len(messages), self.state.motd_index)
        text = f"HEARTBEAT: {messages[index]}"
        try:
            outcome = poke.poke(
                self.tmux, view.pane.pane_id, text, self.ui, allow_limited=sup.limit_passed()
            )
        except TmuxError as err:
            logger.error("poke of %s failed: %s", identity.dash, err, extra=fields)  # noqa: TRY400
            return
        self._note(sup, outcome.reading)
        fields |= {"GTD_ENTERS": outcome.enters, "GTD_POKE": outcome.reason or "delivered"}
        if outcome.delivered:
            self.state.motd_index = index
            logger.info("poked %s: %s (%s)", identity.dash, text, outcome.describe(), extra=fields)
        elif outcome.reason in poke.WAITING:
            # A dialog or limit the poke merely found was said once, when it began
            # (Supervisor.noted); each heartbeat that finds it still there is no news.
            said = outcome.reason in (poke.DIALOG, poke.LIMITED)
            level = (
                logging.DEBUG if said and outcome.detail == outcome.reading.detail else logging.INFO
            )
            logger.log(level, "%s not poked: %s", identity.dash, outcome.describe(), extra=fields)
        else:
            fields |= {"MESSAGE_ID": Event.POKE_NOT_DELIVERED.value}
            logger.warning("poke of %s: %s", identity.dash, outcome.describe(), extra=fields)

    def observe(self, identity: Identity, panes: t.Sequence[PaneInfo]) -> None:
        """Read a supervised agent's screen (no keystroke) for its condition."""
        view = agents.view(panes, identity, self.config)
        if not view.alive or view.pane is None:
            return
        try:
            reading = self.ui.read(self.tmux.screen(view.pane.pane_id))
        except TmuxError as err:
            logger.debug("cannot read %s's screen: %s", identity.dash, err)
            return
        self._note(self.supervisors[identity], reading)

    def _note(self, sup: Supervisor, reading: Reading) -> None:
        """Record a reading; a limit gets the time it resets, counted from its first sight."""
        until = None
        if reading.condition is Condition.LIMITED and reading.resets:
            until = self.ui.resets_at(reading, sup.limited_since())
        sup.noted(reading, until)

    def usr1(self) -> None:
        """SIGUSR1: carry out lifecycle requests now."""
        logger.info("SIGUSR1: processing lifecycle requests now")
        if not self._tmux_down or self.list_panes() is not None:
            self.process_lifecycle()

    def process_lifecycle(self) -> None:
        """Carry out pending lifecycle requests (a failure never stops the loop)."""
        try:
            self.processor.process(self.loop.tick)
        except Exception:
            # A bug in request handling must not take the supervisors down with it.
            logger.exception("lifecycle processing crashed; requests stay queued")
        if self._held_changed:  # a held agent must stay held across a daemon restart
            self._held_changed = False
            self._save_state()

    def check_upgrade(self) -> None:
        """Notice a newer gtd installed under the running one; say so, do not restart."""
        installed = store.installed_version(PACKAGE_INIT)
        if installed is None or not store.newer(installed, __version__):
            self.problems.pop("upgrade", None)
            return
        note = (
            f"gtd {installed} is installed, {__version__} runs: "
            "systemctl --user restart gastown-daemon to apply"
        )
        if self.problems.get("upgrade") != note:
            extra = {"MESSAGE_ID": Event.UPGRADE_PENDING.value}
            extra |= {"GTD_INSTALLED_VERSION": installed, "GTD_RUNNING_VERSION": __version__}
            logger.warning("%s", note, extra=extra)
        self.problems["upgrade"] = note

    # -- reporting -----------------------------------------------------------------

    def status_text(self) -> str:
        """The STATUS= line: each agent, heartbeats, any problem."""
        parts = [f"{i.dash} {sup.describe()}" for i, sup in self.supervisors.items()]
        last, when = self.state.last_heartbeat, ""
        if last:
            with contextlib.suppress(ValueError):
                when = f" at {datetime.datetime.fromisoformat(last).strftime('%H:%M:%S')}"
        text = f"{', '.join(parts) or 'no agents'}; heartbeat #{self.state.heartbeat_count}{when}"
        for topic in ("tmux", "command", "disk", "reload", "upgrade"):
            if note := self.problems.get(topic):
                text = f"{text}; {note}"
        return text

    def _save_state(self) -> None:
        """Write state.json; a failure (disk full) keeps the old file and shows in STATUS."""
        self.state.agents = {i.dash: sup.record() for i, sup in self.supervisors.items()}
        path = store.state_path(self.config.town_root)
        try:
            store.save_daemon_state(self.config.town_root, self.state)
        except OSError as err:
            logger.error("cannot write %s: %s", path, err.strerror or err)  # noqa: TRY400
            self.problems["disk"] = f"cannot write state.json: {err.strerror or err}"
        else:
            self.problems.pop("disk", None)
