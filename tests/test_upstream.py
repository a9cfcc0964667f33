"""Upstream's own Go tests (gastown 9afd6c557, ``internal/*/*_test.go``), ported to gtd.

Each test names the Go test it ports. Cases that assert an upstream-only mechanism
(PID file, log file, tmux themes) are not ported; docs/upstream-tests.md lists every
Go test and where it went, or why not.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import secrets
import socket
import sys
import typing as t

import pytest

from gtd import lifecycle, mail, store
from gtd.config import load_config
from gtd.exc import IdentityError, NoServer, StateError, TmuxError
from gtd.identities import MAYOR, identity_from_session, parse_identity
from gtd.request import Action, parse_action
from gtd.spool import Spool, spool_dir
from gtd.tmux import Tmux
from tests.conftest import HAVE_TMUX, TmuxServer
from tests.sandbox import retry_until

needs_tmux = pytest.mark.skipif(not HAVE_TMUX, reason="tmux is not installed")
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def beads_message(subject: str, body: str = "", sender: str = "test-sender") -> dict[str, t.Any]:
    """A ``gt mail inbox --json`` message, as upstream's ``BeadsMessage``."""
    return {"id": "msg-1", "from": sender, "to": "deacon/", "subject": subject, "body": body,
            "read": False, "priority": "normal", "type": "message"}  # fmt: skip


def parse_lifecycle_request(subject: str, body: str = "", sender: str = "test-sender") -> t.Any:
    """The counterpart of ``parseLifecycleRequest``: the spool record of a mail, or None.

    A sender that is no identity gives a record with a ``problem`` (it then fails
    visibly, as upstream's execution fails), the action still read from the body.
    """
    got = mail.mail_request(beads_message(subject, body, sender), store.now_iso())
    return None if got is None else got.record()


# -- internal/daemon/lifecycle_test.go -------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "body"),
    [("LIFECYCLE: requesting action", '{"action": "cycle"}'),
     ("LIFECYCLE: requesting action", "cycle"),
     ("lifecycle: action request", "action: cycle")],
)  # fmt: skip
def test_parse_lifecycle_request_cycle(subject: str, body: str) -> None:
    """Ports TestParseLifecycleRequest_Cycle: JSON and plain-text bodies ask for a cycle."""
    rec = parse_lifecycle_request(subject, body)
    assert rec is not None
    assert "cycle" == rec["action"]
    assert "unparseable" not in rec.get("problem", "")  # the body was understood


@pytest.mark.parametrize(
    ("subject", "body", "expected"),
    [("LIFECYCLE: action", '{"action": "restart"}', "restart"),
     ("LIFECYCLE: action", '{"action": "shutdown"}', "shutdown"),
     ("lifecycle: action", "stop", "shutdown"),
     ("LIFECYCLE: action", "restart", "restart")],
)  # fmt: skip
def test_parse_lifecycle_request_restart_and_shutdown(
    subject: str, body: str, expected: str
) -> None:
    """Ports TestParseLifecycleRequest_RestartAndShutdown: restart, shutdown, stop = shutdown."""
    rec = parse_lifecycle_request(subject, body)
    assert rec is not None
    assert expected == rec["action"]


@pytest.mark.parametrize(
    "subject",
    ["Regular message", "HEARTBEAT: check rigs", "lifecycle without colon",
     "Something else: requesting cycle", ""],
)  # fmt: skip
def test_parse_lifecycle_request_not_lifecycle(subject: str) -> None:
    """Ports TestParseLifecycleRequest_NotLifecycle: only LIFECYCLE: subjects are requests."""
    assert parse_lifecycle_request(subject) is None


@pytest.mark.parametrize(
    ("body", "sender"),
    [('{"action": "cycle"}', "mayor"), ("restart", "gastown-witness"),
     ("shutdown", "my-rig-refinery")],
)  # fmt: skip
def test_parse_lifecycle_request_uses_from_field(body: str, sender: str) -> None:
    """Ports TestParseLifecycleRequest_UsesFromField: the request is for the mail's sender.

    gtd also reads each sender as an identity (a rig name with dashes included).
    """
    rec = parse_lifecycle_request("LIFECYCLE: action", body, sender)
    assert rec is not None
    assert (sender, sender) == (rec["from"], rec["identity"])
    assert sender == parse_identity(rec["identity"]).dash


