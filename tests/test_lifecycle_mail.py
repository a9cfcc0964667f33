"""Lifecycle requests from ``gt mail`` (gtd.mail): parsing as upstream does, import, delete.

``gt`` is ``tests/fakegt/gt``, a script serving an inbox file and logging its calls.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
import typing as t

import pytest

from gtd import agents, lifecycle, mail
from gtd.identities import parse_identity
from gtd.request import Refused, Request, file_id
from gtd.spool import spool_dir
from gtd.tmux import Tmux
from tests.conftest import HAVE_TMUX, FakeAgent, TmuxServer
from tests.sandbox import retry_until
from tests.test_lifecycle import (
    LEAKS,
    enqueue,
    failed,
    field,
    make_config,
    names,
    outcomes,
    pending,
    processor,
    run,
    set_flag,
    starts,
)

FAKE_GT = pathlib.Path(__file__).parent / "fakegt" / "gt"
needs_tmux = pytest.mark.skipif(not HAVE_TMUX, reason="tmux is not installed")


class FakeGt(t.NamedTuple):
    inbox: pathlib.Path
    calls_file: pathlib.Path

    def post(self, *messages: dict[str, t.Any]) -> None:
        self.inbox.write_text(json.dumps(list(messages)))

    def messages(self) -> list[dict[str, t.Any]]:
        return t.cast("list[dict[str, t.Any]]", json.loads(self.inbox.read_text()))

    def calls(self) -> list[dict[str, t.Any]]:
        if not self.calls_file.exists():
            return []
        return [json.loads(line) for line in self.calls_file.read_text().splitlines()]

    def deletes(self) -> list[str]:
        return [c["argv"][2] for c in self.calls() if c["argv"][:2] == ["mail", "delete"]]


@pytest.fixture
def gt(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> FakeGt:
    fake = FakeGt(tmp_path / "inbox.json", tmp_path / "gt-calls.jsonl")
    fake.post()
    monkeypatch.setenv("FAKE_GT_INBOX", str(fake.inbox))
    monkeypatch.setenv("FAKE_GT_CALLS", str(fake.calls_file))
    for name, value in LEAKS.items():
        monkeypatch.setenv(name, value)
    return fake


def message(
    mail_id: str, sender: str, body: str, subject: str = "LIFECYCLE: please"
) -> dict[str, t.Any]:
    return {"id": mail_id, "from": sender, "to": "deacon/", "subject": subject, "body": body,
            "read": False, "priority": "normal", "type": "message"}  # fmt: skip


# -- pure ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [('{"action": "cycle"}', "cycle"), ('{"Action": "RESTART"}', "restart"),
     ('{"action": "stop"}', "stop"), ("restart", "restart"), ("  Action: Restart \n", "restart"),
     ("SHUTDOWN", "shutdown"), ("action: shutdown", "shutdown"), ("stop", "shutdown"),
     ("cycle", "cycle"), ("action: cycle", "cycle"), ("action: stop", None),
     ("please restart", None), ('{"action": 5}', None), ('{"action": "explode"}', None),
     ('"restart"', None), ("", None), ("[" * 5000, None)],
)  # fmt: skip
def test_body_action_accepts_what_upstream_accepts(body: str, expected: str | None) -> None:
    """JSON ``{"action": ...}`` or upstream's plain words, trimmed and case-insensitive."""
    assert expected == mail.body_action(body)


def test_mail_record_shapes() -> None:
    """Other subjects and read mail are not requests; odd ids get a clean spool id."""
    now = "2025-01-01T00:00:00+00:00"
    assert mail.mail_request(message("a", "mayor/", "cycle", subject="hello"), now) is None
    assert mail.mail_request(message("a", "mayor/", "cycle") | {"read": True}, now) is None
    rec = mail.mail_request(message("hq-1.2", "gastown/witness", "cycle", "lifecycle: x"), now)
    assert isinstance(rec, Request)
    assert rec.id.startswith("mail-hq-1_2-")
    assert file_id(rec.id + ".json") == rec.id
    assert ("gastown/witness", "cycle", "hq-1.2") == (
        rec.sender,
        rec.action.value,
        rec.mail_id,
    )
    assert "gastown-witness" == rec.identity.dash
    bad = mail.mail_request(message("hq-3", "gastown/witness", "please"), now)
    assert isinstance(bad, Refused)
    assert ("mail-hq-3", "hq-3") == (bad.id, bad.mail_id)
    with pytest.raises(ValueError, match="unusable id"):
        mail.mail_request(message("-rf", "mayor/", "cycle"), now)


def test_parse_inbox_refuses_what_is_not_a_list() -> None:
    """Empty output is an empty inbox; objects, garbage and deep nesting are errors."""
    assert [] == mail.parse_inbox("\n")
    for bad in ('{"id": 1}', "not json", "[" * 5000):
        with pytest.raises(
            ValueError, match=r"expected a JSON list|Expecting value|nested too deeply"
        ):
            mail.parse_inbox(bad)


