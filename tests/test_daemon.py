"""``gtd run`` as a real process: notify socket, real tmux, the fake agent, real signals."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import time
import typing as t

import pytest

from tests.conftest import FakeAgent, TmuxServer, exec_view, proc_environ
from tests.sandbox import retry_until, wait_equal

pytestmark = pytest.mark.integration


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        """Everything received so far."""
        with contextlib.suppress(TimeoutError):
            while True:
                self.messages.append(self.sock.recv(65536).decode())
        return self.messages

    def has(self, field: str) -> bool:
        """Whether any datagram carried *field* (e.g. ``READY=1``)."""
        return any(field in m.split("\n") for m in self.drain())

    def statuses(self) -> list[str]:
        """Every STATUS= value in order."""
        return [
            line[len("STATUS=") :]
            for m in self.drain()
            for line in m.split("\n")
            if line.startswith("STATUS=")
        ]


class Gtd:
    """A ``gtd run`` child process with its config, town and notify socket."""

    def __init__(
        self, tmp: pathlib.Path, server: TmuxServer, agent: FakeAgent, **overrides: str
    ) -> None:
        self.town = tmp / "town"
        self.config = tmp / "daemon.toml"
        self.agent = agent
        self.server = server
        self.notify = NotifySocket(tmp / "notify")
        self.write_config(**overrides)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = tmp / "gtd.stderr"

    def write_config(self, **overrides: str) -> None:
        values = {
            "town_root": json.dumps(str(self.town)),
            "heartbeat_interval": '"300s"',
            "command": json.dumps(self.agent.command()),
            "socket": json.dumps(self.server.socket),
        } | overrides
        self.config.write_text(
            f"town_root = {values['town_root']}\n"
            f"heartbeat_interval = {values['heartbeat_interval']}\n"
            f'[agent]\ncommand = {values["command"]}\nalive_commands = ["node"]\nui = "plain"\n'
            f"[tmux]\nsocket = {values['socket']}\n"
            '[lifecycle]\ngt_command = ""\n'
        )

    def start(self, **env: str) -> None:
        environ = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), **env)
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gtd", "--config", str(self.config), "run"],
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def state(self) -> dict[str, t.Any]:
        obj: dict[str, t.Any] = json.loads((self.town / "daemon" / "state.json").read_text())
        return obj

    def deacon_pid(self) -> int | None:
        out = self.server.cmd(
            "list-panes", "-t", "=gt-deacon", "-F", "#{pane_pid} #{pane_dead}", check=False
        ).stdout.split()
        if len(out) == 2 and out[1] == "0":
            return int(out[0])
        return None


@pytest.fixture
def gtd(tmp_path: pathlib.Path, tmux_server: TmuxServer, fake_agent: FakeAgent) -> t.Iterator[Gtd]:
    daemon = Gtd(tmp_path, tmux_server, fake_agent)
    yield daemon
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.proc.kill()
        daemon.proc.wait(5)


def test_ready_after_deacon_started_and_poked(gtd: Gtd) -> None:
    """READY=1 comes once the deacon runs; its environment is SPEC's; state.json is written."""
    gtd.start()
    assert retry_until(lambda: gtd.notify.has("READY=1"), 10), gtd.log()
    pid = gtd.deacon_pid()
    assert pid is not None
    wait_equal(("node", ("deacon", "deacon")), lambda: exec_view(pid, "GT_ROLE", "BD_ACTOR"))
    env = proc_environ(pid)
    assert (env.get("GT_ROLE"), env.get("BD_ACTOR")) == ("deacon", "deacon")
    assert pathlib.Path(f"/proc/{pid}/cwd").resolve() == (gtd.town / "deacon").resolve()
    assert retry_until(lambda: gtd.state()["heartbeat_count"] == 1, 10), gtd.log()
    state = gtd.state()
    assert state["running"] is True
    assert state["pid"] == gtd.proc.pid if gtd.proc else False
    assert any(s.startswith("deacon ") for s in gtd.notify.statuses())


