"""Lifecycle requests: the spool, the agent-state guard, the actions, crashes, bad input.

Agents run in a real tmux server (private socket) as the fake agent; git runs for real.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pathlib
import secrets
import shutil
import stat
import subprocess
import threading
import time
import typing as t

import pytest

from gtd import actions, agents, environment, lifecycle, store
from gtd import spool as spools
from gtd.actions import AgentActor
from gtd.config import AgentConfig, Config, LifecycleConfig, TmuxConfig
from gtd.exc import GtdError, IdentityError, RequestError
from gtd.identities import Identity, parse_identity
from gtd.lifecycle import Processor, SpoolSource
from gtd.mail import MailSource
from gtd.request import file_id, from_record, new_id, parse_action
from gtd.spool import Spool, spool_dir
from gtd.tmux import Tmux
from tests.conftest import HAVE_TMUX, FakeAgent, TmuxServer, proc_comm, proc_environ
from tests.sandbox import retry_until

LEAKS = {"GT_ROLE": "daemon-leak", "GT_RIG": "leak", "GT_CREW": "leak", "GT_POLECAT": "leak",
         "GT_SESSION": "leak", "BD_ACTOR": "leak", "GT_REFINERY": "1"}  # fmt: skip
needs_tmux = pytest.mark.skipif(not HAVE_TMUX, reason="tmux is not installed")


# -- helpers -------------------------------------------------------------------


def make_config(
    town: pathlib.Path, agent: FakeAgent | None = None, socket: str = "", gt: str = ""
) -> Config:
    command = agent.command() if agent else "node"
    return Config(
        town_root=town,
        agent=AgentConfig(command=command, alive_commands=("node",)),
        tmux=TmuxConfig(socket=socket or f"gtd_test_none_{secrets.token_hex(4)}"),
        lifecycle=LifecycleConfig(gt_command=gt),
    )


def set_flag(town: pathlib.Path, identity: str, action: str, **other: t.Any) -> pathlib.Path:
    """An agent asking, as upstream agents do: its state file with the flag and a time."""
    path = parse_identity(identity).state_file(town)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {parse_action(action).flag: True, "requesting_time": "2025-01-01T00:00:00Z"}
    path.write_text(json.dumps(state | other))
    return path


def processor(config: Config) -> Processor:
    """Request processing as ``gtd run`` wires it: the spool, ``gt mail``, agents in tmux."""
    env = environment.helper_env(os.environ, os.environ.get("PATH", ""))
    town = config.town_root
    sources = (SpoolSource(), MailSource(config.lifecycle.argv, town, env))
    return Processor(Spool(town), sources, AgentActor(config, Tmux(config.tmux.socket), env))


def run(lc: Processor | None, config: Config, tick: t.Callable[[], None] = lambda: None) -> None:
    """One pass, with *lc* (kept across passes) or a fresh processor."""
    (lc or processor(config)).process(tick)


def enqueue(town: pathlib.Path, identity: str, action: str, *, sender: str) -> str:
    """``gtd request`` without the CLI: parse at the edge, queue, return the id."""
    ident, act = parse_identity(identity), parse_action(action)
    return lifecycle.submit(Spool(town), ident, act, sender=sender, word=action).id


def pending(town: pathlib.Path) -> list[str]:
    return Spool(town).pending()


def failed(town: pathlib.Path) -> list[dict[str, t.Any]]:
    return Spool(town).failed()


def names(town: pathlib.Path, sub: str) -> list[str]:
    return sorted(os.listdir(spool_dir(town) / sub))


def field(record: logging.LogRecord, name: str) -> str:
    """A journal field (``extra=`` key) of a log record, or ``""``."""
    return str(record.__dict__.get(name, ""))


def outcomes(caplog: pytest.LogCaptureFixture, outcome: str) -> list[str]:
    """Request ids of the log records with that outcome, in order."""
    return [
        field(r, "GTD_REQUEST_ID") for r in caplog.records if field(r, "GTD_OUTCOME") == outcome
    ]


def starts(agent: FakeAgent) -> int:
    return sum(1 for line in agent.lines() if line.split(" ")[1] == "START")


def agent_pid(config: Config, identity: Identity) -> int:
    pane = agents.agent_pane(Tmux(config.tmux.socket).list_panes(), identity)
    assert pane is not None
    return pane.pane_pid


# -- pure ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "flag"),
    [("shutdown", "requesting_shutdown"), ("stop", "requesting_shutdown"),
     ("cycle", "requesting_cycle"), ("RESTART", "requesting_restart")],
)  # fmt: skip
def test_flag_key_maps_stop_to_shutdown(action: str, flag: str) -> None:
    """``stop`` is an alias of ``shutdown``; actions are case-insensitive."""
    assert flag == parse_action(action).flag


class RecordCase(t.NamedTuple):
    test_id: str
    change: dict[str, t.Any]
    problem: str


RID = "00000000000000000001-0a0b0c0d"
GOOD = {"id": RID, "identity": "gastown-witness", "action": "cycle",
        "created_at": "2025-01-01T00:00:00+00:00", "from": "test"}  # fmt: skip
RECORD_CASES = [
    RecordCase("missing-field", {"from": None}, "field 'from' must be a string"),
    RecordCase("wrong-type", {"identity": 5}, "field 'identity' must be a string (int)"),
    RecordCase("id-mismatch", {"id": "00000000000000000002-0a0b0c0d"}, "does not match"),
    RecordCase("unknown-action", {"action": "explode"}, "unknown action 'explode'"),
    RecordCase("dotdot", {"identity": "../x"}, "'..' is not allowed"),
    RecordCase("mail-id-option", {"mail_id": "-rf"}, "unusable mail_id"),
    RecordCase("problem", {"problem": "unparseable body"}, "unparseable body"),
]


@pytest.mark.parametrize("case", RECORD_CASES, ids=[c.test_id for c in RECORD_CASES])
def test_check_record_names_the_problem(case: RecordCase) -> None:
    """Every defect of a record is a RequestError that says what is wrong."""
    rec = {k: v for k, v in (GOOD | case.change).items() if v is not None}
    with pytest.raises(RequestError, match=case.problem.replace("(", r"\(").replace(")", r"\)")):
        from_record(rec, RID)


def test_check_record_accepts_slash_forms() -> None:
    """A good record gives its identity and lower-case action."""
    request = from_record(GOOD | {"identity": "gastown/crew/max"}, RID)
    assert ("gastown-crew-max", "cycle") == (request.identity.dash, request.action.value)


# -- the spool -------------------------------------------------------------------


def test_enqueue_writes_a_whole_request(town: pathlib.Path) -> None:
    """``new/<id>.json`` holds exactly the five fields; dirs are 0700, tmp/ is left empty."""
    rid = enqueue(town, "gastown/witness", "Cycle", sender="max")
    root = spool_dir(town)
    rec = json.loads((root / "new" / f"{rid}.json").read_text())
    assert {"id", "identity", "action", "created_at", "from"} == rec.keys()
    assert (rid, "gastown-witness", "cycle", "max") == (
        rec["id"], rec["identity"], rec["action"], rec["from"]
    )  # fmt: skip
    assert file_id(f"{rid}.json") == rid
    assert [] == names(town, "tmp")
    for sub in ("", *spools.SUBDIRS):
        assert 0o700 == stat.S_IMODE((root / sub).stat().st_mode)
    assert [rid] == pending(town)


def test_enqueue_ids_sort_fifo(town: pathlib.Path) -> None:
    """Ids sort in the order the requests were queued."""
    ids = [enqueue(town, "mayor", "stop", sender="t") for _ in range(20)]
    assert ids == sorted(ids) == pending(town)


@pytest.mark.parametrize(
    ("identity", "action", "error", "text"),
    [("../x", "cycle", IdentityError, "'..'"), ("$(id)", "cycle", IdentityError, "metachar"),
     ("mayor", "explode", RequestError, "unknown action 'explode'")],
)  # fmt: skip
def test_enqueue_refuses_bad_input(
    town: pathlib.Path, identity: str, action: str, error: type[Exception], text: str
) -> None:
    """Invalid identities and actions raise a clear GtdError and write nothing."""
    with pytest.raises(error, match=text):
        enqueue(town, identity, action, sender="t")
    assert not spool_dir(town).exists()


def test_set_request_flag_keeps_other_keys(town: pathlib.Path) -> None:
    """``--force`` sets the flag and a time, creating the file or keeping what is there."""
    path = actions.set_request_flag(town, parse_identity("gastown-crew-max"), parse_action("stop"))
    first = json.loads(path.read_text())
    assert first["requesting_shutdown"] is True
    assert "requesting_time" in first
    path.write_text(json.dumps({"mood": "ok", "requesting_cycle": False}))
    actions.set_request_flag(town, parse_identity("gastown/crew/max"), parse_action("cycle"))
    state = json.loads(path.read_text())
    assert {"mood": "ok", "requesting_cycle": True} == {
        k: state[k] for k in ("mood", "requesting_cycle")
    }


@needs_tmux
def test_shutdown_kills_the_agent_and_clears_the_flag(
    tmux_server: TmuxServer,
    fake_agent: FakeAgent,
    town: pathlib.Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    """A shutdown stops the agent; the flag and requesting_time go, other keys stay."""
    config = make_config(town, fake_agent, tmux_server.socket)
    ident = parse_identity("gastown-witness")
    ident.workdir(town).mkdir(parents=True)
    agents.start_agent(Tmux(tmux_server.socket), ident, config)
    state = set_flag(town, "gastown-witness", "shutdown", mood="tired")
    rid = enqueue(town, "gastown-witness", "shutdown", sender="test")
    run(None, config)
    assert [] == Tmux(tmux_server.socket).list_panes()
    assert {"mood": "tired"} == json.loads(state.read_text())
    assert [rid] == outcomes(logs, "done")
    assert ([], [], []) == (names(town, "new"), names(town, "cur"), names(town, "failed"))
    done = next(r for r in logs.records if field(r, "GTD_OUTCOME") == "done")
    assert (logging.INFO, "gastown-witness", "shutdown") == (
        done.levelno, field(done, "GTD_IDENTITY"), field(done, "GTD_ACTION")
    )  # fmt: skip


@needs_tmux
@pytest.mark.parametrize(
    ("identity", "action", "expected"),
    [
        ("deacon", "cycle", {"GT_ROLE": "deacon", "BD_ACTOR": "deacon"}),
        ("mayor", "restart", {"GT_ROLE": "mayor", "BD_ACTOR": "mayor"}),
        ("gastown-witness", "cycle", {"GT_ROLE": "gastown-witness", "BD_ACTOR": "gastown/witness",
                                      "GT_RIG": "gastown"}),
        ("gastown/refinery", "restart", {"GT_ROLE": "gastown-refinery",
                                         "BD_ACTOR": "gastown/refinery", "GT_RIG": "gastown",
                                         "GT_REFINERY": "1"}),
        ("gastown-crew-max", "cycle", {"GT_ROLE": "gastown-crew-max",
                                       "BD_ACTOR": "gastown/crew/max", "GT_RIG": "gastown"}),
    ],
    ids=["deacon", "mayor", "witness", "refinery", "crew"],
)  # fmt: skip
def test_restart_gives_every_identity_its_environment(
    identity: str,
    action: str,
    expected: dict[str, str],
    tmux_server: TmuxServer,
    fake_agent: FakeAgent,
    town: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cycle/restart start a new agent in its workdir with SPEC's variables and no leaks."""
    for name, value in LEAKS.items():
        monkeypatch.setenv(name, value)
    config = make_config(town, fake_agent, tmux_server.socket)
    ident = parse_identity(identity)
    ident.workdir(town).mkdir(parents=True, exist_ok=True)
    before = agents.start_agent(Tmux(tmux_server.socket), ident, config).pane_pid
    set_flag(town, identity, action)
    enqueue(town, identity, action, sender="test")
    run(None, config)
    pid = agent_pid(config, ident)
    assert pid != before
    assert retry_until(lambda: proc_comm(pid) == "node", 5)
    env = proc_environ(pid)
    assert expected == {k: env[k] for k in (*environment.IDENTITY_VARS, "GT_REFINERY") if k in env}
    assert pathlib.Path(f"/proc/{pid}/cwd").resolve() == ident.workdir(town).resolve()
    assert parse_action(action).flag not in json.loads(ident.state_file(town).read_text())
    assert ([], []) == (pending(town), failed(town))


