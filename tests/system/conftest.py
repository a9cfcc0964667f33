"""Fixtures for the system tests: a real ``systemd --user`` manager and journald.

Every test under ``tests/system`` is marked ``system`` and is skipped, with the
reason, where a manager cannot be started (not root, systemd or a tool missing).
"""

from __future__ import annotations

import pathlib
import sys
import typing as t

import pytest

from tests.sandbox import UserManager, missing_requirements
from tests.system.towns import town  # noqa: F401 - the `town` fixture for every system test

if t.TYPE_CHECKING:
    from collections.abc import Iterator

HERE = pathlib.Path(__file__).resolve().parent
#: Units a test may start; the ``manager`` fixture stops and resets them afterwards.
TEST_UNIT_PATTERNS = ("gastown-*", "test-*")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this directory ``system``; skip them all where they cannot run."""
    reasons = missing_requirements()
    skip = pytest.mark.skip(reason="system tests: " + "; ".join(reasons)) if reasons else None
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.system)
            if skip is not None:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def user_manager() -> Iterator[UserManager]:
    """Start one user manager for the session; always stop it at the end.

    The user is this clone's own (``tests.sandbox.default_user``: ``$GTD_SYSTEST_USER``,
    else derived from the clone's path), so runs from two clones never share one.
    """
    um = UserManager()
    try:
        um.start()
        yield um
    finally:
        um.stop()


@pytest.fixture
def manager(user_manager: UserManager) -> Iterator[UserManager]:
    """Give the session's manager; afterwards stop and reset-failed every test unit.

    Units matching ``gastown-*`` or ``test-*`` are cleaned, so no test leaks a
    running or failed unit into the next one.
    """
    yield user_manager
    listed = user_manager.systemctl(
        "list-units", "--all", "--plain", "--no-legend", *TEST_UNIT_PATTERNS, check=False
    )
    units = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    if units:
        user_manager.systemctl("stop", *units, check=False)
        user_manager.systemctl("reset-failed", *units, check=False)


@pytest.fixture(scope="session")
def gtd_venv(user_manager: UserManager) -> pathlib.Path:
    """Return a venv whose ``bin/gtd`` the sandbox user can run (see ``ensure_user_can_run``)."""
    return user_manager.ensure_user_can_run(pathlib.Path(sys.prefix))
