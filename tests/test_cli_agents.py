"""``gtd agent`` and ``gtd request`` against a real tmux server, as a person would type them."""

from __future__ import annotations

import json
import pathlib

import pytest

from gtd import cli
from gtd.identities import parse_identity
from tests.conftest import FakeAgent, TmuxServer, exec_view
from tests.sandbox import wait_equal, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def conf(tmp_path: pathlib.Path, tmux_server: TmuxServer, fake_agent: FakeAgent) -> pathlib.Path:
    path = tmp_path / "daemon.toml"
    path.write_text(
        f'town_root = "{tmp_path / "town"}"\n'
        f"[agent]\ncommand = {json.dumps(fake_agent.command())}\n"
        'alive_commands = ["node"]\n'
        f'[tmux]\nsocket = "{tmux_server.socket}"\n'
    )
    return path


def gtd(conf: pathlib.Path, *argv: str) -> int:
    return cli.main(["--config", str(conf), *argv])


def agent_list(conf: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert 0 == gtd(conf, "agent", "list")
    return capsys.readouterr().out


def test_agent_start_list_restart_stop(
    conf: pathlib.Path, tmux_server: TmuxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole agent life through the CLI, with the environment in the agent's own environ."""
    (conf.parent / "town" / "gastown" / "crew" / "max").mkdir(parents=True)
    assert 0 == gtd(conf, "agent", "start", "gastown/crew/max")
    out = capsys.readouterr().out
    assert out.startswith("gastown-crew-max: started in gt-gastown-crew-max pane %")
    pid = int(out.split()[-1])
    expected = ("node", ("gastown-crew-max", "gastown/crew/max", "gastown"))
    assert expected == wait_equal(
        expected, lambda: exec_view(pid, "GT_ROLE", "BD_ACTOR", "GT_RIG"), timeout=10
    )
    assert " alive\n" in wait_for(
        lambda: agent_list(conf, capsys), lambda out: " alive\n" in out, timeout=10
    )
    assert 0 == gtd(conf, "agent", "start", "gastown-crew-max")
    assert "gastown-crew-max: already running\n" == capsys.readouterr().out
    assert 0 == gtd(conf, "agent", "restart", "gastown-crew-max")
    new_pid = int(capsys.readouterr().out.split()[-1])
    assert new_pid != pid
    assert 0 == gtd(conf, "agent", "stop", "gastown-crew-max")
    assert "gastown-crew-max: stopped\n" == capsys.readouterr().out
    assert 0 == gtd(conf, "agent", "list")
    assert "no agents\n" == capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["agent", "start", "gastown-witness"], 1, "workdir of gastown-witness does not exist"),
        (["agent", "start", "../x"], 2, "invalid identity '../x'"),
        (["agent", "stop", "$(id)"], 2, "invalid identity '$(id)'"),
        (["request", "a;rm -rf ~", "cycle"], 2, "invalid identity"),
        (["request", "deacon", "explode"], 2, "explode"),
        (["request", "gastown/crew/max", "cycle", "--force"], 2, "workdir of gastown-crew-max"),
    ],
    ids=["missing-workdir", "dotdot", "subshell", "shell-meta", "unknown-action", "force-no-dir"],
)
def test_user_mistakes_are_clear_errors(
    conf: pathlib.Path,
    argv: list[str],
    code: int,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bad identities, actions and workdirs: one line on stderr, an exit code, nothing queued."""
    assert code == gtd(conf, *argv)
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    new = conf.parent / "town" / "daemon" / "lifecycle" / "new"
    assert not new.exists() or [] == list(new.iterdir())
    assert not (conf.parent / "town" / "gastown").exists()


def test_request_queues_prints_id_and_sets_flag_with_force(
    conf: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request prints the id of a complete spool file; --force sets the agent's flag."""
    monkeypatch.setenv("PATH", "/nonexistent")  # no systemctl: the wake-up fails, loudly
    monkeypatch.setenv("BD_ACTOR", "gastown/witness")
    (conf.parent / "town" / "gastown").mkdir(parents=True)
    assert 0 == gtd(conf, "request", "gastown/witness", "cycle", "--force")
    captured = capsys.readouterr()
    rid = captured.out.strip()
    assert "queued, but the daemon was not woken" in captured.err
    town = conf.parent / "town"
    request = json.loads((town / "daemon" / "lifecycle" / "new" / f"{rid}.json").read_text())
    assert (rid, "gastown-witness", "cycle", "gastown/witness") == (
        request["id"],
        request["identity"],
        request["action"],
        request["from"],
    )
    flags = json.loads((town / "gastown" / "witness" / "state.json").read_text())
    assert flags["requesting_cycle"] is True


@pytest.mark.parametrize(
    ("identity", "role", "actor", "rig", "refinery"),
    [
        ("mayor", "mayor", "mayor", None, None),
        ("deacon", "deacon", "deacon", None, None),
        ("gastown/witness", "gastown-witness", "gastown/witness", "gastown", None),
        ("gastown-refinery", "gastown-refinery", "gastown/refinery", "gastown", "1"),
        ("gastown/crew/max", "gastown-crew-max", "gastown/crew/max", "gastown", None),
    ],
    ids=["mayor", "deacon", "witness", "refinery", "crew"],
)
def test_agent_start_and_stop_every_kind(
    conf: pathlib.Path,
    identity: str,
    role: str,
    actor: str,
    rig: str | None,
    refinery: str | None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`gtd agent start` gives each kind SPEC's variables in its own environ; stop ends it."""
    monkeypatch.setenv("GT_ROLE", "leak")
    monkeypatch.setenv("GT_REFINERY", "1")
    parse_identity(identity).workdir(conf.parent / "town").mkdir(parents=True, exist_ok=True)
    assert 0 == gtd(conf, "agent", "start", identity)
    pid = int(capsys.readouterr().out.split()[-1])
    expected = ("node", (role, actor, rig, refinery))
    assert expected == wait_equal(
        expected,
        lambda: exec_view(pid, "GT_ROLE", "BD_ACTOR", "GT_RIG", "GT_REFINERY"),
        timeout=10,
    )
    assert 0 == gtd(conf, "agent", "stop", identity)
    assert f"{role}: stopped\n" == capsys.readouterr().out
