"""One agent kept alive: a pure crash-loop decision plus a watch on its process.

A :class:`Supervisor` looks at its agent in a pane listing (:meth:`ensure`),
asks the pure guard of :mod:`gtd.state` what to do, starts the agent through the
starter it is given when that says so, and watches the agent's process with a
pidfd so that its death wakes the loop at once (:meth:`watch`). It also keeps
what ``gtd status`` shows of the agent: its condition, since when, restarts,
backoff. The daemon holds one per ``[supervise] agents`` entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import time
import typing as t

from gtd import state as sv
from gtd import store
from gtd.events import Event
from gtd.exc import GtdError
from gtd.screen import Condition, Reading

if t.TYPE_CHECKING:
    from gtd.agents import AgentView
    from gtd.identities import Identity
    from gtd.loop import Loop
    from gtd.tmux import PaneInfo

logger = logging.getLogger(__name__)


Starter: t.TypeAlias = "t.Callable[[Identity], PaneInfo]"


@dataclasses.dataclass(slots=True)
class Record:
    """What the daemon keeps of one agent in ``state.json`` (key ``agents``)."""

    condition: Condition = Condition.DEAD
    detail: str = ""
    since: str = ""
    restarts: int = 0
    held: bool = False
    """Stopped on request: not brought back until started again (any way)."""

    def to_json(self) -> dict[str, t.Any]:
        """The JSON form; see :meth:`Supervisor.record`."""
        return {
            "condition": self.condition.value,
            "detail": self.detail,
            "since": self.since,
            "restarts": self.restarts,
            "held": self.held,
        }


class Supervisor:
    """Keeps one agent alive.

    Parameters
    ----------
    identity
        The agent.
    loop
        Where its process is watched; *woken* runs when that process exits or the
        guard's next deadline comes.
    woken
        Called (from the loop) with this supervisor when it wants to look again.
    policy, clock
        The crash-loop guard's timings and clock.
    """

    def __init__(
        self,
        identity: Identity,
        loop: Loop,
        woken: t.Callable[[Supervisor], None],
        *,
        policy: sv.Policy | None = None,
        clock: t.Callable[[], float] = time.monotonic,
        previous: t.Mapping[str, t.Any] | None = None,
    ) -> None:
        self.identity = identity
        self.loop = loop
        self.woken = woken
        self.policy = policy or sv.Policy()
        self.clock = clock
        self.guard = sv.Guard()
        self.pid: int | None = None
        self.pane_id: str | None = None
        self.launch_pid: int | None = None
        """The pane process gtd last started, until the agent is first seen alive."""
        self.limit_until: datetime.datetime | None = None
        self.state = Record()
        if previous:
            restarts, held = previous.get("restarts"), previous.get("held")
            self.state.restarts = restarts if type(restarts) is int and restarts >= 0 else 0
            self.state.held = held is True
        self._fds: dict[int, int] = {}

    # -- deciding ---------------------------------------------------------------------

    def ensure(self, view: AgentView, start: Starter) -> PaneInfo | None:
        """Start the agent if it is not alive and the guard allows; return a new pane.

        An agent held by a shutdown request is left stopped; seeing it alive (started
        by hand) releases the hold.

        Raises
        ------
        GtdError, OSError
            The start failed (tmux, a missing workdir); logged by the caller. The
            guard counts it as a quick failure on the next look.
        """
        fields = {"GTD_IDENTITY": self.identity.dash}
        if self.state.held:
            if not view.alive:
                self.unwatch()
                self._set(Condition.STOPPED, "stopped on request")
                return None
            self.state.held = False
            logger.info("%s runs again; no longer held", self.identity.dash, extra=fields)
        now = self.clock()
        if not view.alive and self._launching(view, now):
            return None  # a wrapper script at work: the guard's deadline looks again
        was = self.guard.phase
        self.guard, action = sv.step(self.guard, view.alive, now, self.policy)
        self.loop.at(
            ("guard", self.identity), sv.next_deadline(self.guard, self.policy), self._wake
        )
        if view.alive and view.pid is not None and view.pane is not None:
            self.launch_pid = None
            self.watch(view.pid, view.pane.pane_pid, view.pane.pane_id)
            if self.state.condition in _NOT_RUNNING:
                self._set(Condition.STARTING, "")  # until its screen is read
            return None
        self.unwatch()
        if action is not sv.Action.START:
            if self.guard.phase is sv.Phase.BACKOFF:
                text = sv.describe(self.guard, now)
                if self.state.condition is not Condition.BACKOFF:
                    extra = fields | {"GTD_STATE": "backoff", "MESSAGE_ID": Event.CRASH_LOOP.value}
                    logger.warning("%s %s", self.identity.dash, text, extra=extra)
                self._set(Condition.BACKOFF, text)
            return None
        if view.pane is not None or was is not sv.Phase.STOPPED:
            what = "dead" if view.pane is None or view.pane.dead else "back at a shell"
            logger.warning(
                "%s not alive (%s); starting it",
                self.identity.dash,
                what,
                extra=fields | {"MESSAGE_ID": Event.AGENT_DIED.value},
            )
            self.state.restarts += 1
        try:
            pane = start(self.identity)
        except (GtdError, OSError):
            self._set(Condition.DEAD, "start failed")
            raise
        self._set(Condition.STARTING, "")
        self.launch_pid = pane.pane_pid
        self.watch(pane.pane_pid, pane.pane_pid, pane.pane_id)
        return pane

    def _launching(self, view: AgentView, now: float) -> bool:
        """Whether the pane gtd just started still runs its first process, a shell.

        A wrapper script (``exec claude`` or one that forks it) is a shell with nothing
        under it until it gets there, which may take a while (nvm, a login profile).
        Until ``startsecs`` has passed that is a start in progress, not an agent back
        at a shell: once the agent was seen alive, or the pane's process changed, or
        ``startsecs`` passed, a shell alone is an exit as before.
        """
        started = self.guard.started_at
        return (
            self.launch_pid is not None
            and view.pane is not None
            and not view.pane.dead
            and view.pane.pane_pid == self.launch_pid
            and self.guard.phase is sv.Phase.STARTING
            and started is not None
            and now - started < self.policy.startsecs
        )

    def limited_since(self) -> datetime.datetime:
        """When the agent was first seen at its current limit (now, if it is not yet)."""
        if self.state.condition is Condition.LIMITED and self.state.since:
            with contextlib.suppress(ValueError):
                return datetime.datetime.fromisoformat(self.state.since)
        return datetime.datetime.now(datetime.UTC)

    def limit_passed(self) -> bool:
        """Whether the agent is at a limit whose reset time has come (a poke may go)."""
        until = self.limit_until
        return until is not None and datetime.datetime.now(datetime.UTC) >= until

    def deadline(self) -> float | None:
        """When the guard next changes by itself (a retry due, a start turning healthy)."""
        return sv.next_deadline(self.guard, self.policy)

    def hold(self) -> None:
        """A shutdown was requested: do not bring the agent back until it runs again."""
        self.state.held = True

    def release(self) -> None:
        """A start was requested: supervise as usual."""
        self.state.held = False

    def reset(self) -> None:
        """Forget the guard and the watch (the agents' tmux server changed)."""
        self.unwatch()
        self.guard = sv.Guard()
        self.launch_pid = None
        self.loop.at(("guard", self.identity), None, self._wake)

    def noted(self, reading: Reading, until: datetime.datetime | None = None) -> None:
        """Record what the agent's screen showed; say once when it starts to wait.

        A dialog, menu or login screen, or a limit (with *until*, when it resets), is
        logged when the agent enters it, with its ``MESSAGE_ID``; not every heartbeat.
        """
        detail = reading.detail
        self.limit_until = until if reading.condition is Condition.LIMITED else None
        if reading.condition is Condition.LIMITED and until is not None:
            detail = f"{detail}, until {until.astimezone().strftime('%Y-%m-%d %H:%M %Z')}"
        if not self._set(reading.condition, detail):
            return
        event = _WAITS.get(reading.condition)
        if event is not None:
            extra = {"GTD_IDENTITY": self.identity.dash, "GTD_SESSION": self.identity.session}
            extra |= {"GTD_CONDITION": reading.condition.value, "GTD_CONDITION_DETAIL": detail}
            logger.warning(
                "%s waits: %s: %s", self.identity.dash, reading.condition.value, detail,
                extra=extra | {"MESSAGE_ID": event.value},
            )  # fmt: skip

    def _set(self, condition: Condition, detail: str) -> bool:
        changed = condition is not self.state.condition
        if changed or detail != self.state.detail:
            self.state.detail = detail
        if changed:
            self.state.condition = condition
            self.state.since = store.now_iso()
        return changed

    # -- watching ---------------------------------------------------------------------

    def watch(self, pid: int, pane_pid: int, pane_id: str) -> None:
        """Wake the loop the moment the agent's process (or its pane's) exits.

        A process gone before it could be watched counts as an exit at once.
        """
        self.pane_id = pane_id
        if self.pid == pid and self._fds:
            return
        self.unwatch()
        self.pid, self.pane_id = pid, pane_id
        for watched in dict.fromkeys((pid, pane_pid)):
            try:
                fd = os.pidfd_open(watched)
            except ProcessLookupError:
                if watched == pid:  # the agent itself: look again at once
                    self.loop.at(("exit", self.identity), self.clock(), self._wake)
                continue  # a wrapper already gone: its pane shows dead in the next listing
            self._fds[watched] = fd
            self.loop.watch(fd, self._exited)

    def unwatch(self) -> None:
        """Stop watching; idempotent."""
        for fd in self._fds.values():
            self.loop.unwatch(fd)
            os.close(fd)
        self._fds.clear()
        self.pid = None

    def _exited(self) -> None:
        self.unwatch()
        self._wake()

    def _wake(self) -> None:
        self.woken(self)

    # -- reporting --------------------------------------------------------------------

    def describe(self) -> str:
        """A few words for STATUS=: ``running (pid 42)``, ``crash-looping ...``, ``stopped``."""
        if self.state.held and self.pid is None:
            return "stopped on request"
        text = sv.describe(self.guard, self.clock())
        if self.pid is not None and self.guard.phase in (sv.Phase.RUNNING, sv.Phase.STARTING):
            text = f"{text} (pid {self.pid})"
        if (waits := _WAITING_AT.get(self.state.condition)) is not None:
            text = f"{text}, {waits}" + (f": {self.state.detail}" if self.state.detail else "")
        return text

    def record(self) -> dict[str, t.Any]:
        """What ``state.json`` keeps: the condition record plus pid, phase, backoff."""
        backoff_until = ""
        if self.guard.phase is sv.Phase.BACKOFF:
            wall = time.time() + max(0.0, self.guard.retry_at - self.clock())
            backoff_until = store.iso(wall)
        return self.state.to_json() | {
            "pid": self.pid,
            "pane": self.pane_id,
            "phase": self.guard.phase.value,
            "quick_exits": len(self.guard.failures),
            "backoff_until": backoff_until,
        }


_NOT_RUNNING = frozenset({Condition.DEAD, Condition.BACKOFF, Condition.STOPPED})
_WAITS = {Condition.DIALOG: Event.AGENT_DIALOG, Condition.LIMITED: Event.AGENT_LIMITED}
_WAITING_AT = {Condition.DIALOG: "at a dialog", Condition.LIMITED: "at a limit"}
