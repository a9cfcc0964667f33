"""The .deb, built by packaging/build-deb, installed with apt-get, run under a real user manager.

Slow (it builds two packages and installs them with apt-get: about a minute in all)
and root only, like every system test. It installs the package on this machine and
purges it again at the end; a gtd package installed before the test is refused.
The town is ``~/gt``, the one the packaged unit may write to (``ReadWritePaths=-%h/gt``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import typing as t

import pytest

from gtd import events
from tests.conftest import FAKE_AGENT
from tests.sandbox import UserManager, machine_lock, retry_until, wait_for
from tests.system.towns import DAEMON, REPO, TMUX, Town

if t.TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.slow

APT = ["apt-get", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300", "--no-install-recommends"]
APT_ENV = {
    **os.environ,
    "DEBIAN_FRONTEND": "noninteractive",
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
}
NEWER = "0.2.0-1+upgradetest1"


@dataclasses.dataclass(frozen=True)
class Debs:
    """The two builds: the package as it is, and the same with a newer version."""

    current: pathlib.Path
    newer: pathlib.Path


def root(*argv: str | os.PathLike[str], timeout: float = 600) -> str:
    """Run *argv* as root with the distribution's PATH; return stdout."""
    proc = subprocess.run(
        [os.fspath(a) for a in argv],
        env=APT_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert 0 == proc.returncode, f"{argv}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def installed_version() -> str | None:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", "gtd"],
        capture_output=True,
        text=True,
        check=False,
    )
    status, _, version = proc.stdout.partition(" ")
    return version if proc.returncode == 0 and status == "installed" else None


@pytest.fixture(scope="module")
def one_run_installs() -> Iterator[None]:
    """The package is the machine's: another clone's run waits until this module is done."""
    with machine_lock("deb-package", timeout=1800):
        yield


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory, one_run_installs: None) -> Debs:
    """Build both packages once for this module, outside the repository."""
    if installed_version() is not None:
        pytest.fail("a gtd package is installed already; this test would replace it")
    out = tmp_path_factory.mktemp("debs")
    current = root(REPO / "packaging" / "build-deb", out / "current").strip()
    newer = root(REPO / "packaging" / "build-deb", "--version", NEWER, out / "newer").strip()
    return Debs(pathlib.Path(current), pathlib.Path(newer))


def package_files() -> list[pathlib.Path]:
    """The files (not directories) the installed gtd package owns."""
    paths = [pathlib.Path(p) for p in root("dpkg", "-L", "gtd").splitlines() if p.strip()]
    return [p for p in paths if p.is_file() or p.is_symlink()]


