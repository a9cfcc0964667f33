"""What lifecycle requests do to agents: upstream's flag guard, pre-sync, stop and start.

An agent asks for an action by setting ``requesting_<action>: true`` in its state
file; :meth:`AgentActor.check` refuses to act without it and
:meth:`AgentActor.finish` removes it afterwards, keeping every other key. State
files are only read and written inside the town, never through a link that leads
out of it.
"""

from __future__ import annotations

import logging
import pathlib
import typing as t

from gtd import agents, proc, store
from gtd.environment import sandbox_hint
from gtd.events import Event
from gtd.exc import CommandTimeout, RequestError, StateError, WorkdirMissing
from gtd.request import Action, Request, shown

if t.TYPE_CHECKING:
    from gtd.config import Config
    from gtd.identities import Identity
    from gtd.tmux import Tmux

logger = logging.getLogger(__name__)

PRESYNC_TIMEOUT = 60.0
PRESYNC_STEPS: tuple[tuple[str, ...], ...] = (
    ("git", "fetch", "origin"),
    ("git", "pull", "--rebase", "origin", "main"),
    ("bd", "sync"),
)


def state_file(town: pathlib.Path, identity: Identity) -> pathlib.Path:
    """The agent's state file, refused when its directory resolves outside the town.

    Raises
    ------
    RequestError
        A directory on the way is a link out of the town.
    """
    path = identity.state_file(town)
    real = path.parent.resolve()
    if not real.is_relative_to(town.resolve()):
        msg = f"agent state file {path} resolves outside the town (to {real}); not touched"
        raise RequestError(msg)
    return path


def check_flag(town: pathlib.Path, identity: Identity, action: Action) -> None:
    """Upstream's guard. Raises RequestError unless the state file has the flag true."""
    path, key = state_file(town, identity), action.flag
    try:
        state = store.read_json_object(path)
    except FileNotFoundError:
        msg = f"agent state file {path} is missing (the agent must set {key}: true first)"
        raise RequestError(msg) from None
    except StateError as err:
        msg = f"agent state file {err}"
        raise RequestError(msg) from None
    if state.get(key) is not True:
        got = shown(repr(state.get(key)))
        msg = f"{key} is not true in {path} (got {got}); the agent did not ask for it"
        raise RequestError(msg)


def clear_flag(town: pathlib.Path, identity: Identity, action: Action) -> bool:
    """Remove ``requesting_<action>`` and ``requesting_time``, keeping every other key.

    Idempotent: without the flag nothing is written. Returns whether it wrote. Raises
    OSError when the atomic rewrite fails (the old file stays intact).
    """
    path, key = state_file(town, identity), action.flag
    try:
        state = store.read_json_object(path)
    except FileNotFoundError:
        return False
    except StateError as err:
        logger.warning("cannot clear %s: %s", key, err, extra={"GTD_IDENTITY": identity.dash})
        return False
    if key not in state:
        return False
    del state[key]
    state.pop("requesting_time", None)
    store.write_json(path, state)
    return True


def set_request_flag(town: pathlib.Path, identity: Identity, action: Action) -> pathlib.Path:
    """Set ``requesting_<action>: true`` and ``requesting_time``; return the file's path.

    For ``gtd request --force``. Other keys are kept; a missing file (and directory)
    is created. Raises RequestError for a state file outside the town, StateError
    when the file exists but is not a JSON object (it is left alone).
    """
    path = identity.state_file(town)
    path.parent.mkdir(parents=True, exist_ok=True)
    path = state_file(town, identity)
    try:
        state = store.read_json_object(path)
    except FileNotFoundError:
        state = {}
    store.write_json(path, state | {action.flag: True, "requesting_time": store.now_iso()})
    return path


def presync(
    identity: Identity,
    town: pathlib.Path,
    env: t.Mapping[str, str],
    tick: t.Callable[[], None],
) -> None:
    """Run :data:`PRESYNC_STEPS` in the agent's workdir, each bounded; a failure is only logged.

    A step the service's sandbox refused a write says how to allow it.
    """
    workdir = identity.workdir(town)
    for argv in PRESYNC_STEPS:
        tick()
        extra = {"GTD_IDENTITY": identity.dash, "GTD_STEP": " ".join(argv)}
        try:
            res = proc.run(argv, timeout=PRESYNC_TIMEOUT, cwd=workdir, env=env)
        except (OSError, CommandTimeout) as err:
            logger.warning("pre-sync %s: %s", " ".join(argv), err, extra=extra)
            continue
        if res.returncode != 0:
            tail = (res.stderr.strip() or res.stdout.strip())[-300:]
            if hint := sandbox_hint(res.stderr + res.stdout, town):
                tail = f"{tail} ({hint})"
                extra |= {"GTD_COMMAND": argv[0], "MESSAGE_ID": Event.SANDBOX_DENIED.value}
            logger.warning("pre-sync %s: exit %d: %s", argv[0], res.returncode, tail, extra=extra)
    tick()


class AgentActor:
    """Carries out requests on agents in tmux (the processor's :class:`~gtd.lifecycle.Actor`).

    Parameters
    ----------
    config, tmux
        Where agents live and how they start.
    env
        The environment of the helpers gtd runs itself (pre-sync's git and bd).
    held
        Told the identity of an agent about to be shut down on request, so its
        supervisor does not bring it back; *released* when it is started again.
    """

    def __init__(
        self,
        config: Config,
        tmux: Tmux,
        env: t.Mapping[str, str],
        *,
        held: t.Callable[[Identity], None] = lambda _: None,
        released: t.Callable[[Identity], None] = lambda _: None,
    ) -> None:
        self.config, self.tmux, self.env = config, tmux, env
        self.held, self.released = held, released

    def check(self, request: Request) -> None:
        """Upstream's guard: the agent's state file asks for this action."""
        check_flag(self.config.town_root, request.identity, request.action)

    def act(self, request: Request, tick: t.Callable[[], None]) -> None:
        """Stop the agent, or (pre-sync and) start it again in its pane.

        Stopping an agent that is not running succeeds: there is nothing left to stop.

        Raises
        ------
        RequestError
            The workdir of a restart is missing.
        TmuxError
            tmux failed or timed out (worth retrying).
        """
        identity = request.identity
        if not request.action.starts:
            self.held(identity)
            agents.stop_agent(self.tmux, identity)
            return
        workdir = identity.workdir(self.config.town_root)
        if not workdir.is_dir():
            msg = f"workdir of {identity.dash} does not exist: {workdir}"
            raise RequestError(msg)
        if identity.presync:
            presync(identity, self.config.town_root, self.env, tick)
        self.released(identity)
        try:
            agents.start_agent(self.tmux, identity, self.config)
        except WorkdirMissing as err:
            raise RequestError(str(err)) from None

    def finish(self, request: Request) -> None:
        """Clear the flag the request needed."""
        clear_flag(self.config.town_root, request.identity, request.action)