def test_dead_deacon_is_back_by_an_event_not_the_heartbeat(gtd: Gtd) -> None:
    """Killing the agent wakes the loop through the pidfd; a new agent runs before any heartbeat.

    The heartbeat is 300 s away, so a restart while its count stays 1 came from the
    event. How fast (the target is 2 s) is measured in bench/, not asserted here.
    """
    gtd.start()
    assert retry_until(lambda: gtd.notify.has("READY=1"), 10), gtd.log()
    wait_equal(1, lambda: gtd.state()["heartbeat_count"], what="the first heartbeat")
    first = gtd.deacon_pid()
    assert first is not None
    # The guard counts an exit within startsecs as a quick failure; restart is immediate still.
    os.kill(first, signal.SIGKILL)
    assert retry_until(lambda: gtd.deacon_pid() not in (None, first), 10), gtd.log()
    assert 1 == gtd.state()["heartbeat_count"]


def test_sigterm_stops_and_leaves_the_agent(gtd: Gtd) -> None:
    """SIGTERM: STOPPING=1, state.json running=false, exit 0, the agent keeps running."""
    gtd.start()
    assert retry_until(lambda: gtd.notify.has("READY=1"), 10), gtd.log()
    pid = gtd.deacon_pid()
    assert gtd.stop() == 0
    assert gtd.notify.has("STOPPING=1")
    assert gtd.state()["running"] is False
    assert gtd.deacon_pid() == pid


def test_sighup_with_bad_config_keeps_running(gtd: Gtd) -> None:
    """A broken config on reload is refused, the daemon stays, STATUS says why."""
    gtd.start()
    assert retry_until(lambda: gtd.notify.has("READY=1"), 10), gtd.log()
    gtd.config.write_text("heartbeat_interval = 'soon'\n")
    gtd.signal(signal.SIGHUP)
    assert retry_until(lambda: any("reload failed" in s for s in gtd.notify.statuses()), 5), (
        gtd.log()
    )
    assert gtd.notify.has("RELOADING=1")
    assert "heartbeat_interval" in gtd.log()
    assert gtd.proc is not None
    assert gtd.proc.poll() is None


def test_invalid_config_exits_78(gtd: Gtd) -> None:
    """An invalid config at start exits 78 naming file and key; no READY."""
    gtd.config.write_text("[agent]\ncomand = 'x'\n")
    gtd.start()
    assert gtd.proc is not None
    assert gtd.proc.wait(10) == 78
    assert "agent.comand" in gtd.log()
    assert str(gtd.config) in gtd.log()
    assert not gtd.notify.has("READY=1")


def test_heartbeat_pokes_with_rotating_motd(gtd: Gtd) -> None:
    """Each heartbeat after the deacon's start types HEARTBEAT: <motd>, never twice the same."""
    gtd.write_config(heartbeat_interval="1")
    gtd.config.write_text(gtd.config.read_text() + '[motd]\nmessages = ["one", "two", "three"]\n')
    gtd.start()
    assert retry_until(lambda: len(gtd.agent.received()) >= 4, 15), gtd.log()
    got = gtd.agent.received()[:4]
    assert all(line.startswith("HEARTBEAT: ") for line in got)
    assert {line.removeprefix("HEARTBEAT: ") for line in got} <= {"one", "two", "three"}
    assert all(a != b for a, b in itertools.pairwise(got))
    assert "poked deacon" in gtd.log()


def test_usr1_wakes_the_loop_at_once(gtd: Gtd) -> None:
    """SIGUSR1 neither kills the daemon nor waits for the heartbeat: it is handled at once."""
    gtd.start()
    assert retry_until(lambda: gtd.notify.has("READY=1"), 10), gtd.log()
    for _ in range(20):
        gtd.signal(signal.SIGUSR1)
    assert retry_until(lambda: "SIGUSR1: processing lifecycle requests" in gtd.log(), 10)
    assert 1 == gtd.state()["heartbeat_count"]  # handled at once, not at the next heartbeat
    assert gtd.proc is not None
    assert gtd.proc.poll() is None


