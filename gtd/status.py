"""``gtd status``: what systemd, ``state.json``, tmux and the spool say, in one view.

:func:`gather` collects it into one JSON-able dict whose top-level keys are SPEC's
(``service``, ``state``, ``agents``, ``lifecycle``; docs/status.md documents
every key); :func:`render` prints it for a person, in the spirit of
``systemctl status``. Nothing here writes anything.
"""

from __future__ import annotations

import contextlib
import datetime
import typing as t

from gtd import __version__, agents, store, systemd
from gtd.exc import GtdError
from gtd.identities import Identity, identity_from_session
from gtd.spool import Spool

if t.TYPE_CHECKING:
    from gtd.config import Config
    from gtd.tmux import PaneInfo, Tmux

SERVICE_PROPS = ("ActiveState", "SubState", "MainPID", "StatusText", "NRestarts", "Result")
SINCE_PROP = "ActiveEnterTimestamp"
Json: t.TypeAlias = dict[str, t.Any]
Observer: t.TypeAlias = "t.Callable[[Tmux, PaneInfo], tuple[str, str] | None]"
"""Reads an agent's screen: ``(condition, detail)``, or None when it cannot tell."""


def service() -> Json:
    """The daemon unit as the user manager sees it; ``error`` set when it does not answer."""
    try:
        props = systemd.show(systemd.DAEMON_UNIT, *SERVICE_PROPS)
        since = systemd.show(systemd.DAEMON_UNIT, SINCE_PROP, timestamp="unix")
    except GtdError as err:
        return {"unit": systemd.DAEMON_UNIT, "active_state": "unknown", "error": str(err)}
    stamp = since.get(SINCE_PROP, "").removeprefix("@")
    return {
        "unit": systemd.DAEMON_UNIT,
        "active_state": props.get("ActiveState", "unknown"),
        "sub_state": props.get("SubState", ""),
        "main_pid": _int(props.get("MainPID")),
        "status_text": props.get("StatusText", ""),
        "restarts": _int(props.get("NRestarts")),
        "result": props.get("Result", ""),
        "since": store.iso(int(stamp)) if stamp.isdigit() and int(stamp) else None,
    }


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0


def daemon_state(config: Config) -> tuple[Json, store.DaemonState | None]:
    """``state.json``'s upstream keys, and the whole record (None when absent or unreadable)."""
    path = store.state_path(config.town_root)
    try:
        raw = store.read_json_object(path)
    except FileNotFoundError:
        return {"path": str(path), "error": "does not exist yet"}, None
    except GtdError as err:
        return {"path": str(path), "error": f"unreadable: {err}"}, None
    state = store.DaemonState.from_json(raw)
    keys = ("running", "pid", "started_at", "last_heartbeat", "heartbeat_count", "version")
    return {"path": str(path)} | {k: getattr(state, k) for k in keys}, state


def agent_rows(
    config: Config,
    panes: t.Sequence[PaneInfo],
    records: t.Mapping[str, t.Any],
    tmux: Tmux,
    observe: Observer | None = None,
) -> list[Json]:
    """Every supervised agent, then every other agent session the server has."""
    known: list[Identity] = list(config.supervise.agents)
    for pane in panes:
        identity = identity_from_session(pane.session_name)
        if identity is not None and identity not in known:
            known.append(identity)
    rows = []
    for identity in known:
        view = agents.view(panes, identity, config)
        record = records.get(identity.dash)
        record = record if isinstance(record, dict) else {}
        rows.append(_row(config, view, record, tmux, observe))
    return rows


def _row(
    config: Config,
    view: agents.AgentView,
    record: t.Mapping[str, t.Any],
    tmux: Tmux,
    observe: Observer | None,
) -> Json:
    identity, pane = view.identity, view.pane
    supervised = identity in config.supervise.agents
    condition, detail = str(record.get("condition") or "dead"), str(record.get("detail") or "")
    backoff_until = record.get("backoff_until") or None
    if not view.alive:
        if record.get("held"):
            condition, detail = "stopped", "stopped on request"
        elif condition != "backoff" or not supervised:
            condition = "dead" if pane is not None or supervised else "stopped"
    else:
        backoff_until = None
        if condition in ("dead", "backoff", "stopped"):
            condition, detail = "starting", ""
        if pane is not None and observe is not None:
            with contextlib.suppress(GtdError):
                if (seen := observe(tmux, pane)) is not None:
                    condition, detail = seen
    return {
        "identity": identity.dash,
        "session": identity.session,
        "pane": pane.pane_id if pane else None,
        "pid": view.pid if view.alive else None,
        "alive": view.alive,
        "condition": condition,
        "detail": detail,
        "since": record.get("since") or None,
        "restarts": record.get("restarts") if type(record.get("restarts")) is int else 0,
        "backoff_until": backoff_until,
        "supervised": supervised,
        "poked": identity in config.supervise.poke,
        "command": pane.current_command if pane else None,
        "hint": _hint(identity, condition, detail),
    }