@needs_tmux
def test_cycle_keeps_a_persons_pane(
    tmux_server: TmuxServer, fake_agent: FakeAgent, town: pathlib.Path
) -> None:
    """The agent's own pane is respawned; a pane a person split off keeps running."""
    config = make_config(town, fake_agent, tmux_server.socket)
    ident = parse_identity("gastown-witness")
    ident.workdir(town).mkdir(parents=True)
    first = agents.start_agent(Tmux(tmux_server.socket), ident, config)
    tmux_server.cmd("split-window", "-d", "-t", first.pane_id, "sleep 600")
    person = next(p for p in Tmux(tmux_server.socket).list_panes() if p.pane_id != first.pane_id)
    set_flag(town, "gastown-witness", "cycle")
    enqueue(town, "gastown-witness", "cycle", sender="test")
    run(None, config)
    panes = {p.pane_id: p for p in Tmux(tmux_server.socket).list_panes()}
    assert panes[person.pane_id].pane_pid == person.pane_pid
    assert panes[first.pane_id].pane_pid != first.pane_pid


# -- pre-sync against real git ---------------------------------------------------


def git(cwd: pathlib.Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30
    )
    return proc.stdout.strip()


@pytest.fixture
def git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.invalid")


@needs_tmux
@pytest.mark.usefixtures("git_identity")
def test_presync_pulls_new_commits_before_the_restart(
    tmux_server: TmuxServer,
    fake_agent: FakeAgent,
    town: pathlib.Path,
    tmp_path: pathlib.Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    """Cycling the refinery fetches and rebases onto origin/main; no ``bd`` is only a warning."""
    assert shutil.which("bd") is None, "this test expects no bd binary on PATH"
    remote, seed = tmp_path / "remote.git", tmp_path / "seed"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(tmp_path, "clone", "-q", str(remote), str(seed))
    (seed / "README").write_text("one\n")
    git(seed, "add", "README")
    git(seed, "commit", "-q", "-m", "one")
    git(seed, "push", "-q", "origin", "HEAD:main")
    ident = parse_identity("gastown-refinery")
    workdir = ident.workdir(town)
    workdir.parent.mkdir(parents=True)
    git(tmp_path, "clone", "-q", str(remote), str(workdir))
    (seed / "README").write_text("two\n")
    git(seed, "commit", "-q", "-am", "two")
    git(seed, "push", "-q", "origin", "HEAD:main")
    new_head = git(seed, "rev-parse", "HEAD")
    assert new_head != git(workdir, "rev-parse", "HEAD")

    config = make_config(town, fake_agent, tmux_server.socket)
    set_flag(town, "gastown-refinery", "cycle")
    enqueue(town, "gastown-refinery", "cycle", sender="test")
    run(None, config)

    assert new_head == git(workdir, "rev-parse", "HEAD")
    assert "two\n" == (workdir / "README").read_text()
    assert retry_until(lambda: starts(fake_agent) == 1, 5)
    warnings = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert any("bd sync" in w for w in warnings), warnings
    assert not any("git" in w for w in warnings), warnings


@needs_tmux
@pytest.mark.usefixtures("git_identity")
def test_a_hung_presync_step_is_killed_and_the_restart_goes_on(
    tmux_server: TmuxServer,
    fake_agent: FakeAgent,
    town: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
) -> None:
    """A fetch from a remote that never answers is killed at PRESYNC_TIMEOUT; the agent starts."""
    monkeypatch.setattr(actions, "PRESYNC_TIMEOUT", 1.0)
    ident = parse_identity("gastown-crew-max")
    workdir = ident.workdir(town)
    workdir.mkdir(parents=True)
    git(workdir, "init", "-q", "-b", "main")
    git(workdir, "config", "protocol.ext.allow", "always")
    git(workdir, "remote", "add", "origin", "ext::sleep 600")  # a remote that hangs
    config = make_config(town, fake_agent, tmux_server.socket)
    set_flag(town, "gastown-crew-max", "restart")
    enqueue(town, "gastown-crew-max", "restart", sender="test")
    ticks: list[float] = []
    begun = time.monotonic()
    run(None, config, lambda: ticks.append(time.monotonic()))
    assert time.monotonic() - begun < 15
    assert retry_until(lambda: starts(fake_agent) == 1, 5)
    timeouts = [r for r in logs.records if "no answer within 1s" in r.getMessage()]
    assert ["git fetch origin", "git pull --rebase origin main"] == [
        field(r, "GTD_STEP") for r in timeouts
    ]
    assert len(ticks) >= 4  # between the requests and the pre-sync steps
    assert [] == failed(town)


# -- never lost, never twice -----------------------------------------------------


@needs_tmux
def test_a_thousand_requests_each_run_exactly_once(
    town: pathlib.Path, logs: pytest.LogCaptureFixture
) -> None:
    """1,000 shutdowns survive a crash every 150 ticks; each finishes once, in FIFO order.

    The agents have no sessions, so each shutdown is a no-op success (as for a restart
    of a dead agent, there is nothing left to stop) that still clears its flag.
    """
    logs.set_level(logging.INFO, logger="gtd")
    config = make_config(town)
    identities = [f"r-crew-n{i}" for i in range(1000)]
    for ident in identities:
        set_flag(town, ident, "shutdown")
    ids = [enqueue(town, ident, "shutdown", sender="t") for ident in identities]
    lc, calls, crashes = processor(config), [0], 0

    def tick() -> None:
        calls[0] += 1
        if calls[0] % 150 == 0:
            raise KeyboardInterrupt

    while pending(town):
        try:
            run(lc, config, tick)
        except KeyboardInterrupt:
            crashes += 1
    assert crashes >= 6
    assert ids == outcomes(logs, "done")
    assert ([], []) == (outcomes(logs, "failed"), failed(town))
    for ident in identities:
        state = json.loads(parse_identity(ident).state_file(town).read_text())
        assert {} == state


class Crash(t.NamedTuple):
    test_id: str
    patch: tuple[object, str]
    after: bool
    starts: tuple[int, int]
    """Agent starts after the crashed pass and after the next one."""


ACT, CLEAR = (AgentActor, "act"), (actions, "clear_flag")
CRASHES = [
    Crash("before-action", ACT, after=False, starts=(0, 1)),
    Crash("after-action", ACT, after=True, starts=(1, 2)),  # acted again: allowed
    Crash("after-executed-marker", CLEAR, after=False, starts=(1, 1)),
    Crash("after-clearing-the-flag", CLEAR, after=True, starts=(1, 1)),
]


@needs_tmux
@pytest.mark.parametrize("crash", CRASHES, ids=[c.test_id for c in CRASHES])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_a_crash_at_any_step_is_finished_by_the_next_pass(
    crash: Crash,
    exc: type[BaseException],
    tmux_server: TmuxServer,
    fake_agent: FakeAgent,
    town: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
) -> None:
    """Killed mid-request, the request stays in cur/; the next pass finishes it once."""
    config = make_config(town, fake_agent, tmux_server.socket)
    ident = parse_identity("gastown-witness")
    ident.workdir(town).mkdir(parents=True)
    set_flag(town, "gastown-witness", "restart", mood="ok")
    rid = enqueue(town, "gastown-witness", "restart", sender="test")
    owner, name = crash.patch
    real = getattr(owner, name)

    def crashing(*args: t.Any) -> t.Any:
        if crash.after:
            real(*args)
        raise exc

    monkeypatch.setattr(owner, name, crashing)
    with pytest.raises(exc):
        run(None, config)
    assert [f"{rid}.json"] == names(town, "cur")
    assert retry_until(lambda: starts(fake_agent) == crash.starts[0], 5)
    monkeypatch.setattr(owner, name, real)
    run(None, config)
    assert ([], []) == (pending(town), failed(town))
    assert [rid] == outcomes(logs, "done")
    assert {"mood": "ok"} == json.loads(ident.state_file(town).read_text())
    assert retry_until(lambda: starts(fake_agent) == crash.starts[1], 5)


def leave_in_cur(town: pathlib.Path, identity: str, action: str, **extra: t.Any) -> str:
    """A request as a crash leaves it: claimed into cur/, maybe attempted or executed."""
    rid = enqueue(town, identity, action, sender="test")
    root = spool_dir(town)
    rec = json.loads((root / "new" / f"{rid}.json").read_text()) | extra
    (root / "cur" / f"{rid}.json").write_text(json.dumps(rec))
    (root / "new" / f"{rid}.json").unlink()
    return rid


@needs_tmux
@pytest.mark.parametrize("executed", [False, True])
def test_leftovers_in_cur_go_first_and_finish_once(
    executed: bool,
    tmux_server: TmuxServer,
    fake_agent: FakeAgent,
    town: pathlib.Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    """cur/ is finished before new/; an executed request is not acted on again."""
    config = make_config(town, fake_agent, tmux_server.socket)
    ident = parse_identity("gastown-witness")
    ident.workdir(town).mkdir(parents=True)
    set_flag(town, "gastown-witness", "cycle", mood="ok")
    left = leave_in_cur(town, "gastown-witness", "cycle", attempts=1, executed=executed)
    later = enqueue(town, "mayor", "shutdown", sender="test")
    set_flag(town, "mayor", "shutdown")
    run(None, config)
    assert [left, later] == outcomes(logs, "done")
    assert {"mood": "ok"} == json.loads(ident.state_file(town).read_text())
    if executed:
        assert agents.agent_pane(Tmux(tmux_server.socket).list_panes(), ident) is None
    else:
        assert retry_until(lambda: starts(fake_agent) == 1, 5)


def test_a_request_that_kept_crashing_is_given_up(
    town: pathlib.Path, logs: pytest.LogCaptureFixture
) -> None:
    """Three attempts that never finished (kill -9 mid-action) move it to failed/."""
    rid = leave_in_cur(town, "gastown-witness", "cycle", attempts=3)
    run(None, make_config(town))
    [record] = failed(town)
    assert (rid, 3) == (record["id"], record["attempts"])
    assert "gave up after 3 attempts: interrupted" == record["reason"]
    assert [rid] == outcomes(logs, "failed")


@needs_tmux
def test_transient_failures_are_retried_then_failed(
    town: pathlib.Path, fake_agent: FakeAgent, logs: pytest.LogCaptureFixture
) -> None:
    """A restart on a gone tmux server is retried MAX_ATTEMPTS times; others still finish."""
    config = make_config(town, fake_agent)  # a socket with no server behind it
    ident = parse_identity("gastown-witness")
    ident.workdir(town).mkdir(parents=True)
    set_flag(town, "gastown-witness", "cycle")
    broken = enqueue(town, "gastown-witness", "cycle", sender="test")
    lc = processor(config)
    for n in range(1, lifecycle.MAX_ATTEMPTS + 1):
        set_flag(town, "mayor", "shutdown")
        fine = enqueue(town, "mayor", "shutdown", sender="test")
        run(lc, config)
        assert fine in outcomes(logs, "done")
        assert ([broken] if n < lifecycle.MAX_ATTEMPTS else []) == pending(town)
    assert [broken] * (lifecycle.MAX_ATTEMPTS - 1) == outcomes(logs, "retry")
    [record] = failed(town)
    assert (broken, lifecycle.MAX_ATTEMPTS) == (record["id"], record["attempts"])
    assert record["reason"].startswith("gave up after 3 attempts: new-session: ")
    assert json.loads(ident.state_file(town).read_text())["requesting_cycle"] is True


@needs_tmux
def test_process_is_not_reentrant(town: pathlib.Path, logs: pytest.LogCaptureFixture) -> None:
    """A process() called from tick (say, a signal handler) returns at once: nothing twice."""
    config = make_config(town)
    lc = processor(config)
    for name in ("mayor", "deacon"):
        set_flag(town, name, "shutdown")
        enqueue(town, name, "shutdown", sender="t")
    run(lc, config, lambda: run(lc, config))
    assert 2 == len(set(outcomes(logs, "done"))) == len(outcomes(logs, "done"))


# -- bad input ---------------------------------------------------------------------


class BadCase(t.NamedTuple):
    test_id: str
    content: bytes | None
    reason: str
    state: bytes | None = b'{"requesting_cycle": true}'
    name: str | None = None
    agent: str = "gastown-witness"


def req(**change: t.Any) -> bytes:
    rec = {"id": "@RID@", "identity": "gastown-witness", "action": "cycle",
           "created_at": "2025-01-01T00:00:00+00:00", "from": "test"} | change  # fmt: skip
    return json.dumps({k: v for k, v in rec.items() if v is not None}).encode()


BAD_CASES = [
    BadCase("malformed-json", b'{"id": ', "not JSON"),
    BadCase("json-array", b"[1, 2]", "not a JSON object but list"),
    BadCase("deeply-nested", b"[" * 60000, "nested too deeply"),
    BadCase("non-utf8", b'{"identity": "\xff\xfe"}', "not UTF-8"),
    BadCase("too-big", b" " * 70000 + b"{}", "larger than 65536 bytes"),
    BadCase("unknown-action", req(action="explode"), "unknown action 'explode'"),
    BadCase("action-not-string", req(action=["cycle"]), "field 'action' must be a string (list)"),
    BadCase("missing-identity", req(identity=None), "field 'identity' must be a string"),
    BadCase("dotdot", req(identity="../x"), "'..' is not allowed"),
    BadCase("shell", req(identity="a;rm -rf ~"), "metacharacter ';'"),
    BadCase("subst", req(identity="$(id)"), "metacharacter '$'"),
    BadCase("long", req(identity="a" * 10_000), "longer than 200 characters"),
    BadCase("id-mismatch", req(id="00000000000000000002-0a0b0c0d"), "does not match"),
    BadCase("bad-name", req(), "bad file name 'hello.json'", name="hello.json"),
    BadCase("shell-name", req(), "bad file name '$(id).json'", name="$(id).json"),
    BadCase("state-missing", req(), "state.json is missing", state=None),
    BadCase("state-not-json", req(), "not JSON", state=b"requesting_cycle=true"),
    BadCase("state-not-object", req(), "not a JSON object but list", state=b"[true]"),
    BadCase("state-truncated", req(), "not JSON", state=b'{"requesting_cycle": tr'),
    BadCase("state-binary", req(), "not UTF-8", state=b'{"requesting_cycle": true, "\xff": 1}'),
    BadCase(
        "state-huge",
        req(),
        "larger than 1048576 bytes",
        state=b'{"requesting_cycle": true, "x": "' + b"x" * (1 << 20) + b'"}',
    ),
    BadCase("flag-not-set", req(), "requesting_cycle is not true", state=b'{"x": 1}'),
    BadCase("flag-is-a-string", req(), "got 'true'", state=b'{"requesting_cycle": "true"}'),
    BadCase("no-workdir", req(identity="x/refinery"), "workdir of x-refinery", agent="x/refinery"),
    BadCase("directory", None, "not a regular file (directory)"),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.test_id for c in BAD_CASES])
@needs_tmux
def test_bad_requests_end_in_failed_with_a_reason(
    case: BadCase, town: pathlib.Path, logs: pytest.LogCaptureFixture
) -> None:
    """Each bad request lands in failed/ with a reason naming the problem; no traceback."""
    new = spool_dir(town) / "new"
    new.mkdir(parents=True)
    rid = new_id()
    path = new / (case.name or f"{rid}.json")
    if case.content is None:
        path.mkdir()
        (path / "x").write_text("x")
    else:
        path.write_bytes(case.content.replace(b"@RID@", rid.encode()))
    if case.state is not None:
        state = parse_identity(case.agent).state_file(town)
        state.parent.mkdir(parents=True)
        state.write_bytes(case.state)
    (town / "gastown").mkdir(exist_ok=True)  # the witness's workdir
    run(None, make_config(town))
    [record] = failed(town)
    assert case.reason in record["reason"]
    assert ([], []) == (names(town, "new"), names(town, "cur"))
    failures = [r for r in logs.records if field(r, "GTD_OUTCOME") == "failed"]
    assert [record["id"]] == [field(r, "GTD_REQUEST_ID") for r in failures]
    assert logging.ERROR == failures[0].levelno
    assert case.reason in failures[0].getMessage()
    assert all(r.exc_info is None for r in logs.records)
    if case.name is None:
        assert rid == record["id"]
    if case.state is not None:  # a bad agent state file is never rewritten
        assert case.state == parse_identity(case.agent).state_file(town).read_bytes()


@pytest.mark.parametrize("sub", ["new", "cur"])
def test_a_symlink_in_the_spool_is_never_followed(
    sub: str, town: pathlib.Path, tmp_path: pathlib.Path, logs: pytest.LogCaptureFixture
) -> None:
    """A link in new/ or cur/ to a file outside the town is dropped unread; the target stays."""
    rid = new_id()
    target = tmp_path / "outside.json"
    target.write_text(req(id=rid).decode())
    before = target.stat()
    spool = spool_dir(town)
    spool.mkdir(parents=True)
    for name in spools.SUBDIRS:
        (spool / name).mkdir(mode=0o700)
    (spool / sub / f"{rid}.json").symlink_to(target)
    run(None, make_config(town))
    [record] = failed(town)
    assert (rid, "not a regular file (symlink); left unread") == (record["id"], record["reason"])
    assert "raw" not in record
    after = target.stat()
    assert (before.st_ino, before.st_mtime_ns, before.st_size) == (
        after.st_ino, after.st_mtime_ns, after.st_size
    )  # fmt: skip
    assert req(id=rid).decode() == target.read_text()
    assert not any(p.is_symlink() for p in spool_dir(town).rglob("*"))


def test_dotfiles_and_temp_files_are_not_requests(town: pathlib.Path) -> None:
    """Hidden and ``.tmp`` names in new/ are left alone; a crash's temp files in cur/ go."""
    root = spool_dir(town)
    (root / "new").mkdir(parents=True)
    (root / "cur").mkdir()
    (root / "new" / ".hidden.json").write_text("{}")
    (root / "new" / "half.json.tmp").write_text("{")
    (root / "cur" / ".x.json.abc.tmp").write_text("{")
    run(None, make_config(town))
    assert [".hidden.json", "half.json.tmp"] == names(town, "new")
    assert ([], []) == (names(town, "cur"), names(town, "failed"))


@needs_tmux
def test_failed_requests_keep_their_fields(town: pathlib.Path) -> None:
    """failed/ keeps the original fields plus reason, failed_at and attempts."""
    rid = enqueue(town, "gastown-witness", "cycle", sender="max")
    run(None, make_config(town))
    [record] = failed(town)
    assert {"id", "identity", "action", "created_at", "from", "attempts", "reason",
            "failed_at"} == record.keys()  # fmt: skip
    assert (rid, "max", 1) == (record["id"], record["from"], record["attempts"])


def test_a_fifo_in_the_spool_is_never_opened(
    town: pathlib.Path, logs: pytest.LogCaptureFixture
) -> None:
    """FIFOs in new/ and cur/ fail unread (opening one would block); a good request still runs."""
    spool = spool_dir(town)
    for name in spools.SUBDIRS:
        (spool / name).mkdir(mode=0o700, parents=True)
    fifos = {sub: new_id() for sub in ("new", "cur")}
    for sub, rid in fifos.items():
        os.mkfifo(spool / sub / f"{rid}.json", 0o600)
    set_flag(town, "mayor", "shutdown")
    good = enqueue(town, "mayor", "shutdown", sender="test")
    finished = in_thread(lambda: run(None, make_config(town)), spool, fifos.values())
    assert finished, "the pass blocked on a FIFO"
    assert [good] == outcomes(logs, "done")
    reasons = {r["id"]: r["reason"] for r in failed(town)}
    assert dict.fromkeys(fifos.values(), "not a regular file (FIFO); left unread") == reasons
    assert ([], []) == (names(town, "new"), names(town, "cur"))


def in_thread(
    work: t.Callable[[], None], spool: pathlib.Path, fifo_ids: t.Iterable[str], timeout: float = 10
) -> bool:
    """Run *work* in a thread; whether it ended in time. A reader blocked on a FIFO is freed."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if not thread.is_alive():
        return True
    for path in spool.rglob("*"):  # an open() waiting for a writer returns (at EOF) once one opens
        if path.stem in fifo_ids or stat.S_ISFIFO(path.lstat().st_mode):
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    thread.join(timeout)
    return False


class StateLink(t.NamedTuple):
    test_id: str
    make: t.Callable[[pathlib.Path, pathlib.Path], None]
    reason: str


STATE_LINKS = [
    StateLink("symlink-outside", lambda state, out: state.symlink_to(out), "cannot open"),
    StateLink("fifo", lambda state, out: os.mkfifo(state, 0o600), "not a regular file"),
]


@pytest.mark.parametrize("case", STATE_LINKS, ids=[c.test_id for c in STATE_LINKS])
def test_an_agent_state_file_that_is_no_file_is_refused(
    case: StateLink, town: pathlib.Path, tmp_path: pathlib.Path, logs: pytest.LogCaptureFixture
) -> None:
    """A state file that is a symlink out of the town or a FIFO fails the request, unread."""
    outside = tmp_path / "outside.json"
    outside.write_text('{"requesting_shutdown": true}')
    before = outside.stat()
    state = parse_identity("mayor").state_file(town)
    state.parent.mkdir(parents=True)
    case.make(state, outside)
    rid = enqueue(town, "mayor", "shutdown", sender="test")
    spool = spool_dir(town)
    assert in_thread(lambda: run(None, make_config(town)), spool, []), "blocked"
    [record] = failed(town)
    assert rid == record["id"]
    assert record["reason"].startswith(f"agent state file {state}: {case.reason}")
    assert [rid] == outcomes(logs, "failed")
    after = outside.stat()
    assert (before.st_mtime_ns, before.st_size) == (after.st_mtime_ns, after.st_size)
    assert '{"requesting_shutdown": true}' == outside.read_text()
    assert stat.S_IFMT(state.lstat().st_mode) in (stat.S_IFLNK, stat.S_IFIFO)  # left as it was


# -- trust -------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
NOBODY = 65534


def spool_with_request(town: pathlib.Path) -> tuple[str, pathlib.Path]:
    """A good, flagged shutdown for the mayor, queued in new/."""
    state = set_flag(town, "mayor", "shutdown")
    return enqueue(town, "mayor", "shutdown", sender="test"), state


class Distrust(t.NamedTuple):
    test_id: str
    spoil: t.Callable[[pathlib.Path], None]
    problem: str


def give_away(path: pathlib.Path) -> None:
    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)


DISTRUST = [
    pytest.param(
        Distrust("other-owner", give_away, f"owned by uid {NOBODY}, not by the daemon's uid 0"),
        marks=needs_root,
    ),
    Distrust("world-writable", lambda p: p.chmod(0o777), "writable by group or others (mode 0777)"),
    Distrust("group-writable", lambda p: p.chmod(0o770), "writable by group or others (mode 0770)"),
]
DISTRUST_IDS = ["other-owner", "world-writable", "group-writable"]


@pytest.mark.parametrize("case", DISTRUST, ids=DISTRUST_IDS)
@pytest.mark.parametrize("sub", ["", "new", "cur", "tmp", "failed"])
def test_an_untrusted_spool_is_left_alone(
    case: Distrust, sub: str, town: pathlib.Path, logs: pytest.LogCaptureFixture
) -> None:
    """A spool dir someone else owns or can write is an error naming it, and is left alone.

    Nothing is acted on, moved or repaired, and nothing can be queued; once a person
    fixes the directory, the next pass carries the request out.
    """
    rid, state = spool_with_request(town)
    directory = spool_dir(town) / sub
    before = directory.stat()
    case.spoil(directory)
    spoiled = directory.stat()
    run(None, make_config(town))
    errors = [r.getMessage() for r in logs.records if r.levelno == logging.ERROR]
    expected = f"{directory} is {case.problem}; the spool is not trusted, requests stay untouched"
    assert [f"lifecycle spool unusable: {expected}"] == errors
    assert ([f"{rid}.json"], []) == (names(town, "new"), names(town, "cur"))
    assert json.loads(state.read_text())["requesting_shutdown"] is True
    after = directory.stat()
    assert (spoiled.st_uid, spoiled.st_mode) == (after.st_uid, after.st_mode)
    with pytest.raises(GtdError, match="the spool is not trusted"):
        enqueue(town, "mayor", "shutdown", sender="test")
    os.chown(directory, before.st_uid, before.st_gid)
    directory.chmod(stat.S_IMODE(before.st_mode))
    run(None, make_config(town))
    assert [rid] == outcomes(logs, "done")


def hard_link(path: pathlib.Path) -> None:
    outside = path.parents[4] / "outside.json"  # <tmp>/town/daemon/lifecycle/<sub>/<file>
    os.link(path, outside)


UNTRUSTED_FILES = [
    *DISTRUST[:1],
    Distrust("world-writable", lambda p: p.chmod(0o666), "writable by group or others (mode 0666)"),
    Distrust("group-writable", lambda p: p.chmod(0o620), "writable by group or others (mode 0620)"),
    Distrust("hard-link", hard_link, "a hard link (2 names)"),
]


@pytest.mark.parametrize("case", UNTRUSTED_FILES, ids=[*DISTRUST_IDS, "hard-link"])
@pytest.mark.parametrize("sub", ["new", "cur"])
def test_an_untrusted_request_file_fails_unread(
    case: Distrust, sub: str, town: pathlib.Path, logs: pytest.LogCaptureFixture
) -> None:
    """A request someone else owns or can write (or a hard link) goes to failed/ unread."""
    rid, _ = spool_with_request(town)
    spool = spool_dir(town)
    path = spool / sub / f"{rid}.json"
    if sub == "cur":
        os.rename(spool / "new" / f"{rid}.json", path)
    case.spoil(path)
    later, _ = spool_with_request(town)  # a good one behind it still runs (same agent, fine)
    run(None, make_config(town))
    [record] = failed(town)
    assert (rid, f"not trusted: {case.problem}; left unread") == (record["id"], record["reason"])
    assert "raw" not in record
    assert [rid] == outcomes(logs, "failed")
    assert [later] == outcomes(logs, "done")
    assert ([], []) == (names(town, "new"), names(town, "cur"))
    outside = town.parent / "outside.json"
    if outside.exists():  # the hard link's other name is untouched
        assert rid == json.loads(outside.read_text())["id"]


# -- a full disk -------------------------------------------------------------------


def no_space(path: pathlib.Path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize("full", ["agent-state-file", "everything"])
def test_a_full_disk_keeps_the_request_without_spending_attempts(
    full: str, town: pathlib.Path, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    """ENOSPC is waited out, never counted as an attempt: the request stays queued.

    Past MAX_ATTEMPTS passes it is still in cur/ and the agent's state file keeps its
    old content; once space returns, the request finishes.
    """
    state = set_flag(town, "mayor", "shutdown", mood="ok")
    old = state.read_bytes()
    rid = enqueue(town, "mayor", "shutdown", sender="test")
    real = store.atomic_write

    def full_disk(
        path: pathlib.Path, data: bytes, *, mode: int = 0o644, sync_dir: bool = True
    ) -> None:
        if full == "everything" or path == state:
            raise no_space(path)
        real(path, data, mode=mode, sync_dir=sync_dir)

    monkeypatch.setattr(store, "atomic_write", full_disk)
    config = make_config(town)
    lc = processor(config)
    for _ in range(lifecycle.MAX_ATTEMPTS + 2):
        run(lc, config)
    assert ([rid], []) == (pending(town), failed(town))
    assert old == state.read_bytes()
    rec = json.loads((spool_dir(town) / "cur" / f"{rid}.json").read_text())
    assert (0, full != "everything") == (rec.get("attempts", 0), rec.get("executed", False))
    assert (lifecycle.MAX_ATTEMPTS + 2) * [rid] == outcomes(logs, "retry")
    assert all("No space left on device" in r.getMessage() for r in logs.records if
               field(r, "GTD_OUTCOME") == "retry")  # fmt: skip
    monkeypatch.setattr(store, "atomic_write", real)
    run(lc, config)
    assert [rid] == outcomes(logs, "done")
    assert {"mood": "ok"} == json.loads(state.read_text())
    assert ([], []) == (pending(town), failed(town))


def test_enqueue_on_a_full_disk_leaves_nothing(
    town: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that cannot be written is not queued and leaves no temp file.

    The error names the spool, so ``gtd request`` can say where the disk is full.
    """
    enqueue(town, "mayor", "stop", sender="test")
    [queued] = pending(town)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as exc:
        enqueue(town, "mayor", "stop", sender="test")
    assert str(spool_dir(town)) == exc.value.filename
    assert ([], [queued]) == (names(town, "tmp"), pending(town))


def test_the_spool_does_not_grow_without_bound(
    town: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """failed/ keeps only the newest KEEP_FAILED entries; stale temp files go, fresh ones stay."""
    monkeypatch.setattr(spools, "KEEP_FAILED", 3)
    config = make_config(town)
    run(None, config)  # creates the spool
    spool = spool_dir(town)
    now = time.time()
    for i in range(6):
        path = spool / "failed" / f"{i:020d}-0000000{i}.json"
        path.write_text('{"reason": "x"}')
        os.utime(path, (now - 100 + i, now - 100 + i))
    (spool / "failed" / "old.entry").mkdir()
    os.utime(spool / "failed" / "old.entry", (now - 1000, now - 1000))
    stale, fresh = spool / "tmp" / ".stale.tmp", spool / "tmp" / ".fresh.tmp"
    stale.write_text("{")
    fresh.write_text("{")
    os.utime(stale, (now - 2 * spools.STALE_TMP, now - 2 * spools.STALE_TMP))
    run(None, config)
    assert [f"{i:020d}-0000000{i}.json" for i in (3, 4, 5)] == names(town, "failed")
    assert [".fresh.tmp"] == names(town, "tmp")