def test_usr1_carries_out_a_queued_request(gtd: Gtd) -> None:
    """`gtd run` wires lifecycle processing: a spooled cycle runs on USR1, not at the heartbeat."""
    from gtd import actions, lifecycle
    from gtd.identities import DEACON
    from gtd.request import Action
    from gtd.spool import Spool

    gtd.start()
    assert retry_until(lambda: gtd.notify.has("READY=1"), 10), gtd.log()
    old = gtd.deacon_pid()
    actions.set_request_flag(gtd.town, DEACON, Action.CYCLE)
    lifecycle.submit(Spool(gtd.town), DEACON, Action.CYCLE, sender="test")
    gtd.signal(signal.SIGUSR1)

    def cycled_and_done() -> bool:
        return gtd.deacon_pid() not in (None, old) and not Spool(gtd.town).pending()

    assert retry_until(cycled_and_done, 5), (gtd.deacon_pid(), Spool(gtd.town).pending(), gtd.log())
    assert [] == Spool(gtd.town).pending()


def watchdog_gaps(notify: NotifySocket, stamps: list[float], seen: list[int]) -> list[float]:
    """Stamp WATCHDOG=1 datagrams as they arrive; return the gaps between them."""
    messages = notify.drain()
    now = time.monotonic()
    stamps.extend(now for m in messages[seen[0] :] if "WATCHDOG=1" in m.split("\n"))
    seen[0] = len(messages)
    return [b - a for a, b in itertools.pairwise(stamps)]


