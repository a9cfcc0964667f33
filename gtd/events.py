"""The events an operator acts on, each with a fixed journal ``MESSAGE_ID``.

``journalctl --user -x -u gastown-daemon`` explains an entry that carries one of
these ids from the catalog the packages install (``packaging/gtd.catalog``, built
from :data:`CATALOG` by ``packaging/generate.py``). Log an event with
``logger.warning("...", extra=events.fields(Event.AGENT_DIED, GTD_IDENTITY=...))``.
The ids never change: scripts filter on them (``journalctl MESSAGE_ID=...``).
"""

from __future__ import annotations

import enum
import typing as t


class Event(enum.Enum):
    """One kind of operator-relevant event; the value is its ``MESSAGE_ID``."""

    AGENT_STARTED = "eb1968e991fa4454a4185ae67063ca48"
    AGENT_DIED = "6edb5260731547eabe02597496d25585"
    CRASH_LOOP = "7980ea52d6394940bd982a98721d7de8"
    POKE_NOT_DELIVERED = "cbd960eade2f4c78809770a4f8267a3d"
    AGENT_DIALOG = "7191c252c4bb4c998556eb690400ad38"
    AGENT_LIMITED = "b841fd6ef3a84dbcb2f7d543ee496ac4"
    REQUEST_DONE = "2bef37f815364cedbb0108c004fb70d9"
    REQUEST_FAILED = "650173986f924e1d8a8f892e80a63ae2"
    RELOAD_REFUSED = "0b4659d9d25145daaa4630795bb28fb3"
    COMMAND_NOT_FOUND = "b16446bac40849298d6667ab34247d87"
    SANDBOX_DENIED = "08d3eeafcbdb4a69b441726e895743f1"
    UPGRADE_PENDING = "f40f4af769a2454d8f0b79f016b05e3d"


def fields(event: Event, **extra: object) -> dict[str, object]:
    """The ``extra=`` of a log call for *event*: its ``MESSAGE_ID`` plus *extra*.

    >>> fields(Event.AGENT_DIED, GTD_IDENTITY="deacon")["MESSAGE_ID"]
    '6edb5260731547eabe02597496d25585'
    """
    return {"MESSAGE_ID": event.value, **extra}


class Entry(t.NamedTuple):
    """One catalog entry: a subject line and what happened / what to do."""

    subject: str
    body: str


CATALOG: dict[Event, Entry] = {
    Event.AGENT_STARTED: Entry(
        "Gas Town agent @GTD_IDENTITY@ started",
        "gtd started the agent @GTD_IDENTITY@ in tmux session @GTD_SESSION@ "
        "(pane @GTD_PANE@, pid @GTD_AGENT_PID@).\n\n"
        "Nothing to do. Attach with: tmux attach -t @GTD_SESSION@",
    ),
    Event.AGENT_DIED: Entry(
        "Gas Town agent @GTD_IDENTITY@ is not alive",
        "The agent @GTD_IDENTITY@ exited or went back to a shell. gtd starts it again "
        "at once unless its crash-loop guard holds it back.\n\n"
        "If it keeps dying, read the pane's last output: "
        "tmux capture-pane -p -t @GTD_SESSION@",
    ),
    Event.CRASH_LOOP: Entry(
        "Gas Town agent @GTD_IDENTITY@ is crash-looping",
        "The agent @GTD_IDENTITY@ died soon after each of its recent starts. gtd waits "
        "longer before each new start (up to 5 minutes) and never gives up; one healthy "
        "start clears the count.\n\n"
        "Check the agent command (gtd config check), its PATH and its secrets file, "
        "and the pane: tmux capture-pane -p -t @GTD_SESSION@",
    ),
    Event.POKE_NOT_DELIVERED: Entry(
        "Heartbeat poke to @GTD_IDENTITY@ not delivered",
        "gtd could not confirm that the HEARTBEAT message reached the agent "
        "@GTD_IDENTITY@ as its own turn; it is not counted as delivered and the next "
        "heartbeat tries again. Nothing a person typed was sent or lost.\n\n"
        "If this repeats, look at the agent: tmux attach -t @GTD_SESSION@",
    ),
    Event.AGENT_DIALOG: Entry(
        "Gas Town agent @GTD_IDENTITY@ waits at a dialog",
        "The agent @GTD_IDENTITY@ shows a dialog, menu or login screen "
        "(@GTD_CONDITION_DETAIL@). gtd never answers one: it neither types nor presses "
        "Enter there, and it does not poke the agent until the dialog is gone.\n\n"
        "Answer it yourself: tmux attach -t @GTD_SESSION@. For the folder-trust "
        "dialog of the town's workdirs, see gtd(1), 'gtd trust'.",
    ),
    Event.AGENT_LIMITED: Entry(
        "Gas Town agent @GTD_IDENTITY@ is at a usage or rate limit",
        "The agent @GTD_IDENTITY@ reports a usage or rate limit "
        "(@GTD_CONDITION_DETAIL@). This is not a crash: gtd neither restarts nor pokes "
        "it until the limit resets.\n\n"
        "Nothing to do but wait, or change the agent's plan or API key.",
    ),
    Event.REQUEST_DONE: Entry(
        "Lifecycle request @GTD_REQUEST_ID@ done",
        "gtd carried out @GTD_ACTION@ for @GTD_IDENTITY@ (request @GTD_REQUEST_ID@).",
    ),
    Event.REQUEST_FAILED: Entry(
        "Lifecycle request @GTD_REQUEST_ID@ failed",
        "gtd could not carry out @GTD_ACTION@ for @GTD_IDENTITY@ (request "
        "@GTD_REQUEST_ID@). The request and the reason are kept in "
        "<town>/daemon/lifecycle/failed/ and shown by 'gtd status'.\n\n"
        "Fix the cause (often: the agent did not set requesting_<action> in its state "
        "file) and queue it again with 'gtd request'.",
    ),
    Event.RELOAD_REFUSED: Entry(
        "gtd refused to reload its configuration",
        "The new configuration is invalid; gtd keeps running on the previous one.\n\n"
        "Run 'gtd config check', fix what it names, then "
        "'systemctl --user reload gastown-daemon'.",
    ),
    Event.COMMAND_NOT_FOUND: Entry(
        "gtd cannot find the command @GTD_COMMAND@",
        "The command @GTD_COMMAND@ is not in the PATH the service searches "
        "(@GTD_PATH@). Units started by the user manager do not read your shell's "
        "profile.\n\n"
        "Install the command there, or set PATH in the agent environment file "
        "(see gtd(1), ENVIRONMENT), then 'systemctl --user restart gastown-daemon'.",
    ),
    Event.SANDBOX_DENIED: Entry(
        "A helper of gtd was refused a write by the service's sandbox",
        "The service may write only to the town root. @GTD_COMMAND@ tried to write "
        "elsewhere and got 'Read-only file system'.\n\n"
        "Allow the path: systemctl --user edit gastown-daemon, add\n"
        "  [Service]\n  ReadWritePaths=/the/path\n"
        "then systemctl --user restart gastown-daemon.",
    ),
    Event.UPGRADE_PENDING: Entry(
        "A newer gtd is installed than the one running",
        "The installed gtd is @GTD_INSTALLED_VERSION@; the service still runs "
        "@GTD_RUNNING_VERSION@. gtd does not restart itself.\n\n"
        "Apply it: systemctl --user daemon-reload && "
        "systemctl --user restart gastown-daemon (agents keep running).",
    ),
}