@pytest.fixture
def packaged_town(manager: UserManager) -> Iterator[Town]:
    """The sandbox user's town ``~/gt`` with the fake agent, for the packaged units.

    Units a venv test left in ``~/.config/systemd/user`` would hide the packaged ones,
    so they go first. Afterwards the units are stopped and disabled, the package purged
    and the town removed.
    """
    town = Town(manager, pathlib.Path("/usr"), "gt")
    for leftover in manager.unit_dir.glob("gastown-*"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    manager.write_file("fake/agent.py", FAKE_AGENT.read_text())
    if not (manager.home / "fake" / "node").is_symlink():
        (manager.home / "fake" / "node").symlink_to("/usr/bin/python3")
    town.write_config()
    # The documented step: the hardened service may write to ~/gt but cannot create it.
    manager.run("mkdir", "-p", town.root)
    town.cursor = manager.journal_cursor()
    try:
        yield town
    finally:
        manager.systemctl("disable", "--now", DAEMON, TMUX, check=False)
        manager.systemctl("reset-failed", DAEMON, TMUX, check=False)
        if installed_version() is not None:
            root(*APT, "purge", "gtd")
        manager.systemctl("daemon-reload", check=False)
        shutil.rmtree(town.root, ignore_errors=True)


def enable_now(town: Town) -> None:
    """What the package tells the user to run; wait until the deacon is up."""
    town.um.systemctl("daemon-reload")
    town.um.systemctl("enable", "--now", DAEMON)
    wait_for(
        town.agent_seen, lambda seen: f"{seen[0]} READY" in seen[1], timeout=30,
        what="the packaged deacon's process to log READY", context=town.messages,
    )  # fmt: skip


def bash_complete(um: UserManager, line: str) -> list[str]:
    """Completions bash-completion loads on demand from the package, for *line*."""
    words = line.split(" ")
    program = (
        ". /usr/share/bash-completion/bash_completion\n"
        "_completion_loader gtd\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        "_gtd\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    return um.run("bash", "--norc", "-c", program).stdout.split()


def test_deb_installs_runs_explains_and_removes_cleanly(debs: Debs, packaged_town: Town) -> None:
    """Installed: /usr/bin/gtd runs the service, man, completion, catalog. Removed: nothing left."""
    um, town = packaged_town.um, packaged_town
    root(*APT, "install", debs.current)
    files = package_files()
    # It enables and starts nothing by itself.
    um.systemctl("daemon-reload")
    props = um.show(DAEMON, "ActiveState", "UnitFileState", "FragmentPath")
    assert ("inactive", "disabled", f"/usr/lib/systemd/user/{DAEMON}") == (
        props["ActiveState"],
        props["UnitFileState"],
        props["FragmentPath"],
    )
    assert not list(pathlib.Path("/etc/systemd/user").glob("*/gastown-*"))
    # The packaged units are units/ byte for byte, and verify with their man page.
    for unit in (DAEMON, TMUX):
        assert (REPO / "units" / unit).read_bytes() == pathlib.Path(
            f"/usr/lib/systemd/user/{unit}"
        ).read_bytes()
    verify = um.run(
        "systemd-analyze", "--user", "verify", f"/usr/lib/systemd/user/{DAEMON}",
        f"/usr/lib/systemd/user/{TMUX}", check=False,
    )  # fmt: skip
    assert (0, "") == (verify.returncode, verify.stderr.strip())

    enable_now(town)
    main = town.main_pid()
    assert pathlib.Path(f"/proc/{main}/cmdline").read_bytes().split(b"\0")[1] == b"/usr/bin/gtd"
    assert "started deacon" in town.gtd_cmd("logs", "--identity", "deacon")

    manual = um.run("man", "-P", "cat", "gtd", env={"MANWIDTH": "100"}).stdout
    assert "gtd logs" in manual
    assert "EXIT STATUS" in manual
    assert ["logs"] == bash_complete(um, "gtd lo")
    assert ["install", "uninstall"] == bash_complete(um, "gtd units ")

    # A journal entry with an event's MESSAGE_ID, read back with its catalog text.
    # (systemd-run --wait needs a session bus, which the sandbox has not: wait on the entry.)
    um.run(
        "systemd-run", "--user", "--quiet", "--unit=test-catalog", "/usr/bin/python3",
        "-c", "from systemd import journal; journal.send('deacon is not alive', "
        f"MESSAGE_ID='{events.Event.AGENT_DIED.value}', GTD_IDENTITY='deacon', "
        "GTD_SESSION='gt-deacon')",
    )  # fmt: skip
    um.wait_journal(
        "test-catalog.service",
        lambda e: e.get("MESSAGE_ID") == events.Event.AGENT_DIED.value,
        after_cursor=town.cursor,
    )
    explained = um.run("journalctl", "--user", "-x", "-u", "test-catalog", "--no-pager").stdout
    assert "Subject: Gas Town agent deacon is not alive" in explained
    assert "The agent deacon exited or went back to a shell." in explained
    assert "tmux capture-pane -p -t gt-deacon" in explained

    prerm = pathlib.Path("/var/lib/dpkg/info/gtd.prerm").read_text()
    assert "deb-systemd-invoke --user stop gastown-daemon.service gastown-tmux.service" in prerm

    root(*APT, "remove", "gtd")
    assert [] == [p for p in files if p.exists() or p.is_symlink()]
    assert not pathlib.Path("/usr/lib/python3/dist-packages/gtd").exists()
    assert "gtd:" not in root("journalctl", "--list-catalog")
    um.systemctl("stop", DAEMON, TMUX)
    um.systemctl("daemon-reload")
    assert "not-found" == um.show(DAEMON, "LoadState")["LoadState"]


ENQUEUE = """
import json, pathlib, sys
from gtd import actions, lifecycle
from gtd.identities import parse_identity
from gtd.request import Action
from gtd.spool import Spool
town = pathlib.Path(sys.argv[1])
ids = []
for i in range(int(sys.argv[2])):
    ident = parse_identity(f"r-crew-n{i}")
    actions.set_request_flag(town, ident, Action.SHUTDOWN)
    ids.append(lifecycle.submit(Spool(town), ident, Action.SHUTDOWN, sender="upgrade-test").id)
print(json.dumps(ids))
"""


def test_upgrade_keeps_agents_and_carries_out_queued_requests(
    debs: Debs, packaged_town: Town
) -> None:
    """A newer .deb over a running service, then daemon-reload and restart of the daemon.

    Every agent keeps its PID and sees no signal; requests queued before the upgrade
    are carried out by the new daemon.
    """
    um, town = packaged_town.um, packaged_town
    root(*APT, "install", debs.current)
    enable_now(town)
    town.gtd_cmd("agent", "start", "mayor")
    agents = {"deacon": town.deacon_pid(), "mayor": mayor_pid(town)}
    assert None not in agents.values()
    old_main = town.main_pid()
    # Queued without waking the daemon: pending until the next heartbeat (300 s away).
    out = um.run("/usr/bin/python3", "-c", ENQUEUE, str(town.root), "5").stdout
    ids: list[str] = json.loads(out)
    assert 5 == len(list((town.root / "daemon" / "lifecycle" / "new").iterdir()))

    root(*APT, "install", debs.newer)
    assert NEWER == installed_version()
    assert old_main == town.main_pid()  # the upgrade itself restarts nothing
    um.systemctl("daemon-reload")
    um.systemctl("restart", DAEMON)
    new_main = town.main_pid()
    assert new_main != old_main

    def all_done() -> bool:
        done = collections.Counter(
            e.get("GTD_REQUEST_ID")
            for e in town.journal()
            if e.get("GTD_OUTCOME") == "done" and e.get("_PID") == str(new_main)
        )
        return all(done[rid] == 1 for rid in ids)

    assert retry_until(all_done, 20), town.messages()
    spool = town.root / "daemon" / "lifecycle"
    assert [] == [p.name for d in ("new", "cur", "failed") for p in (spool / d).glob("*")]
    assert agents == {"deacon": town.deacon_pid(), "mayor": mayor_pid(town)}
    assert [] == town.agent_signals()


def mayor_pid(town: Town) -> int | None:
    proc = town.um.run(
        "tmux", "-L", town.socket, "list-panes", "-t", "=gt-mayor", "-F", "#{pane_pid}",
        check=False,
    )  # fmt: skip
    with contextlib.suppress(ValueError):
        return int(proc.stdout.split()[0]) if proc.returncode == 0 else None
    return None
