"""The crash-loop guard and MOTD rotation: pure, with an injected clock."""

from __future__ import annotations

import itertools
import typing as t

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gtd.state import Action, Guard, Phase, Policy, describe, next_deadline, next_motd, step

POLICY = Policy(startsecs=10, backoff_base=1, backoff_max=300, decay=900)


def run(observations: t.Iterable[tuple[float, bool]], guard: Guard | None = None) -> list[Action]:
    """Feed (time, alive) observations; return the actions."""
    g = guard or Guard()
    actions = []
    for now, alive in observations:
        g, action = step(g, alive, now, POLICY)
        actions.append(action)
    return actions


def test_transition_stopped_to_starting() -> None:
    """Nothing running at first sight: start at once."""
    guard, action = step(Guard(), False, 0.0, POLICY)
    assert (Phase.STARTING, Action.START, 1) == (guard.phase, action, guard.starts)


def test_transition_alive_at_first_sight_is_running() -> None:
    """An agent already alive when the daemon comes up is adopted, not restarted."""
    guard, action = step(Guard(), True, 0.0, POLICY)
    assert (Phase.RUNNING, Action.NONE) == (guard.phase, action)


def test_transition_starting_to_running_after_startsecs() -> None:
    """Alive for startsecs makes a start healthy and clears the failures."""
    guard = Guard(Phase.STARTING, 100.0, (90.0, 95.0), 0.0, 3)
    guard, _ = step(guard, True, 105.0, POLICY)
    assert Phase.STARTING == guard.phase
    guard, _ = step(guard, True, 110.0, POLICY)
    assert (Phase.RUNNING, ()) == (guard.phase, guard.failures)


def test_transition_running_exit_restarts_at_once() -> None:
    """A healthy agent that exits is restarted at once, with no failure counted."""
    guard = Guard(Phase.RUNNING, 0.0, (), 0.0, 1)
    guard, action = step(guard, False, 500.0, POLICY)
    assert (Phase.STARTING, Action.START, ()) == (guard.phase, action, guard.failures)


def test_transition_starting_to_backoff_on_quick_exit() -> None:
    """Dying within startsecs is a quick failure; the second one waits 1 s, the third 2 s."""
    g, a = step(Guard(), False, 0.0, POLICY)
    assert Action.START == a
    g, a = step(g, False, 0.5, POLICY)  # first quick exit: retry after backoff(1) = 1 s
    assert (Phase.BACKOFF, Action.NONE, 1.5) == (g.phase, a, g.retry_at)
    g, a = step(g, False, 1.0, POLICY)
    assert Action.NONE == a
    g, a = step(g, False, 1.5, POLICY)
    assert (Phase.STARTING, Action.START) == (g.phase, a)
    g, a = step(g, False, 2.0, POLICY)  # second quick exit: 2 s
    assert (Phase.BACKOFF, 4.0) == (g.phase, g.retry_at)


def test_backoff_is_capped_and_never_fatal() -> None:
    """A crash loop backs off to at most backoff_max and is still tried after that."""
    g = Guard()
    now = 0.0
    starts = 0
    for _ in range(200):
        g, a = step(g, False, now, POLICY)
        if a is Action.START:
            starts += 1
            now += 0.1
            g, _ = step(g, False, now, POLICY)  # it dies at once
        deadline = next_deadline(g, POLICY)
        assert deadline is not None
        assert deadline - now <= POLICY.backoff_max
        now = deadline
    assert starts > 100
    assert Phase.BACKOFF == g.phase


def test_failures_decay_so_the_wait_shrinks() -> None:
    """Failures older than decay stop counting: after a quiet hour the wait is short again."""
    g = Guard(Phase.BACKOFF, None, tuple(float(i) for i in range(9)), 8.0 + 256.0, 9)
    g, a = step(g, False, 4000.0, POLICY)
    assert (Action.START, ()) == (a, g.failures)


def test_one_healthy_start_resets_the_guard() -> None:
    """After a crash loop, one start that lives past startsecs clears every failure."""
    g = Guard(Phase.STARTING, 1000.0, (990.0, 995.0, 999.0), 0.0, 4)
    g, _ = step(g, True, 1011.0, POLICY)
    g, a = step(g, False, 1012.0, POLICY)
    assert (Action.START, ()) == (a, g.failures)


def test_describe_backoff_mentions_the_wait() -> None:
    """STATUS in backoff says it is crash-looping and when it tries again."""
    g = Guard(Phase.BACKOFF, None, (0.0, 1.0), 125.0, 2)
    assert "crash-looping (2 quick exits), next start in 2m5s" == describe(g, 0.0)


@given(st.lists(st.tuples(st.floats(0, 50), st.booleans()), max_size=60))
def test_guard_invariants(steps: list[tuple[float, bool]]) -> None:
    """Whatever happens: failures stay within decay, the wait never exceeds the cap."""
    g, now = Guard(), 0.0
    for dt, alive in steps:
        now += dt
        g, action = step(g, alive, now, POLICY)
        assert all(now - f < POLICY.decay for f in g.failures)
        if g.phase is Phase.BACKOFF:
            assert g.retry_at - now <= POLICY.backoff_max
            assert action is Action.NONE
        if action is Action.START:
            assert g.phase is Phase.STARTING


@pytest.mark.parametrize("count", [2, 3, 12])
def test_motd_never_repeats(count: int) -> None:
    """Rotation visits every message and never gives the same index twice in a row."""
    seen, last = [], -1
    for _ in range(count * 3):
        last = next_motd(count, last)
        seen.append(last)
    assert set(range(count)) == set(seen)
    assert all(a != b for a, b in itertools.pairwise(seen))


def test_motd_needs_messages() -> None:
    """Zero messages is a programming error, not a silent empty poke."""
    with pytest.raises(ValueError, match="no messages"):
        next_motd(0, -1)


def test_transition_starting_found_dead_late_is_a_quick_failure() -> None:
    """Dead when first looked at after startsecs, never seen alive: still a quick failure."""
    guard, _ = step(Guard(), False, 0.0, POLICY)
    guard, action = step(guard, False, 10.0, POLICY)
    assert (Phase.BACKOFF, Action.NONE, (10.0,)) == (guard.phase, action, guard.failures)
