"""What lifecycle requests do to agents: upstream's flag guard, pre-sync, stop and start.

An agent asks for an action by setting ``requesting_<action>: true`` in its state
file; :func:`check_flag` refuses to act without it and :func:`clear_flag` removes it
afterwards, keeping every other key. State files are only read and written inside
the town, never through a link that leads out of it.
"""

from __future__ import annotations

import logging
import os
import pathlib
import typing as t

from gtd import agents, proc, store
from gtd.exc import RequestError, StateError
from gtd.identities import Identity, parse_identity

if t.TYPE_CHECKING:
    from gtd.config import Config
    from gtd.tmux import Tmux

logger = logging.getLogger(__name__)

ACTIONS = {"shutdown": "shutdown", "stop": "shutdown", "cycle": "cycle", "restart": "restart"}
"""Accepted actions, each mapped to the one whose ``requesting_<action>`` flag it needs."""
PRESYNC_TIMEOUT = 60.0
PRESYNC_STEPS: tuple[tuple[str, ...], ...] = (
    ("git", "fetch", "origin"),
    ("git", "pull", "--rebase", "origin", "main"),
    ("bd", "sync"),
)


def shown(value: object) -> str:
    """Untrusted text, made safe and short for a log line or field."""
    text = value if isinstance(value, str) else repr(value)
    return text[:100] if text.isascii() and text.isprintable() else repr(text)[:100]


def canonical_action(action: object) -> str:
    """*action* in lower case. Raises RequestError unless it is one of :data:`ACTIONS`."""
    if not isinstance(action, str) or action.lower() not in ACTIONS:
        shown = repr(action[:40]) if isinstance(action, str) else type(action).__name__
        msg = f"unknown action {shown} (expected one of: {', '.join(ACTIONS)})"
        raise RequestError(msg)
    return action.lower()


def flag_key(action: str) -> str:
    """The state-file flag an action needs: ``stop`` is an alias of ``shutdown``."""
    return f"requesting_{ACTIONS[canonical_action(action)]}"


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


def check_flag(town: pathlib.Path, identity: Identity, action: str) -> None:
    """Upstream's guard. Raises RequestError unless the state file has the flag true."""
    path, key = state_file(town, identity), flag_key(action)
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


def clear_flag(town: pathlib.Path, identity: Identity, action: str) -> bool:
    """Remove ``requesting_<action>`` and ``requesting_time``, keeping every other key.

    Idempotent: without the flag nothing is written. Returns whether it wrote. Raises
    OSError when the atomic rewrite fails (the old file stays intact).
    """
    path, key = state_file(town, identity), flag_key(action)
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


def set_request_flag(town: pathlib.Path, identity: str, action: str) -> pathlib.Path:
    """Set ``requesting_<action>: true`` and ``requesting_time``; return the file's path.

    For ``gtd request --force``. Other keys are kept; a missing file (and directory)
    is created. Raises IdentityError/RequestError for bad input, StateError when the
    file exists but is not a JSON object (it is left alone).
    """
    ident, act = parse_identity(identity), canonical_action(action)
    path = ident.state_file(town)
    path.parent.mkdir(parents=True, exist_ok=True)
    path = state_file(town, ident)
    try:
        state = store.read_json_object(path)
    except FileNotFoundError:
        state = {}
    store.write_json(path, state | {flag_key(act): True, "requesting_time": store.now_iso()})
    return path


def daemon_env() -> dict[str, str]:
    """The environment of commands gtd runs for itself: no identity, ``BD_ACTOR=daemon``."""
    env = {k: v for k, v in os.environ.items() if k not in agents.AGENT_UNSET}
    return env | {"BD_ACTOR": "daemon", "GIT_TERMINAL_PROMPT": "0"}


def presync(identity: Identity, workdir: pathlib.Path, tick: t.Callable[[], None]) -> None:
    """Run :data:`PRESYNC_STEPS` in *workdir*, each bounded; a failing step is only logged."""
    for argv in PRESYNC_STEPS:
        tick()
        extra = {"GTD_IDENTITY": identity.dash, "GTD_STEP": " ".join(argv)}
        try:
            res = proc.run(argv, timeout=PRESYNC_TIMEOUT, cwd=workdir, env=daemon_env())
        except (OSError, proc.Timeout) as err:
            logger.warning("pre-sync %s: %s", " ".join(argv), err, extra=extra)
            continue
        if res.returncode != 0:
            tail = (res.stderr.strip() or res.stdout.strip())[-300:]
            logger.warning("pre-sync %s: exit %d: %s", argv[0], res.returncode, tail, extra=extra)
    tick()


def act(
    config: Config, tmux: Tmux, identity: Identity, action: str, tick: t.Callable[[], None]
) -> None:
    """Stop the agent, or (pre-sync and) start it again in its pane.

    Stopping an agent that is not running succeeds: there is nothing left to stop.

    Raises
    ------
    RequestError
        The workdir of a restart is missing.
    TmuxError
        tmux failed or timed out (worth retrying).
    """
    if ACTIONS[action] == "shutdown":
        agents.stop_agent(tmux, identity)
        return
    workdir = identity.workdir(config.town_root)
    if not workdir.is_dir():
        msg = f"workdir of {identity.dash} does not exist: {workdir}"
        raise RequestError(msg)
    if identity.presync:
        presync(identity, workdir, tick)
    try:
        agents.start_agent(tmux, identity, config)
    except agents.WorkdirMissing as err:
        raise RequestError(str(err)) from None
