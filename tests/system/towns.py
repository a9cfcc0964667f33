"""The sandbox user's town: config, fake agent and units installed as a user would."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import secrets
import shutil
import typing as t

import pytest

from tests.conftest import FAKE_AGENT
from tests.sandbox import UserManager, wait_for

if t.TYPE_CHECKING:
    from collections.abc import Iterator

REPO = pathlib.Path(__file__).resolve().parents[2]
DAEMON = "gastown-daemon.service"
TMUX = "gastown-tmux.service"


@dataclasses.dataclass
class Town:
    """One test's town, config and units in the sandbox user's home."""

    um: UserManager
    venv: pathlib.Path
    name: str
    cursor: str | None = None
    agent_args: str = "--trap"
    agent_log: pathlib.Path | None = None

    @property
    def root(self) -> pathlib.Path:
        return self.um.home / self.name

    @property
    def socket(self) -> str:
        return f"gtd_sys_{self.name}"

    @property
    def log(self) -> pathlib.Path:
        """Where the fake agent records; in the town unless a test moved it."""
        return self.agent_log or self.root / "agent.log"

    @property
    def gtd(self) -> pathlib.Path:
        return self.venv / "bin" / "gtd"

    @property
    def dropin(self) -> pathlib.Path:
        return self.um.unit_dir / f"{DAEMON}.d" / "test.conf"

    def config_text(self, **overrides: str) -> str:
        node = self.um.home / "fake" / "node"
        agent = self.um.home / "fake" / "agent.py"
        values = {
            "town_root": json.dumps(str(self.root)),
            "heartbeat_interval": '"300s"',
            "command": json.dumps(f"{node} {agent} --log {self.log} {self.agent_args}"),
        } | overrides
        return (
            f"town_root = {values['town_root']}\n"
            f"heartbeat_interval = {values['heartbeat_interval']}\n"
            f'[agent]\ncommand = {values["command"]}\nalive_commands = ["node"]\nui = "plain"\n'
            f'[tmux]\nsocket = "{self.socket}"\n'
            '[lifecycle]\ngt_command = ""\n'
        )

    def write_config(self, text: str | None = None) -> None:
        self.um.write_file(".config/gastown/daemon.toml", text or self.config_text())

    def set_dropin(self, text: str) -> None:
        self.um.write_file(self.dropin.relative_to(self.um.home), f"[Service]\n{text}\n")
        self.um.systemctl("daemon-reload")

    def gtd_cmd(self, *args: str, check: bool = True) -> str:
        return self.um.run(str(self.gtd), *args, check=check).stdout

    def show(self, *props: str) -> dict[str, str]:
        return self.um.show(DAEMON, *props)

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def deacon_pid(self) -> int | None:
        proc = self.um.run(
            "tmux", "-L", self.socket, "list-panes", "-t", "=gt-deacon",
            "-F", "#{pane_pid} #{pane_dead} #{pane_current_command}", check=False,
        )  # fmt: skip
        parts = proc.stdout.split()
        if proc.returncode == 0 and len(parts) == 3 and parts[1:] == ["0", "node"]:
            return int(parts[0])
        return None

    def messages(self) -> list[str]:
        return [str(e.get("MESSAGE", "")) for e in self.journal()]

    def journal(self) -> list[dict[str, t.Any]]:
        return self.um.journal(DAEMON, after_cursor=self.cursor)

    def agent_signals(self) -> list[str]:
        try:
            return [ln for ln in self.log.read_text().splitlines() if " SIGNAL " in ln]
        except FileNotFoundError:
            return []

    def status(self) -> str:
        """The service's STATUS= line, as ``systemctl --user show`` gives it."""
        return self.show("StatusText")["StatusText"]

    def heartbeats(self) -> int:
        """``heartbeat_count`` in the daemon's state.json; -1 while it cannot be read."""
        try:
            state = json.loads((self.root / "daemon" / "state.json").read_text())
            return int(state["heartbeat_count"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    def start(self) -> None:
        """Start the service and wait until the deacon agent is up with its traps set."""
        self.um.systemctl("start", DAEMON)
        wait_for(
            self.agent_seen, lambda seen: f"{seen[0]} READY" in seen[1], timeout=30,
            what="the deacon's process to log READY (past its start-up checks)",
            context=self.messages,
        )  # fmt: skip

    def agent_seen(self) -> tuple[int | None, list[str]]:
        """The live deacon's pid (None when there is none) and what the agent logged."""
        pid = self.deacon_pid()
        try:
            return pid, self.log.read_text().splitlines()
        except FileNotFoundError:
            return pid, []

    def new_deacon(self, old: int | None, timeout: float = 30.0) -> int:
        """Wait until a live deacon other than *old* runs; return its pid.

        Raises
        ------
        tests.sandbox.WaitTimeout
            None within *timeout* seconds; the message has the daemon's journal.
        """
        pid = wait_for(
            self.deacon_pid, lambda pid: pid not in (None, old), timeout=timeout,
            what=f"a live deacon other than pid {old}", context=self.messages,
        )  # fmt: skip
        assert pid is not None
        return pid


@pytest.fixture
def town(manager: UserManager, gtd_venv: pathlib.Path) -> Iterator[Town]:
    """A fresh town with the fake agent, config and units installed by ``gtd units install``."""
    town = Town(manager, gtd_venv, f"t{secrets.token_hex(3)}")
    fake = manager.home / "fake"
    manager.write_file("fake/agent.py", FAKE_AGENT.read_text())
    if not (fake / "node").is_symlink():
        (fake / "node").symlink_to("/usr/bin/python3")
    town.write_config()
    # --force: units an earlier test left in the shared home may run another gtd.
    out = town.gtd_cmd("units", "install", "--force")
    assert f"units in {manager.unit_dir} run {town.gtd}" in out
    assert (manager.unit_dir / DAEMON).exists()
    town.cursor = manager.journal_cursor()
    yield town
    manager.systemctl("stop", DAEMON, TMUX, check=False)
    manager.systemctl("reset-failed", DAEMON, TMUX, check=False)
    if town.dropin.exists():
        shutil.rmtree(town.dropin.parent)
        manager.systemctl("daemon-reload")
    shutil.rmtree(town.root, ignore_errors=True)