def test_parse_lifecycle_request_always_uses_from_field() -> None:
    """Ports TestParseLifecycleRequest_AlwaysUsesFromField: From comes from the message.

    A sender that is no identity still gives a record, which then fails visibly.
    """
    rec = parse_lifecycle_request("LIFECYCLE: action", "cycle", "the-sender")
    assert rec is not None
    assert ("the-sender", "the-sender") == (rec["from"], rec["identity"])
    with pytest.raises(IdentityError, match="unknown shape"):
        parse_identity(rec["identity"])


def test_identity_to_session_mayor() -> None:
    """Ports TestIdentityToSession_Mayor: the mayor's session is gt-mayor."""
    assert "gt-mayor" == parse_identity("mayor").session


@pytest.mark.parametrize(
    ("identity", "expected"),
    [("gastown-witness", "gt-gastown-witness"), ("myrig-witness", "gt-myrig-witness"),
     ("my-rig-name-witness", "gt-my-rig-name-witness")],
)  # fmt: skip
def test_identity_to_session_witness(identity: str, expected: str) -> None:
    """Ports TestIdentityToSession_Witness: <rig>-witness lives in gt-<rig>-witness."""
    assert expected == parse_identity(identity).session
    assert parse_identity(identity) == identity_from_session(expected)


@pytest.mark.parametrize("identity", ["unknown", "polecat", "refinery", "gastown", ""])
def test_identity_to_session_unknown(identity: str) -> None:
    """Ports TestIdentityToSession_Unknown: no session for what is not an identity.

    Upstream returns ""; gtd refuses the text with an IdentityError.
    """
    with pytest.raises(IdentityError):
        parse_identity(identity)
    assert identity_from_session("gt-" + identity) is None


def test_beads_message_serialization() -> None:
    """Ports TestBeadsMessage_Serialization: every field of an inbox message is kept."""
    msg = {"id": "msg-123", "subject": "Test Message", "body": "A test message body",
           "from": "test-sender", "to": "test-recipient", "priority": "high",
           "type": "message"}  # fmt: skip
    assert [msg] == mail.parse_inbox(json.dumps([msg]))
    assert mail.mail_request(msg, store.now_iso()) is None  # not a lifecycle subject


# -- internal/daemon/daemon_test.go ----------------------------------------------------


def test_default_config(tmp_path: pathlib.Path) -> None:
    """Ports TestDefaultConfig: a 5-minute heartbeat and the given town root.

    Upstream's LogFile and PidFile are not ported: gtd has neither (SPEC).
    """
    config = load_config("", source=None, env={"GT_TOWN_ROOT": "/tmp/test-town"}, home=tmp_path)
    assert 300.0 == config.heartbeat_interval
    assert pathlib.Path("/tmp/test-town") == config.town_root


def test_state_file() -> None:
    """Ports TestStateFile: the daemon's state is <town>/daemon/state.json."""
    town = pathlib.Path("/tmp/test-town")
    assert pathlib.Path("/tmp/test-town/daemon/state.json") == store.state_path(town)


def test_load_state_non_existent(tmp_path: pathlib.Path) -> None:
    """Ports TestLoadState_NonExistent: no file gives an empty state, not an error."""
    state = store.load_daemon_state(tmp_path)
    assert (False, 0) == (state.running, state.pid)


def go_state_json(started: datetime.datetime, **fields: t.Any) -> str:
    """State as Go's ``json.MarshalIndent(State)`` writes it (time.Time in RFC 3339)."""
    obj = {"running": True, "pid": 12345, "started_at": started.isoformat(),
           "last_heartbeat": started.isoformat(), "heartbeat_count": 42} | fields  # fmt: skip
    return json.dumps(obj, indent=2)


def test_load_state_existing_file(tmp_path: pathlib.Path) -> None:
    """Ports TestLoadState_ExistingFile: a state.json written by upstream is read."""
    (tmp_path / "daemon").mkdir()
    started = datetime.datetime.now(datetime.UTC).astimezone().replace(microsecond=0)
    store.state_path(tmp_path).write_text(go_state_json(started))
    state = store.load_daemon_state(tmp_path)
    assert (True, 12345, 42) == (state.running, state.pid, state.heartbeat_count)
    assert started == datetime.datetime.fromisoformat(state.started_at)


