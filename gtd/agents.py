"""Agents in tmux: find, judge alive, start, stop. One code path for every caller.

The daemon's heartbeat, lifecycle requests and ``gtd agent`` all start agents
through :func:`start_agent`, so every agent process gets SPEC's environment in its
own ``/proc/PID/environ`` (through ``env`` at pane creation, not ``send-keys
export``), and none inherits the daemon's identity variables.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
import typing as t

from gtd.environment import AGENT_UNSET, IDENTITY_VARS
from gtd.events import Event
from gtd.exc import GtdError, Stopping, WorkdirMissing
from gtd.systemd import TMUX_UNIT
from gtd.tmux import CLIENT_ENV_DROP, PaneInfo, Tmux, env_argv

if t.TYPE_CHECKING:
    from gtd.config import Config
    from gtd.identities import Identity

logger = logging.getLogger(__name__)

assert set(IDENTITY_VARS) <= CLIENT_ENV_DROP  # noqa: S101 - module invariant

SHELLS = frozenset(
    {"sh", "ash", "bash", "dash", "zsh", "ksh", "mksh", "pdksh", "csh", "tcsh", "fish", "busybox"}
    | {"login", "nu", "xonsh", "elvish", "rc", "es", "yash", "oksh", "loksh"}
)
"""Process names that mean "a shell, not the agent": a pane back at one lost its agent."""
MAX_TREE = 64


@dataclasses.dataclass(frozen=True, slots=True)
class AgentView:
    """An agent as one pane listing and its process tree show it."""

    identity: Identity
    pane: PaneInfo | None
    pid: int | None
    """The agent's own process: the pane's, or below a shell or wrapper script; None if dead."""

    @property
    def alive(self) -> bool:
        """Whether the agent runs (its pane lives and holds a process other than a shell)."""
        return self.pid is not None


def agent_pane(panes: t.Iterable[PaneInfo], identity: Identity) -> PaneInfo | None:
    """The pane the agent runs in: the one tagged with its identity, else the session's first.

    Sessions made by upstream ``gt`` carry no tag; their first pane is the agent's.
    """
    first: PaneInfo | None = None
    for pane in panes:
        if pane.session_name != identity.session:
            continue
        if pane.agent == identity.dash:
            return pane
        if first is None and not pane.agent:
            first = pane
    return first


class Procfs:
    """Reads the process facts liveness needs from ``/proc`` (injected in tests)."""

    def names(self, pid: int) -> tuple[str, str] | None:
        """``(comm, basename of argv[0])`` of a live process, or None (gone, or a zombie)."""
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                comm = f.read().decode(errors="replace").strip()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read(4096)
            state = ""
            if not cmdline:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    state = f.read().decode(errors="replace").rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return None
        return process_names(comm, cmdline, state)

    def children(self, pid: int) -> list[int]:
        """The process's children (every thread's), in pid order."""
        kids: list[int] = []
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return kids
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                    kids += [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
        return sorted(kids)


def process_names(comm: str, cmdline: bytes, state: str) -> tuple[str, str] | None:
    r"""``(comm, basename of argv[0])`` from ``/proc/PID``'s files; None for a zombie.

    The command line reads empty for a zombie (exited, not reaped) and also, for an
    instant, for a live process inside ``execve`` (its new image has no arguments
    yet): the start of every agent, and a wrapper exec'ing one. Then *state* (from
    ``stat``) tells them apart, and ``comm`` stands for both names.

    >>> process_names("claude", b"/home/u/.local/bin/claude\0--x\0", "S")
    ('claude', 'claude')
    >>> process_names("env", b"", "R"), process_names("node", b"", "Z")
    (('env', 'env'), None)
    >>> process_names("bash", b"-bash\0", "S")
    ('bash', 'bash')
    """
    if not cmdline:
        return None if state in ("Z", "X", "") else (comm, comm)
    argv0 = cmdline.split(b"\0", 1)[0].decode(errors="replace")
    return comm, os.path.basename(argv0.removeprefix("-"))


PROCFS = Procfs()


def agent_process(
    pane_pid: int, alive_commands: t.Collection[str], procfs: Procfs = PROCFS
) -> int | None:
    """The agent's process in a pane, whatever name its binary shows, or None.

    Breadth-first from the pane's own process: the first one named in
    *alive_commands* (by comm or argv[0]), else the first that is not a shell
    (:data:`SHELLS`). A wrapper script that execs the agent is the agent; one that
    forks it is a shell with the agent below; a pane back at a shell has none.
    """
    queue, seen, fallback = collections.deque([pane_pid]), 0, None
    while queue and seen < MAX_TREE:
        pid = queue.popleft()
        seen += 1
        names = procfs.names(pid)
        if names is None:
            continue
        if names[0] in alive_commands or names[1] in alive_commands:
            return pid
        if fallback is None and names[1] not in SHELLS and names[0] not in SHELLS:
            fallback = pid
        queue.extend(procfs.children(pid))
    return fallback


def view(
    panes: t.Sequence[PaneInfo], identity: Identity, config: Config, procfs: Procfs = PROCFS
) -> AgentView:
    """Judge one agent from a listing already made (no tmux call; reads ``/proc``)."""
    pane = agent_pane(panes, identity)
    if pane is None or pane.dead:
        return AgentView(identity, pane, None)
    return AgentView(
        identity, pane, agent_process(pane.pane_pid, config.agent.alive_commands, procfs)
    )


def is_alive(pane: PaneInfo | None, alive_commands: t.Collection[str]) -> bool:
    """Whether *pane* holds a live agent (:func:`agent_process`)."""
    return (
        pane is not None
        and not pane.dead
        and agent_process(pane.pane_pid, alive_commands) is not None
    )


def spawn_argv(identity: Identity, config: Config, path: str | None = None) -> list[str]:
    """The pane command: ``env`` with PATH and the identity's variables, then the agent."""
    env = identity.env() | ({"PATH": path} if path else {})
    return env_argv(env, AGENT_UNSET - env.keys(), config.agent.argv)


