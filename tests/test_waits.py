"""The tests' one way to wait (tests/sandbox.py): bounded polls that say what they saw."""

from __future__ import annotations

import itertools
import os
import secrets
import subprocess
import sys

import pytest

from tests.sandbox import (
    REPO,
    STATE_DIR,
    WaitTimeout,
    machine_lock,
    retry_until,
    wait_equal,
    wait_for,
)


def test_wait_for_returns_the_first_accepted_value() -> None:
    """The value that satisfied the condition is returned, so the test asserts on it."""
    counter = itertools.count()
    assert 3 == wait_for(lambda: next(counter), lambda n: n >= 3, interval=0)


def test_a_timeout_says_what_was_awaited_and_what_was_seen_last() -> None:
    """The message names the condition (from its source) and the last observed value."""
    pids = iter([None, 42])

    def deacon_pid() -> int | None:
        return next(pids, 42)

    with pytest.raises(WaitTimeout) as caught:
        wait_for(deacon_pid, lambda pid: pid not in (None, 42), timeout=0.2, interval=0.01)
    assert "waited 0.2s for pid not in (None, 42); last saw: 42" == str(caught.value)
    assert (42, 0.2) == (caught.value.seen, caught.value.timeout)


def test_wait_equal_shows_both_values_and_the_context() -> None:
    """wait_equal says what it expected and what it got; the context callable is shown."""

    def journal() -> list[str]:
        return ["started deacon", "heartbeat #1 done"]

    with pytest.raises(WaitTimeout) as caught:
        wait_equal("active", lambda: "activating", timeout=0.1, context=journal)
    assert str(caught.value).splitlines() == [
        """waited 0.1s for "activating" == 'active'; last saw: 'activating'""",
        "journal():",
        "  'started deacon'",
        "  'heartbeat #1 done'",
    ]


def test_retry_until_keeps_its_contract() -> None:
    """True when the predicate holds; False or WaitTimeout (naming the predicate) when not."""
    assert retry_until(lambda: True, 0.1) is True
    assert retry_until(list, 0.1, raises=False) is False
    with pytest.raises(WaitTimeout, match=r"for len\(\[1\]\) > 5; last saw: False"):
        retry_until(lambda: len([1]) > 5, 0.1)


def test_the_condition_is_tried_again_at_the_deadline() -> None:
    """A long interval does not make the wait give up early: one more try at the deadline."""
    calls = itertools.count(1)
    assert 2 == wait_for(lambda: next(calls), lambda n: n >= 2, timeout=0.1, interval=30)


@pytest.mark.skipif(os.geteuid() != 0, reason="the machine's locks live in /run/gtd-sandbox")
def test_machine_lock_waits_for_another_run_and_says_who_holds_it() -> None:
    """A second run waits at the lock, names the holder on timeout, and gets it once free."""
    name = f"test-{secrets.token_hex(4)}"
    code = (
        "import sys\nfrom tests.sandbox import machine_lock\n"
        f"with machine_lock({name!r}, 10):\n    print('held', flush=True)\n    sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert "held" == holder.stdout.readline().strip()
        with pytest.raises(WaitTimeout) as caught, machine_lock(name, 0.5):
            pytest.fail("the lock was taken while another run held it")
        assert f"pid {holder.pid}, {REPO}" == caught.value.seen
        holder.stdin.close()
        assert 0 == holder.wait(10)
        with machine_lock(name, 5):
            pass  # free again once the holder ended
    finally:
        holder.kill()
        holder.wait()
        (STATE_DIR / f"{name}.lock").unlink(missing_ok=True)