# -- with gt -----------------------------------------------------------------------


def test_json_body_cycles_the_agent_and_deletes_the_mail(
    gt: FakeGt,
    tmux_server: TmuxServer,
    fake_agent: FakeAgent,
    town: pathlib.Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    """The sender's agent is cycled; then ``gt mail delete``; every call runs as the daemon."""
    config = make_config(town, fake_agent, tmux_server.socket, gt=str(FAKE_GT))
    ident = parse_identity("gastown-witness")
    ident.workdir(town).mkdir(parents=True)
    before = agents.start_agent(Tmux(tmux_server.socket), ident, config).pane_pid
    # The first agent must be up before it is cycled, or there is no first START to count.
    assert retry_until(lambda: starts(fake_agent) == 1, 5)
    set_flag(town, "gastown-witness", "cycle", mood="ok")
    gt.post(message("hq-1", "gastown/witness", '{"action": "cycle"}'))
    run(None, config)
    pane = agents.agent_pane(Tmux(tmux_server.socket).list_panes(), ident)
    assert pane is not None
    assert pane.pane_pid != before
    assert retry_until(lambda: starts(fake_agent) == 2, 5)
    assert [] == gt.messages()
    assert {"mood": "ok"} == json.loads(ident.state_file(town).read_text())
    assert ["mail-hq-1"] == outcomes(logs, "done")
    calls = gt.calls()
    assert [["mail", "inbox", "--identity", "deacon/", "--json"], ["mail", "delete", "hq-1"]] == [
        c["argv"] for c in calls
    ]
    for call in calls:
        assert ("daemon", None) == (call["BD_ACTOR"], call["GT_ROLE"])
        assert town.resolve() == pathlib.Path(call["cwd"]).resolve()


@needs_tmux
def test_plain_word_body_is_done_and_other_mail_is_left_alone(
    gt: FakeGt, town: pathlib.Path, logs: pytest.LogCaptureFixture
) -> None:
    """``stop`` from ``mayor/`` shuts the mayor down; other mail is not deleted."""
    other = message("hq-2", "mayor/", "restart", subject="Re: lunch")
    gt.post(message("hq-1", "mayor/", " Stop\n", subject="lifecycle: bye"), other)
    set_flag(town, "mayor", "shutdown")
    run(None, make_config(town, gt=str(FAKE_GT)))
    assert ["mail-hq-1"] == outcomes(logs, "done")
    assert [other] == gt.messages()
    assert ["hq-1"] == gt.deletes()
    assert {} == json.loads(parse_identity("mayor").state_file(town).read_text())


@needs_tmux
def test_unparseable_lifecycle_mail_fails_and_is_deleted(
    gt: FakeGt, town: pathlib.Path, logs: pytest.LogCaptureFixture
) -> None:
    """A lifecycle mail whose body means nothing lands in failed/ with the body quoted."""
    gt.post(message("hq-9", "gastown/witness", "could you maybe restart?"))
    run(None, make_config(town, gt=str(FAKE_GT)))
    [record] = failed(town)
    assert ("mail-hq-9", "hq-9") == (record["id"], record["mail_id"])
    assert "unparseable lifecycle mail body 'could you maybe restart?'" == record["reason"]
    assert [] == gt.messages()
    assert ["mail-hq-9"] == outcomes(logs, "failed")


def test_a_failed_delete_is_retried_without_acting_again(
    gt: FakeGt,
    tmux_server: TmuxServer,
    fake_agent: FakeAgent,
    town: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
) -> None:
    """The action runs once; the request waits in cur/ (executed) until the delete works."""
    config = make_config(town, fake_agent, tmux_server.socket, gt=str(FAKE_GT))
    ident = parse_identity("gastown-witness")
    ident.workdir(town).mkdir(parents=True)
    set_flag(town, "gastown-witness", "restart")
    gt.post(message("hq-1", "gastown/witness", "restart"))
    monkeypatch.setenv("FAKE_GT_FAIL_DELETE", "1")
    lc = processor(config)
    run(lc, config)
    assert ["mail-hq-1"] == pending(town)
    cur = json.loads((spool_dir(town) / "cur" / "mail-hq-1.json").read_text())
    assert (True, 1) == (cur["executed"], cur["attempts"])
    assert retry_until(lambda: starts(fake_agent) == 1, 5)
    monkeypatch.setenv("FAKE_GT_FAIL_DELETE", "0")
    run(processor(config), config)  # helpers get the environment a processor is made with
    assert ([], [], []) == (pending(town), failed(town), gt.messages())
    assert ["mail-hq-1"] == outcomes(logs, "done")
    assert ["hq-1", "hq-1"] == gt.deletes()
    assert 1 == starts(fake_agent)


@needs_tmux
def test_a_delete_that_keeps_failing_is_bounded(
    gt: FakeGt, town: pathlib.Path, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    """After MAX_ATTEMPTS the request goes to failed/ (executed); the mail is not imported again."""
    gt.post(message("hq-1", "mayor/", "shutdown"))
    set_flag(town, "mayor", "shutdown")
    monkeypatch.setenv("FAKE_GT_FAIL_DELETE", "1")
    config = make_config(town, gt=str(FAKE_GT))
    lc = processor(config)
    for _ in range(lifecycle.MAX_ATTEMPTS + 2):
        run(lc, config)
    [record] = failed(town)
    assert (True, lifecycle.MAX_ATTEMPTS) == (record["executed"], record["attempts"])
    assert (
        "gt mail delete hq-1: exit status 1: gt: mail delete: database is locked"
        in record["reason"]
    )
    assert ["hq-1"] * lifecycle.MAX_ATTEMPTS == gt.deletes()
    assert [] == pending(town)
    assert ["mail-hq-1"] == outcomes(logs, "failed")
    assert [] == outcomes(logs, "done")


@needs_tmux
@pytest.mark.parametrize("trouble", ["missing", "garbage", "error", "hangs"])
def test_a_broken_gt_never_blocks_the_spool(
    trouble: str,
    gt: FakeGt,
    town: pathlib.Path,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
) -> None:
    """A missing, failing, hanging or babbling ``gt`` is a warning; spool requests still run."""
    command = str(FAKE_GT)
    if trouble == "missing":
        command = str(tmp_path / "no-such-gt")
    elif trouble == "garbage":
        gt.inbox.write_text("Welcome to Gas Town! You have 3 new messages.")
    elif trouble == "error":
        monkeypatch.setenv("FAKE_GT_SLEEP", "x")  # the script crashes with a traceback
    else:
        monkeypatch.setattr(mail, "MAIL_TIMEOUT", 0.5)
        monkeypatch.setenv("FAKE_GT_SLEEP", "30")
    set_flag(town, "mayor", "shutdown")
    rid = enqueue(town, "mayor", "shutdown", sender="test")
    begun = time.monotonic()
    run(None, make_config(town, gt=command))
    assert time.monotonic() - begun < 10
    assert [rid] == outcomes(logs, "done")
    warnings = [r for r in logs.records if r.levelno == logging.WARNING]
    assert 1 == len(warnings), [r.getMessage() for r in warnings]
    assert ("not found" if trouble == "missing" else "gt mail inbox failed") in warnings[
        0
    ].getMessage()
    assert all(r.exc_info is None for r in logs.records)


def test_a_missing_gt_is_reported_once(
    town: pathlib.Path, tmp_path: pathlib.Path, logs: pytest.LogCaptureFixture
) -> None:
    """The gt source being absent is worth one warning, not one per heartbeat."""
    config = make_config(town, gt=str(tmp_path / "no-such-gt"))
    lc = processor(config)
    for _ in range(3):
        run(lc, config)
    assert 1 == len([r for r in logs.records if r.levelno == logging.WARNING])


@needs_tmux
def test_mail_and_spool_requests_carry_journal_fields(
    gt: FakeGt, town: pathlib.Path, logs: pytest.LogCaptureFixture
) -> None:
    """Import and outcome records carry GTD_REQUEST_ID, GTD_IDENTITY and GTD_ACTION."""
    gt.post(message("hq-1", "gastown/crew/max", '{"action":"stop"}'))
    set_flag(town, "gastown-crew-max", "stop")
    run(None, make_config(town, gt=str(FAKE_GT)))
    records = [r for r in logs.records if field(r, "GTD_REQUEST_ID") == "mail-hq-1"]
    assert ["imported", "done"] == [field(r, "GTD_OUTCOME") for r in records]
    for record in records:
        assert ("gastown-crew-max", "stop") == (
            field(record, "GTD_IDENTITY"), field(record, "GTD_ACTION")
        )  # fmt: skip
    assert "hq-1" == field(records[0], "GTD_MAIL_ID")
    assert [] == names(town, "cur")


def test_no_mail_is_imported_into_an_untrusted_spool(
    gt: FakeGt, town: pathlib.Path, logs: pytest.LogCaptureFixture
) -> None:
    """A world-writable spool is not used at all: gt is not even asked, the mail stays."""
    set_flag(town, "mayor", "shutdown")
    enqueue(town, "mayor", "shutdown", sender="test")
    spool_dir(town).chmod(0o777)
    gt.post(message("hq-1", "mayor/", "shutdown"))
    run(None, make_config(town, gt=str(FAKE_GT)))
    assert ([], []) == (gt.calls(), names(town, "failed"))
    assert ["hq-1"] == [m["id"] for m in gt.messages()]
    assert 1 == len(names(town, "new"))
    assert "the spool is not trusted" in logs.records[-1].getMessage()