TMUX_START_WAIT = 10.0


def ensure_server(
    tmux: Tmux,
    start_unit: t.Callable[[], None],
    *,
    stop_requested: t.Callable[[], bool] = lambda: False,
    clock: t.Callable[[], float] = time.monotonic,
    wait: float = TMUX_START_WAIT,
) -> None:
    """Make sure the agents' tmux server runs: if not, *start_unit* (systemd) and wait.

    gtd never starts a tmux server as its own child (``tmux -N``), so the server
    always lives in ``gastown-tmux.service``.

    Raises
    ------
    Stopping
        *stop_requested* turned true while waiting.
    GtdError
        The server did not answer within *wait* seconds.
    """
    if tmux.server_running():
        return
    logger.warning(
        "tmux server %s is not running; starting %s", tmux.socket or "(default)", TMUX_UNIT
    )
    start_unit()
    if not wait_for_server(tmux, wait, stop_requested=stop_requested, clock=clock):
        msg = f"tmux server not up {wait:g}s after starting {TMUX_UNIT}"
        raise GtdError(msg)


def wait_for_server(
    tmux: Tmux,
    wait: float,
    *,
    stop_requested: t.Callable[[], bool] = lambda: False,
    clock: t.Callable[[], float] = time.monotonic,
) -> bool:
    """Poll every 20 ms until the server answers (True) or *wait* seconds pass (False).

    Raises
    ------
    Stopping
        *stop_requested* turned true while waiting.
    """
    deadline = clock() + wait
    while not tmux.server_running():
        if stop_requested():
            msg = "stop requested while waiting for the tmux server"
            raise Stopping(msg)
        if clock() > deadline:
            return False
        time.sleep(0.02)
    return True


def start_agent(
    tmux: Tmux,
    identity: Identity,
    config: Config,
    *,
    panes: t.Sequence[PaneInfo] | None = None,
    create_workdir: bool = False,
    path: str | None = None,
) -> PaneInfo:
    """Start (or restart) the agent in its own pane; other panes of its session stay.

    Respawns the agent's pane when the session exists, else creates the session.
    *panes* is a listing the caller already has, to save a tmux call; *path* is
    the PATH the agent gets (and its command is looked up on).

    Raises
    ------
    WorkdirMissing
        The workdir is missing and *create_workdir* is false.
    gtd.exc.TmuxError
        tmux refused or timed out.
    """
    workdir = identity.workdir(config.town_root)
    if create_workdir:
        workdir.mkdir(parents=True, exist_ok=True)
    elif not workdir.is_dir():
        msg = f"workdir of {identity.dash} does not exist: {workdir}"
        raise WorkdirMissing(msg)
    if panes is None:
        panes = tmux.list_panes(prefix=identity.session)
    pane = agent_pane(panes, identity)
    argv = spawn_argv(identity, config, path)
    env = identity.env()
    if pane is None:
        pane = tmux.new_session(
            identity.session, cwd=str(workdir), env=env, argv=argv, tag=identity.dash
        )
        pane = dataclasses.replace(pane, agent=identity.dash)
        how = "created session"
    else:
        pane = tmux.respawn_pane(
            pane.pane_id, cwd=str(workdir), env=env, argv=argv, tag=identity.dash
        )
        how = "respawned pane"
    logger.info(
        "started %s (%s %s, pid %d)",
        identity.dash,
        how,
        pane.pane_id,
        pane.pane_pid,
        extra=_fields(identity, pane) | {"MESSAGE_ID": Event.AGENT_STARTED.value},
    )
    return pane


def stop_agent(tmux: Tmux, identity: Identity, *, whole_session: bool = False) -> bool:
    """Stop the agent: kill its pane, or the whole session when asked or when it is alone.

    Returns whether anything was there to stop.
    """
    panes = [
        p for p in tmux.list_panes(prefix=identity.session) if p.session_name == identity.session
    ]
    pane = agent_pane(panes, identity)
    if pane is None:
        return False
    if whole_session or len(panes) == 1:
        tmux.kill_session(identity.session)
    else:
        tmux.kill_pane(pane.pane_id)
    logger.info("stopped %s", identity.dash, extra=_fields(identity, pane))
    return True


def _fields(identity: Identity, pane: PaneInfo) -> dict[str, t.Any]:
    """Journal fields for an agent event."""
    return {
        "GTD_IDENTITY": identity.dash,
        "GTD_SESSION": identity.session,
        "GTD_PANE": pane.pane_id,
        "GTD_AGENT_PID": pane.pane_pid,
    }