def test_frozen_tmux_server_keeps_the_watchdog_fed_and_recovers(gtd: Gtd) -> None:
    """SIGSTOP on the tmux server: calls time out, pings continue, and after SIGCONT it recovers."""
    gtd.write_config(heartbeat_interval="1")
    gtd.start(WATCHDOG_USEC="3000000")  # ping every 1.5 s; tmux timeout becomes 0.5 s
    assert retry_until(lambda: gtd.notify.has("READY=1"), 10), gtd.log()
    server = int(gtd.server.cmd("display-message", "-p", "#{pid}").stdout)
    stamps: list[float] = []
    seen = [len(gtd.notify.drain())]
    os.kill(server, signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        assert retry_until(lambda: "tmux unavailable" in gtd.log(), 10)
        while time.monotonic() - frozen < 6:
            watchdog_gaps(gtd.notify, stamps, seen)
            time.sleep(0.05)
        gaps = watchdog_gaps(gtd.notify, stamps, seen)
        assert len(stamps) >= 3
        assert max(gaps) < 3.0, gaps
        assert any("tmux unavailable" in s for s in gtd.notify.statuses())
    finally:
        os.kill(server, signal.SIGCONT)
    assert retry_until(lambda: "tmux answers again" in gtd.log(), 10), gtd.log()
    assert retry_until(lambda: "tmux unavailable" not in gtd.notify.statuses()[-1], 10)
    assert gtd.proc is not None
    assert gtd.proc.poll() is None


def test_agent_dying_at_once_backs_off(gtd: Gtd) -> None:
    """An agent gone before it can be watched (/bin/false) is noticed at once and backs off.

    Quick exits at about 0, 1 and 3 s; not one exit per startsecs with STATUS "starting".
    """
    gtd.write_config(command='"/bin/false"')
    gtd.start()
    assert retry_until(lambda: gtd.notify.has("READY=1"), 10), gtd.log()
    assert retry_until(
        lambda: any("crash-looping (3 quick exits)" in s for s in gtd.notify.statuses()), 6
    ), gtd.notify.statuses()


def test_a_wrapper_still_starting_its_agent_is_not_restarted(
    gtd: Gtd, tmp_path: pathlib.Path
) -> None:
    """A wrapper script busy before it execs the agent is a start in progress, not a death.

    For 3 s the pane holds only bash, waiting in a builtin (no process under it), the
    way a wrapper sourcing nvm or a profile does; heartbeats every second see no agent.
    The start is left alone: the same pane process becomes the agent, nothing is
    restarted, and it is poked. (Judged "back at a shell", it was killed at each
    heartbeat and never got to the agent.)
    """
    hold = tmp_path / "hold"
    os.mkfifo(hold)
    wrapper = tmp_path / "claude-wrapper"
    wrapper.write_text(
        "#!/bin/bash\n"
        f"exec 3<>{shlex.quote(str(hold))}\n"
        "read -r -t 3 -u 3 _\n"
        f"exec {gtd.agent.command()}\n"
    )
    wrapper.chmod(0o755)
    gtd.write_config(heartbeat_interval='"1s"', command=json.dumps(str(wrapper)))
    gtd.start()
    assert retry_until(lambda: gtd.notify.has("READY=1"), 10), gtd.log()
    first = gtd.deacon_pid()
    assert retry_until(lambda: gtd.agent.received(), 20), gtd.log()
    agent = gtd.state()["agents"]["deacon"]
    assert (first, 0) == (gtd.deacon_pid(), agent["restarts"]), gtd.log()
    assert "starting it" not in gtd.log()
    assert "not alive; no poke this heartbeat" in gtd.log()  # it was a shell for a while


def agent_pids(gtd: Gtd) -> dict[str, int]:
    """Live agent pane pids by session name."""
    out = gtd.server.cmd(
        "list-panes", "-a", "-F", "#{session_name} #{pane_pid} #{pane_dead}", check=False
    ).stdout.split("\n")
    return {n: int(p) for n, p, dead in (line.split() for line in out if line) if dead == "0"}


def test_every_supervised_agent_is_kept_alive_and_only_poked_ones_are_poked(gtd: Gtd) -> None:
    """[supervise]: deacon, mayor and a witness; each comes back alone; only the deacon is poked.

    The witness's rig is missing, so its starts fail and its own guard backs off, while
    the others are unaffected.
    """
    gtd.write_config(heartbeat_interval="1")
    gtd.config.write_text(
        gtd.config.read_text()
        + '[supervise]\nagents = ["deacon", "mayor", "gastown-witness"]\npoke = ["deacon"]\n'
    )
    gtd.town.mkdir()
    gtd.start()
    assert retry_until(lambda: gtd.notify.has("READY=1"), 10), gtd.log()
    assert retry_until(lambda: {"gt-deacon", "gt-mayor"} <= agent_pids(gtd).keys(), 10), gtd.log()
    mayor, deacon = agent_pids(gtd)["gt-mayor"], agent_pids(gtd)["gt-deacon"]
    os.kill(mayor, signal.SIGKILL)
    assert retry_until(lambda: agent_pids(gtd).get("gt-mayor") not in (None, mayor), 10), gtd.log()
    assert deacon == agent_pids(gtd)["gt-deacon"]
    assert retry_until(lambda: len(gtd.agent.received()) >= 2, 15), gtd.log()
    pokes = {ln.split(" ")[0] for ln in gtd.agent.lines() if ln.split(" ")[1] == "LINE"}
    assert {str(deacon)} == pokes
    assert "gt-gastown-witness" not in agent_pids(gtd)

    def witness_backs_off() -> bool:
        return "gastown-witness crash-looping" in (gtd.notify.statuses() or [""])[-1]

    assert retry_until(witness_backs_off, 10), gtd.notify.statuses()[-3:]
    agents_state = gtd.state()["agents"]
    assert ["deacon", "mayor", "gastown-witness"] == list(agents_state)
    assert 1 == agents_state["mayor"]["restarts"]
    assert "backoff" == agents_state["gastown-witness"]["condition"]


def test_a_shutdown_request_holds_a_supervised_agent_stopped(gtd: Gtd) -> None:
    """A shutdown request stops the agent and the daemon leaves it stopped; a restart revives it."""
    from gtd import actions, lifecycle
    from gtd.identities import DEACON
    from gtd.request import Action
    from gtd.spool import Spool

    gtd.start()
    assert retry_until(lambda: gtd.notify.has("READY=1"), 10), gtd.log()
    for action in (Action.SHUTDOWN, Action.RESTART):
        actions.set_request_flag(gtd.town, DEACON, action)
        lifecycle.submit(Spool(gtd.town), DEACON, action, sender="test")
        gtd.signal(signal.SIGUSR1)
        if action is Action.SHUTDOWN:

            def held() -> bool:
                return gtd.state()["agents"]["deacon"]["held"] and gtd.deacon_pid() is None

            assert retry_until(held, 5), (gtd.state()["agents"], gtd.log())
            assert retry_until(lambda: "deacon stopped on request" in gtd.notify.statuses()[-1], 5)
            assert gtd.deacon_pid() is None  # not brought back
    assert retry_until(lambda: gtd.deacon_pid() is not None, 5), gtd.log()
    assert retry_until(lambda: not gtd.state()["agents"]["deacon"]["held"], 5)


def test_status_json_shows_each_supervised_agent(
    gtd: Gtd, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gtd status --json` has SPEC's keys; each supervised agent, its condition and restarts."""
    from gtd import cli

    gtd.config.write_text(
        gtd.config.read_text() + '[supervise]\nagents = ["deacon", "mayor"]\npoke = ["deacon"]\n'
    )
    gtd.start()
    assert retry_until(lambda: {"gt-deacon", "gt-mayor"} <= agent_pids(gtd).keys(), 10), gtd.log()
    mayor = agent_pids(gtd)["gt-mayor"]
    os.kill(mayor, signal.SIGKILL)
    assert retry_until(lambda: gtd.state()["agents"]["mayor"]["restarts"] == 1, 5), gtd.log()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(gtd.town / "no-manager"))
    assert 3 == cli.main(["--config", str(gtd.config), "status", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert {"service", "state", "agents", "lifecycle"} <= report.keys()
    assert {"pending": [], "failed": []} == report["lifecycle"]
    rows = {row["identity"]: row for row in report["agents"]}
    assert ["deacon", "mayor"] == [row["identity"] for row in report["agents"]]
    for identity in ("deacon", "mayor"):
        row = rows[identity]
        assert {"identity", "session", "pid", "alive", "condition", "restarts"} <= row.keys()
        assert (f"gt-{identity}", True) == (row["session"], row["alive"])
        assert row["pid"] == agent_pids(gtd)[f"gt-{identity}"]
        assert row["condition"] in ("idle", "busy", "starting")
    assert (0, 1) == (rows["deacon"]["restarts"], rows["mayor"]["restarts"])
    assert (True, False) == (rows["deacon"]["poked"], rows["mayor"]["poked"])
    assert report["state"]["running"] is True
    assert 3 == cli.main(["--config", str(gtd.config), "status"])
    text = capsys.readouterr().out
    assert "mayor: session gt-mayor pane " in text
    assert ", restarts 1" in text


def test_a_newer_installed_gtd_is_noticed_not_applied(
    gtd: Gtd, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An upgrade installed under a running daemon shows in STATUS and the journal.

    The daemon runs from a copy of the package; writing a newer version into that
    copy's __init__.py is what an upgrade does on disk. The daemon keeps running.
    """
    import shutil

    import gtd as package

    site = tmp_path / "site"
    shutil.copytree(pathlib.Path(package.__file__).parent, site / "gtd")
    gtd.write_config(heartbeat_interval="1")
    gtd.start(PYTHONPATH=str(site), PYTHONSAFEPATH="1")  # not the checkout in the cwd
    assert retry_until(lambda: gtd.notify.has("READY=1"), 10), gtd.log()
    init = site / "gtd" / "__init__.py"
    init.write_text(init.read_text().replace(package.__version__, "99.0.0"))

    def noticed() -> bool:
        return any("gtd 99.0.0 is installed" in s for s in gtd.notify.statuses())

    assert retry_until(noticed, 10), gtd.notify.statuses()[-2:]
    assert f"gtd 99.0.0 is installed, {package.__version__} runs" in gtd.log()
    assert 1 == gtd.log().count("is installed")  # said once, not every heartbeat
    assert gtd.proc is not None
    assert gtd.proc.poll() is None
    assert package.__version__ == gtd.state()["version"]