def test_load_state_invalid_json(tmp_path: pathlib.Path, logs: pytest.LogCaptureFixture) -> None:
    """Ports TestLoadState_InvalidJSON: a state.json that is not JSON is an error.

    The reader raises, naming the file; the daemon's lenient load warns and starts afresh.
    """
    (tmp_path / "daemon").mkdir()
    path = store.state_path(tmp_path)
    path.write_text("not json")
    with pytest.raises(StateError, match="not JSON") as info:
        store.read_json_object(path)
    assert str(path) in str(info.value)
    assert 0 == store.load_daemon_state(tmp_path).pid
    [warning] = [r for r in logs.records if r.levelno == logging.WARNING]
    assert str(path) in warning.getMessage()


def test_save_state_creates_daemon_dir(tmp_path: pathlib.Path) -> None:
    """Ports TestSaveState (first half): saving creates the daemon directory if needed."""
    store.save_daemon_state(tmp_path, store.DaemonState(running=True, pid=9999))
    assert store.state_path(tmp_path).is_file()


def test_save_state(tmp_path: pathlib.Path) -> None:
    """Ports TestSaveState: saved state is in the state file and loads back."""
    (tmp_path / "daemon").mkdir()
    now = store.now_iso()
    state = store.DaemonState(running=True, pid=9999, started_at=now, last_heartbeat=now)
    state.heartbeat_count = 100
    store.save_daemon_state(tmp_path, state)
    assert store.state_path(tmp_path).is_file()
    loaded = store.load_daemon_state(tmp_path)
    assert (9999, 100) == (loaded.pid, loaded.heartbeat_count)


def test_save_load_state_roundtrip(tmp_path: pathlib.Path) -> None:
    """Ports TestSaveLoadState_Roundtrip: running, pid, count and start time survive."""
    (tmp_path / "daemon").mkdir()
    started = datetime.datetime.now(datetime.UTC).astimezone().replace(microsecond=0)
    original = store.DaemonState(True, 54321, started.isoformat(), started.isoformat(), 1000)
    store.save_daemon_state(tmp_path, original)
    loaded = store.load_daemon_state(tmp_path)
    assert (True, 54321, 1000) == (loaded.running, loaded.pid, loaded.heartbeat_count)
    assert started == datetime.datetime.fromisoformat(loaded.started_at)
    assert json.loads(go_state_json(started, pid=54321, heartbeat_count=1000)) == {
        k: v for k, v in original.to_json().items() if k in ("running", "pid", "started_at",
        "last_heartbeat", "heartbeat_count")
    }  # fmt: skip


@pytest.mark.parametrize("action", ["cycle", "restart", "shutdown"])
def test_lifecycle_action_constants(action: str) -> None:
    """Ports TestLifecycleAction_Constants: the action words, and so the flags they name."""
    assert action == parse_action(action).value
    assert f"requesting_{action}" == parse_action(action).flag


def test_lifecycle_request_serialization(tmp_path: pathlib.Path) -> None:
    """Ports TestLifecycleRequest_Serialization: a queued request keeps from, action, time."""
    rid = lifecycle.submit(Spool(tmp_path), MAYOR, Action.CYCLE, sender="mayor").id
    rec = json.loads((spool_dir(tmp_path) / "new" / f"{rid}.json").read_text())
    assert ("mayor", "mayor", "cycle") == (rec["from"], rec["identity"], rec["action"])
    assert datetime.datetime.fromisoformat(rec["created_at"]).tzinfo is not None


# -- internal/tmux/tmux_test.go --------------------------------------------------------


def absent_socket() -> str:
    return f"gtd_test_absent_{secrets.token_hex(4)}"


@needs_tmux
def test_list_sessions_no_server() -> None:
    """Ports TestListSessionsNoServer: listing without a server is empty, not an error."""
    assert [] == Tmux(absent_socket()).list_panes()


@needs_tmux
def test_has_session_no_server() -> None:
    """Ports TestHasSessionNoServer: without a server no session exists, and none is started."""
    tmux = Tmux(absent_socket())
    assert not [p for p in tmux.list_panes() if p.session_name == "nonexistent-session-xyz"]
    assert tmux.server_running() is False


@pytest.mark.integration
def test_session_lifecycle(tmux_server: TmuxServer, tmp_path: pathlib.Path) -> None:
    """Ports TestSessionLifecycle: create a session, see it listed, kill it, see it gone."""
    tmux, name = Tmux(tmux_server.socket), "gt-test-session-TestSessionLifecycle"
    tmux.new_session(name, cwd=str(tmp_path), env={}, argv=SLEEPER)
    assert name in {p.session_name for p in tmux.list_panes()}
    tmux.kill_session(name)
    assert name not in {p.session_name for p in tmux.list_panes()}


