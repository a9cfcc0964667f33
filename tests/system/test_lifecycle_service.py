"""Lifecycle requests through the running service: immediate on USR1, never lost."""

from __future__ import annotations

import collections
import json
import pathlib
import typing as t

from tests.sandbox import wait_equal, wait_for
from tests.system.towns import DAEMON, Town

ENQUEUE = """
import pathlib, sys, json
from gtd import actions, lifecycle
from gtd.identities import parse_identity
from gtd.request import parse_action
from gtd.spool import Spool
town, count, action = pathlib.Path(sys.argv[1]), int(sys.argv[2]), parse_action(sys.argv[3])
ids = []
for i in range(count):
    ident = parse_identity(f"r-crew-n{i}")
    actions.set_request_flag(town, ident, action)
    ids.append(lifecycle.submit(Spool(town), ident, action, sender="bench").id)
print(json.dumps(ids))
"""


def enqueue_many(town: Town, count: int, action: str = "shutdown") -> list[str]:
    """Queue *count* requests for distinct crew identities, with their flags set, as the user."""
    python = str(town.venv / "bin" / "python")
    out = town.um.run(python, "-c", ENQUEUE, str(town.root), str(count), action, timeout=120)
    ids: list[str] = json.loads(out.stdout)
    return ids


def spooled(town: Town) -> list[str]:
    """The requests still in the spool (``new/`` and ``cur/``), as ``dir/name``."""
    base = town.root / "daemon" / "lifecycle"
    return [
        f"{d}/{p.name}" for d in ("new", "cur") if (base / d).exists() for p in (base / d).iterdir()
    ]


def wait_spool_empty(town: Town, timeout: float) -> None:
    wait_for(
        lambda: spooled(town), lambda left: not left, timeout=timeout, interval=0.2,
        what="an empty spool (new/ and cur/)", context=lambda: town.messages()[-10:],
    )  # fmt: skip


def wait_outcomes(
    town: Town, ids: t.Iterable[str], want: t.Mapping[str, int], timeout: float, *, exact: bool
) -> None:
    """Wait until the journal shows the outcome counts *want* for every one of *ids*.

    With *exact* no other outcome may show for them; else only those in *want* count.
    On timeout the message lists the requests whose counts were still wrong.
    """

    def wrong() -> dict[str, dict[str, int]]:
        seen = outcomes(town)
        got = {rid: seen[rid] if exact else {k: seen[rid][k] for k in want} for rid in ids}
        return {rid: dict(counts) for rid, counts in got.items() if counts != want}

    what = f"{dict(want)} {'exactly ' if exact else ''}for each request"
    assert {} == wait_equal({}, wrong, timeout=timeout, interval=0.2, what=what)


def outcomes(town: Town) -> dict[str, collections.Counter[str]]:
    """Journal outcomes per request id since the test began."""
    seen: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for entry in town.journal():
        rid, outcome = entry.get("GTD_REQUEST_ID"), entry.get("GTD_OUTCOME")
        if isinstance(rid, str) and isinstance(outcome, str):
            seen[rid][outcome] += 1
    return seen


def failed(town: Town) -> list[pathlib.Path]:
    base = town.root / "daemon" / "lifecycle" / "failed"
    return sorted(base.iterdir()) if base.exists() else []


def test_gtd_request_cycles_the_deacon_at_once(town: Town) -> None:
    """`gtd request deacon cycle --force` restarts the deacon now, not at the heartbeat."""
    town.start()
    old = town.deacon_pid()
    beats = wait_for(town.heartbeats, lambda n: n >= 1, what="the first heartbeat")
    rid = town.gtd_cmd("request", "deacon", "cycle", "--force").strip()
    town.new_deacon(old)
    wait_outcomes(town, [rid], {"done": 1}, timeout=30, exact=False)
    assert beats == town.heartbeats()  # the request was carried out, not the heartbeat
    state = json.loads((town.root / "deacon" / "state.json").read_text())
    assert "requesting_cycle" not in state
    assert [] == spooled(town)


def test_usr1_processes_a_queued_request(town: Town) -> None:
    """A request put in the spool is carried out on `systemctl --user kill -s USR1`."""
    town.start()
    beats = wait_for(town.heartbeats, lambda n: n >= 1, what="the first heartbeat")
    [rid] = enqueue_many(town, 1)
    town.um.systemctl("kill", "-s", "USR1", DAEMON)
    wait_outcomes(town, [rid], {"done": 1}, timeout=30, exact=False)
    assert [] == spooled(town)
    assert beats == town.heartbeats()  # on USR1, not at the heartbeat 300 s away


def test_thousand_requests_and_usr1_burst_each_once(town: Town) -> None:
    """1,000 requests and a burst of USR1 signals: each request is done exactly once."""
    town.start()
    ids = enqueue_many(town, 1000)
    for _ in range(30):
        town.um.systemctl("kill", "-s", "USR1", DAEMON)
    wait_spool_empty(town, 180)
    wait_outcomes(town, ids, {"done": 1}, timeout=60, exact=True)
    assert [] == failed(town)
    assert "active" == town.show("ActiveState")["ActiveState"]


def test_kill_9_mid_processing_loses_nothing(town: Town) -> None:
    """SIGKILL while requests are processed: systemd restarts it and every request completes."""
    town.start()
    ids = enqueue_many(town, 400)
    main = town.main_pid()
    town.um.systemctl("kill", "-s", "USR1", DAEMON)
    wait_for(lambda: len(outcomes(town)), lambda n: n >= 20, timeout=60, interval=0.2)
    town.um.systemctl("kill", "-s", "KILL", DAEMON)
    wait_for(town.main_pid, lambda pid: pid not in (0, main), timeout=30)
    wait_spool_empty(town, 180)
    assert int(town.show("NRestarts")["NRestarts"]) >= 1
    assert [] == failed(town)
    left: list[t.Any] = []
    for i in range(len(ids)):
        state = town.root / "r" / "crew" / f"n{i}" / "state.json"
        if json.loads(state.read_text()):
            left.append(state)
    assert [] == left  # every flag cleared: every request was carried out


def test_bad_requests_are_journaled_and_failed(town: Town) -> None:
    """Malformed and hostile requests: a journal line with the id each, failed/, still healthy."""
    town.start()
    new = town.root / "daemon" / "lifecycle" / "new"
    cases = {
        "00000000000000000001-0000000a": b"{not json",
        "00000000000000000002-0000000b": json.dumps(
            {"id": "00000000000000000002-0000000b", "identity": "a;rm -rf ~",
             "action": "cycle", "created_at": "x", "from": "t"}
        ).encode(),
        "00000000000000000003-0000000c": json.dumps(
            {"id": "00000000000000000003-0000000c", "identity": "mayor",
             "action": "explode", "created_at": "x", "from": "t"}
        ).encode(),
        "00000000000000000004-0000000d": b"\xff\xfe\x00binary",
    }  # fmt: skip
    for rid, data in cases.items():
        path = town.um.write_file((new / f"{rid}.json").relative_to(town.um.home), "")
        path.write_bytes(data)
    town.um.systemctl("kill", "-s", "USR1", DAEMON)
    # Each is logged after its file left new/, so the journal is the last thing to wait on.
    wait_outcomes(town, cases, {"failed": 1}, timeout=30, exact=False)
    assert sorted(f"{rid}.json" for rid in cases) == [p.name for p in failed(town)]
    for path in failed(town):
        assert json.loads(path.read_text())["reason"]
    assert "active" == town.show("ActiveState")["ActiveState"]
