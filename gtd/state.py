"""Supervision of one agent as a pure state machine with an injected clock.

Supervisor's states and ``startsecs`` semantics (``supervisor/states.py``,
``process.py transition()``), changed where upstream Gas Town got stuck: there is
no FATAL. A start that dies within ``startsecs`` is a quick failure; failures back
off exponentially up to ``backoff_max`` and each one stops counting after
``decay`` seconds, so a crash-looping agent is always tried again, and one healthy
start clears them all. :func:`step` returns what to do instead of doing it.
"""

from __future__ import annotations

import dataclasses
import enum


class Phase(enum.Enum):
    """Where an agent is in its life, as the daemon last saw it."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    EXITED = "exited"


class Action(enum.Enum):
    """What :func:`step` asks the caller to do."""

    NONE = "none"
    START = "start"


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """Timings of the crash-loop guard, in seconds."""

    startsecs: float = 10.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    decay: float = 900.0


@dataclasses.dataclass(frozen=True, slots=True)
class Guard:
    """One agent's supervision state."""

    phase: Phase = Phase.STOPPED
    started_at: float | None = None
    failures: tuple[float, ...] = ()
    retry_at: float = 0.0
    starts: int = 0


def backoff(failures: int, policy: Policy) -> float:
    """Delay before the next start after *failures* recent quick failures.

    >>> [backoff(n, Policy()) for n in range(5)]
    [0.0, 1.0, 2.0, 4.0, 8.0]
    >>> backoff(40, Policy())
    300.0
    """
    if failures <= 0:
        return 0.0
    return min(policy.backoff_base * 2.0 ** min(failures - 1, 60), policy.backoff_max)


def step(guard: Guard, alive: bool, now: float, policy: Policy) -> tuple[Guard, Action]:
    """Advance *guard* given whether the agent is *alive* at *now*.

    A start becomes healthy (RUNNING, failures cleared) only when the agent is seen
    alive ``startsecs`` after it; dying before that is a quick failure. The daemon
    looks at the agent at that moment (:func:`next_deadline`), so a healthy agent
    is never mistaken for a failing one.

    Idempotent for repeated observations of the same fact. When the result is
    :attr:`Action.START` the guard already records the start; if the start then
    fails, the next observation of "not alive" counts it as a quick failure.
    """
    failures = tuple(f for f in guard.failures if now - f < policy.decay)
    started = guard.started_at
    if alive:
        if guard.phase is Phase.STARTING and started is not None:
            if now - started >= policy.startsecs:
                return dataclasses.replace(guard, phase=Phase.RUNNING, failures=()), Action.NONE
            return dataclasses.replace(guard, failures=failures), Action.NONE
        if guard.phase is Phase.RUNNING:
            return dataclasses.replace(guard, failures=failures), Action.NONE
        # Alive without our start (it was running before the daemon came up).
        return Guard(Phase.RUNNING, None, failures, 0.0, guard.starts), Action.NONE

    phase = guard.phase
    retry_at = guard.retry_at
    if phase is Phase.STARTING:
        # Not yet seen alive past startsecs: a quick failure, even when noticed late.
        failures = (*failures, now)
        phase = Phase.EXITED
        retry_at = (failures[-1] if failures else now) + backoff(len(failures), policy)
    elif phase is Phase.RUNNING:
        phase = Phase.EXITED
        retry_at = now
    elif phase is Phase.STOPPED:
        retry_at = now
    elif phase is Phase.BACKOFF:
        # Recomputed each time: as failures decay, the wait shrinks with them.
        retry_at = failures[-1] + backoff(len(failures), policy) if failures else now

    if now >= retry_at:
        return Guard(Phase.STARTING, now, failures, 0.0, guard.starts + 1), Action.START
    return Guard(Phase.BACKOFF, None, failures, retry_at, guard.starts), Action.NONE


def next_deadline(guard: Guard, policy: Policy) -> float | None:
    """When the guard next changes by itself (retry due, or a start becomes healthy)."""
    if guard.phase is Phase.BACKOFF:
        return guard.retry_at
    if guard.phase is Phase.STARTING and guard.started_at is not None:
        return guard.started_at + policy.startsecs
    return None


def describe(guard: Guard, now: float) -> str:
    """A sentence for STATUS= and ``gtd status``."""
    if guard.phase is Phase.BACKOFF:
        wait = max(0.0, guard.retry_at - now)
        return f"crash-looping ({len(guard.failures)} quick exits), next start in {_human(wait)}"
    if guard.phase is Phase.STARTING:
        return "starting"
    return str(guard.phase.value)


def _human(seconds: float) -> str:
    """Short duration text.

    >>> _human(5), _human(125), _human(7260)
    ('5s', '2m5s', '2h1m')
    """
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60}m"


def next_motd(count: int, last: int) -> int:
    """Index of the next message: rotates, never the same twice in a row when count > 1.

    >>> [next_motd(3, i) for i in (-1, 0, 1, 2, 7)]
    [0, 1, 2, 0, 0]
    """
    if count <= 0:
        msg = "no messages to rotate through"
        raise ValueError(msg)
    if last < 0 or last >= count:
        return 0
    return (last + 1) % count