@pytest.mark.integration
def test_session_lifecycle_kill_missing_on_empty_server(tmux_server: TmuxServer) -> None:
    """Ports TestSessionLifecycle (its first KillSession): killing a missing session is fine.

    On a server that has no session at all, as the first thing upstream's test does.
    """
    tmux = Tmux(tmux_server.socket)
    assert [] == tmux.list_panes()
    tmux.kill_session("gt-test-session-TestSessionLifecycle")
    tmux.kill_pane("%999")


@pytest.mark.integration
def test_duplicate_session(tmux_server: TmuxServer, tmp_path: pathlib.Path) -> None:
    """Ports TestDuplicateSession: creating a session twice is a 'duplicate session' error."""
    tmux, name = Tmux(tmux_server.socket), "gt-test-dup-TestDuplicateSession"
    tmux.new_session(name, cwd=str(tmp_path), env={}, argv=SLEEPER)
    with pytest.raises(TmuxError, match="duplicate session") as info:
        tmux.new_session(name, cwd=str(tmp_path), env={}, argv=SLEEPER)
    assert not isinstance(info.value, NoServer)
    assert "new-session" == info.value.subcommand


@pytest.mark.integration
def test_send_keys_and_capture(tmux_server: TmuxServer, tmp_path: pathlib.Path) -> None:
    """Ports TestSendKeysAndCapture: typed text and Enter reach the shell; capture shows it.

    Upstream only logs a miss; here the echo's output line is waited for and asserted.
    """
    tmux = Tmux(tmux_server.socket)
    pane = tmux.new_session(
        "gt-test-keys-TestSendKeysAndCapture", cwd=str(tmp_path), env={}, argv=["/bin/sh", "-i"]
    )
    tmux.send_literal(pane.pane_id, "echo HELLO_TEST_MARKER")
    tmux.send_key(pane.pane_id, "Enter")
    screens = [""]

    def marker_printed() -> bool:
        screens.append(tmux.run("capture-pane", "-p", "-t", pane.pane_id).stdout)
        return "HELLO_TEST_MARKER" in [line.strip() for line in screens[-1].splitlines()]

    assert retry_until(marker_printed, 10, raises=False), (
        f"waited for the line HELLO_TEST_MARKER; the pane showed {screens[-1]!r}"
    )
    assert "echo HELLO_TEST_MARKER" in screens[-1]


@pytest.mark.integration
def test_get_session_info(tmux_server: TmuxServer, tmp_path: pathlib.Path) -> None:
    """Ports TestGetSessionInfo: a session reports its own name and has a window (a pane)."""
    tmux, name = Tmux(tmux_server.socket), "gt-test-info-TestGetSessionInfo"
    created = tmux.new_session(name, cwd=str(tmp_path), env={}, argv=SLEEPER)
    info = tmux.pane(f"={name}:")
    assert (name, created.pane_id) == (info.session_name, info.pane_id)
    assert 1 <= len([p for p in tmux.list_panes() if p.session_name == name])


@needs_tmux
def test_wrap_error_no_server_running(tmp_path: pathlib.Path) -> None:
    """Ports TestWrapError ('no server running on ...'): a stale socket is NoServer."""
    socket_name = absent_socket()
    base = pathlib.Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.geteuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(base / socket_name))
    stale.close()  # the file stays, nobody listens: what a crashed server leaves
    try:
        with pytest.raises(NoServer, match="no server running"):
            Tmux(socket_name).run("list-sessions")
    finally:
        (base / socket_name).unlink()


@needs_tmux
def test_wrap_error_error_connecting() -> None:
    """Ports TestWrapError ('error connecting to ...'): a missing socket is NoServer."""
    with pytest.raises(NoServer, match="error connecting to"):
        Tmux(absent_socket()).run("list-sessions")


@pytest.mark.integration
def test_wrap_error_session_errors(tmux_server: TmuxServer, tmp_path: pathlib.Path) -> None:
    """Ports TestWrapError ('duplicate session', "can't find session"): errors, not NoServer.

    tmux 3.x says "can't find session"; upstream's older "session not found" is not
    produced by any tmux gtd supports.
    """
    tmux = Tmux(tmux_server.socket)
    tmux.new_session("test", cwd=str(tmp_path), env={}, argv=SLEEPER)
    for args, words in [
        (("new-session", "-d", "-s", "test"), "duplicate session: test"),
        (("has-session", "-t", "=missing"), "can't find session"),
    ]:
        with pytest.raises(TmuxError, match=words) as info:
            tmux.run(*args)
        assert not isinstance(info.value, NoServer)
