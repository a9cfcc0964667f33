"""Fixtures for the real-agent tier: the stand-in API and Claude Code as the test user.

Every test here is marked ``realagent``. Where the pinned Claude Code cannot run (not
root, not installed) the tests are skipped with the reason, unless
``GTD_REQUIRE_REAL_AGENT=1`` (set by ``scripts/test``, so CI), which makes each of
them fail instead: the tier is never passed by not running.
"""

from __future__ import annotations

import pathlib
import secrets
import shutil
import typing as t

import pytest

from tests.fakeapi import FakeAPI
from tests.realagent.gtdrun import DEFAULT_COMMAND, GtdRun
from tests.realagent.harness import USER, Options, RealAgent, ensure_user, require_real_agent

HERE = pathlib.Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark this directory's tests ``realagent``."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.realagent)


@pytest.fixture(autouse=True)
def _real_agent_available() -> None:
    """Skip, loudly, where Claude Code cannot run; fail instead when it is required."""
    require_real_agent()


@pytest.fixture
def api() -> t.Iterator[FakeAPI]:
    """The stand-in Messages API for one test; closed (held replies released) after it."""
    with FakeAPI() as server:
        yield server


StartAgent = t.Callable[..., RealAgent]


@pytest.fixture
def start_agent(api: FakeAPI, request: pytest.FixtureRequest) -> t.Iterator[StartAgent]:
    """Start Claude Code (``start_agent(trusted=False, ...)`` takes :class:`Options` fields).

    Each agent gets a directory under the test user's home; afterwards its tmux server
    and processes are stopped and the directory removed.
    """
    home = pathlib.Path(ensure_user(USER).pw_dir) / "gtd-realagent"
    home.mkdir(exist_ok=True)
    home.chmod(0o755)
    agents: list[RealAgent] = []

    def start(*, launch: bool = True, **options: t.Any) -> RealAgent:
        name = f"{request.node.name[:40]}-{secrets.token_hex(3)}".replace("/", "_")
        agent = RealAgent(api, home / name, Options(**options))
        agents.append(agent)
        if launch:
            agent.start()
        else:
            agent.prepare()
        return agent

    yield start
    for agent in agents:
        agent.stop()
        shutil.rmtree(agent.base, ignore_errors=True)


StartGtd = t.Callable[..., GtdRun]


@pytest.fixture
def start_gtd(api: FakeAPI, request: pytest.FixtureRequest) -> t.Iterator[StartGtd]:
    """``gtd run`` as the test user over the real Claude Code (:class:`GtdRun`).

    ``start_gtd(heartbeat="1s", command=..., trusted=False, ...)`` takes the
    :class:`GtdRun` keywords and :class:`Options` fields, and starts it (with
    ``launch=False`` it only makes its directory, for the test to put files in and
    call :meth:`GtdRun.start`). Afterwards the
    daemon, its tmux server and every agent process are stopped and the directory
    removed.
    """
    home = pathlib.Path(ensure_user(USER).pw_dir) / "gtd-realagent"
    home.mkdir(exist_ok=True)
    home.chmod(0o755)
    towns: list[GtdRun] = []

    def start(
        *,
        command: str = DEFAULT_COMMAND,
        heartbeat: str = "2s",
        launch: bool = True,
        **options: t.Any,
    ) -> GtdRun:
        name = f"{request.node.name[:40]}-{secrets.token_hex(3)}".replace("/", "_")
        town = GtdRun(api, home / name, Options(**options), command=command, heartbeat=heartbeat)
        towns.append(town)
        if launch:
            town.start()
        else:
            town.base.mkdir()
        return town

    yield start
    for town in towns:
        town.stop()
        shutil.rmtree(town.base, ignore_errors=True)