def _hint(identity: Identity, condition: str, detail: str) -> str | None:
    """What a person can do about a waiting agent, when gtd knows."""
    if condition == "dialog" and "trust" in detail:
        return f"gtd trust {identity.dash} accepts the folder-trust dialog for its workdir"
    if condition == "dialog":
        return f"answer it yourself: tmux attach -t {identity.session}"
    return None


def gather(config: Config, tmux: Tmux, observe: Observer | None = None) -> Json:
    """The whole status as one JSON-able dict (docs/status.md)."""
    svc = service() | {"version": __version__}
    state, record = daemon_state(config)
    try:
        panes = tmux.list_panes()
        tmux_error = None
    except GtdError as err:
        panes, tmux_error = [], str(err)
    rows = agent_rows(config, panes, record.agents if record else {}, tmux, observe)
    spool = Spool(config.town_root)
    failed = [
        {k: rec.get(k) for k in ("id", "identity", "action", "reason", "failed_at")}
        for rec in spool.failed()
    ]
    out: Json = {
        "service": svc,
        "state": state,
        "agents": rows,
        "lifecycle": {"pending": spool.pending(), "failed": failed},
    }
    if tmux_error is not None:
        out["tmux"] = {"socket": tmux.socket, "error": tmux_error}
    return out


def _ago(iso: str | None, now: datetime.datetime) -> str:
    """``15:04:05 (2min ago)`` for an ISO time; ``-`` for none."""
    if not iso:
        return "-"
    try:
        when = datetime.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    seconds = max(0, int((now - when).total_seconds()))
    if seconds < 60:
        ago = f"{seconds}s"
    elif seconds < 3600:
        ago = f"{seconds // 60}min"
    elif seconds < 86400:
        ago = f"{seconds // 3600}h {seconds % 3600 // 60}min"
    else:
        ago = f"{seconds // 86400}d"
    local = when.astimezone()
    shown = local.strftime("%H:%M:%S") if seconds < 86400 else local.strftime("%Y-%m-%d %H:%M")
    return f"{shown} ({ago} ago)"


def render(status: Json, now: datetime.datetime | None = None) -> str:
    """The status for a person: the unit, the heartbeat, one line per agent, requests."""
    now = now or datetime.datetime.now(datetime.UTC)
    svc, state, lines = status["service"], status["state"], []
    if "error" in svc:
        lines.append(f"{svc['unit']}: user manager unavailable: {svc['error']}")
    else:
        lines.append(
            f"{svc['unit']}: {svc['active_state']} ({svc['sub_state'] or '?'}), "
            f"main PID {svc['main_pid']}, restarts {svc['restarts']}, result {svc['result'] or '?'}"
        )
        lines.append(f"  since: {_ago(svc['since'], now)}")
        if svc["status_text"]:
            lines.append(f"  status: {svc['status_text']}")
    running = state.get("version") if state.get("running") else None
    if running and running != svc["version"]:
        lines.append(
            f"  version: gtd {svc['version']} installed; the daemon runs {running} "
            "(systemctl --user restart gastown-daemon applies it)"
        )
    else:
        lines.append(f"  version: gtd {svc['version']}")
    if "error" in state:
        lines.append(f"state: {state['path']} {state['error']}")
    else:
        lines.append(
            f"state: running={str(state['running']).lower()} pid={state['pid']} "
            f"started_at={state['started_at'] or '-'} "
            f"last_heartbeat={_ago(state['last_heartbeat'], now)} "
            f"heartbeat_count={state['heartbeat_count']}"
        )
    if "tmux" in status:
        lines.append(f"tmux: unavailable: {status['tmux']['error']}")
    lines += [_agent_line(row, now) for row in status["agents"]]
    if not status["agents"]:
        lines.append("agents: none")
    lifecycle = status["lifecycle"]
    lines.append(
        f"lifecycle: {len(lifecycle['pending'])} pending, {len(lifecycle['failed'])} failed"
    )
    lines += [f"  failed {r['id']}: {r['reason']}" for r in lifecycle["failed"][-5:]]
    return "\n".join(lines) + "\n"


def _agent_line(row: Json, now: datetime.datetime) -> str:
    where = f"session {row['session']}"
    if row["pane"] is None:
        where += " (none)"
    else:
        where += f" pane {row['pane']} pid {row['pid'] or '-'} command {row['command'] or '-'}"
    text = f"{row['identity']}: {where} {'alive' if row['alive'] else 'NOT alive'}"
    text += f", {row['condition']}"
    if row["detail"]:
        text += f" ({row['detail']})"
    if row["backoff_until"]:
        text += f", next start at {_ago(row['backoff_until'], now).split(' (')[0]}"
    elif row["since"]:
        text += f" since {_ago(row['since'], now)}"
    if row["supervised"]:
        text += f", restarts {row['restarts']}" + (", poked" if row["poked"] else "")
    else:
        text += ", not supervised"
    if row["hint"]:
        text += f"\n  -> {row['hint']}"
    return text
