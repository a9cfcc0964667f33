"""``gtd status`` as a person reads it: rendered from a report, with a fixed clock."""

from __future__ import annotations

import datetime
import typing as t

from gtd import status

NOW = datetime.datetime(2026, 11, 27, 15, 10, tzinfo=datetime.UTC)


def report() -> dict[str, t.Any]:
    """A report as :func:`gtd.status.gather` builds it (docs/status.md's example)."""
    agent = {"identity": "deacon", "session": "gt-deacon", "pane": "%0", "pid": 4720,
             "alive": True, "condition": "dialog", "detail": "folder-trust dialog",
             "since": "2026-11-27T15:09:30+00:00", "restarts": 2, "backoff_until": None,
             "supervised": True, "poked": True, "command": "claude",
             "hint": "gtd trust deacon accepts the folder-trust dialog for its workdir",
             }  # fmt: skip
    witness = agent | {"identity": "gastown-witness", "session": "gt-gastown-witness",
                       "pane": None, "pid": None, "alive": False, "condition": "backoff",
                       "detail": "crash-looping (3 quick exits), next start in 4s",
                       "backoff_until": "2026-11-27T15:10:04+00:00", "poked": False,
                       "command": None, "hint": None, "restarts": 3}  # fmt: skip
    return {
        "service": {
            "unit": "gastown-daemon.service",
            "active_state": "active",
            "sub_state": "running",
            "main_pid": 4711,
            "status_text": "deacon running",
            "restarts": 0,
            "result": "success",
            "since": "2026-11-27T14:10:00+00:00",
            "version": "0.2.0",
        },
        "state": {
            "path": "/t/daemon/state.json",
            "running": True,
            "pid": 4711,
            "started_at": "2026-11-27T14:10:00+00:00",
            "last_heartbeat": "2026-11-27T15:05:00+00:00",
            "heartbeat_count": 12,
            "version": "0.2.0",
        },
        "agents": [agent, witness],
        "lifecycle": {"pending": ["a"], "failed": [{"id": "b", "reason": "flag not set"}]},
    }


def test_render_reads_like_systemctl_status() -> None:
    """State since when, the last heartbeat and how long ago, each agent, the requests."""
    lines = status.render(report(), NOW).splitlines()
    assert lines[0] == (
        "gastown-daemon.service: active (running), main PID 4711, restarts 0, result success"
    )
    assert "  since: " in lines[1]
    assert "(1h 0min ago)" in lines[1]
    assert "last_heartbeat=" in lines[4]
    assert "(5min ago)" in lines[4]
    deacon = next(line for line in lines if line.startswith("deacon: "))
    assert "pane %0 pid 4720 command claude alive, dialog (folder-trust dialog) since" in deacon
    assert "(30s ago), restarts 2, poked" in deacon
    assert "  -> gtd trust deacon accepts the folder-trust dialog for its workdir" in lines
    witness = next(line for line in lines if line.startswith("gastown-witness: "))
    assert "session gt-gastown-witness (none) NOT alive, backoff" in witness
    assert ", next start at " in witness
    assert ", restarts 3" in witness
    assert "lifecycle: 1 pending, 1 failed" in lines
    assert "  failed b: flag not set" in lines


def test_render_says_when_an_upgrade_waits_for_a_restart() -> None:
    """An installed gtd newer than the running daemon is named with how to apply it."""
    old = report()
    old["state"]["version"] = "0.1.0"
    text = status.render(old, NOW)
    assert "gtd 0.2.0 installed; the daemon runs 0.1.0" in text
    assert "systemctl --user restart gastown-daemon" in text


def test_render_without_a_user_manager() -> None:
    """No manager answering is said on the first line; the rest still shows."""
    broken = report()
    broken["service"] = {"unit": "gastown-daemon.service", "active_state": "unknown",
                         "error": "no answer", "version": "0.2.0"}  # fmt: skip
    lines = status.render(broken, NOW).splitlines()
    assert "gastown-daemon.service: user manager unavailable: no answer" == lines[0]
    assert any(line.startswith("deacon: ") for line in lines)
