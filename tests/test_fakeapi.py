"""The stand-in Messages API: what it answers, what it records, how a test steers it."""

from __future__ import annotations

import doctest
import http.client
import json
import threading
import typing as t

import pytest

from tests import fakeapi
from tests.fakeapi import FakeAPI

TOOLS = [{"name": "Bash", "input_schema": {"type": "object"}}]


def post(api: FakeAPI, path: str, body: dict[str, t.Any]) -> tuple[int, dict[str, str], bytes]:
    host, port = api.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def turn(text: str, *, stream: bool = True, tools: bool = True) -> dict[str, t.Any]:
    content = [
        {"type": "text", "text": "<system-reminder>\nnoise\n</system-reminder>\n"},
        {"type": "text", "text": text},
    ]
    body: dict[str, t.Any] = {"messages": [{"role": "user", "content": content}], "stream": stream}
    if tools:
        body["tools"] = TOOLS
    return body


def events(payload: bytes) -> list[tuple[str, dict[str, t.Any]]]:
    out = []
    for chunk in payload.decode().split("\n\n"):
        if chunk.strip():
            name, data = chunk.split("\n")
            out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_streams_a_text_answer_and_records_the_turn() -> None:
    """A main request gets the SSE sequence; the typed text is recorded as a user turn."""
    with FakeAPI() as api:
        api.reply(fakeapi.text("hello"))
        status, headers, payload = post(api, "/v1/messages?beta=true", turn("HEARTBEAT: a"))
        assert (200, "text/event-stream") == (status, headers["content-type"])
        names = [name for name, _ in events(payload)]
        assert ["message_start", "content_block_start", "content_block_delta",
                "content_block_stop", "message_delta", "message_stop"] == names  # fmt: skip
        assert "hello" == events(payload)[2][1]["delta"]["text"]
        assert ["HEARTBEAT: a"] == api.user_turns()


def test_title_requests_do_not_count_or_take_replies() -> None:
    """A request without tools (Claude Code's title request) is answered but is not a turn."""
    with FakeAPI() as api:
        api.reply(fakeapi.text("scripted"))
        status, _, payload = post(
            api, "/v1/messages", turn("title please", stream=False, tools=False)
        )
        assert (200, "message") == (status, json.loads(payload)["type"])
        assert ([], 1) == (api.user_turns(), api.pending())
        assert 1 == len(api.requests())


def test_count_tokens_and_other_paths() -> None:
    """count_tokens answers a count; any other path an empty object."""
    with FakeAPI() as api:
        assert json.loads(post(api, "/v1/messages/count_tokens", {})[2]) == {"input_tokens": 100}
        assert json.loads(post(api, "/api/anything", {})[2]) == {}
        assert ["/v1/messages/count_tokens", "/api/anything"] == [r.path for r in api.requests()]


def test_tool_use_streams_the_command_as_json() -> None:
    """A Bash tool call arrives as a tool_use block whose input JSON is the command."""
    with FakeAPI() as api:
        api.reply(fakeapi.tool_use("sleep 5"))
        seen = events(post(api, "/v1/messages", turn("go"))[2])
        assert "tool_use" == seen[1][1]["content_block"]["type"]
        assert "sleep 5" == json.loads(seen[2][1]["delta"]["partial_json"])["command"]
        assert "tool_use" == seen[4][1]["delta"]["stop_reason"]


def test_tool_results_are_not_user_turns() -> None:
    """The follow-up carrying a tool result is a main request but not a typed turn."""
    result = {"type": "tool_result", "tool_use_id": "t", "content": "ok"}
    body = {"messages": [{"role": "user", "content": [result]}], "tools": TOOLS, "stream": True}
    with FakeAPI() as api:
        post(api, "/v1/messages", body)
        assert ([], 1) == (api.user_turns(), len(api.main_requests()))
        assert ["ok"] == fakeapi.tool_results(api.main_requests()[0].last_user_message()["content"])  # type: ignore[index]


def test_hold_keeps_the_reply_until_released() -> None:
    """A held reply sends nothing until the gate opens; the gate says when it was reached."""
    with FakeAPI() as api:
        gate = api.hold(fakeapi.text("late"))
        got: list[bytes] = []
        thread = threading.Thread(
            target=lambda: got.append(post(api, "/v1/messages", turn("x"))[2])
        )
        thread.start()
        assert gate.reached.wait(10)
        thread.join(0.2)
        assert (True, []) == (thread.is_alive(), got)
        gate.release()
        thread.join(10)
        assert "late" == events(got[0])[2][1]["delta"]["text"]


def test_close_releases_held_replies() -> None:
    """Closing the server lets a held request finish, so no thread outlives the test."""
    api = FakeAPI().start()
    gate = api.hold()
    thread = threading.Thread(target=lambda: post(api, "/v1/messages", turn("x")))
    thread.start()
    assert gate.reached.wait(10)
    api.close()
    thread.join(10)
    assert not thread.is_alive()


def test_rate_limit_is_a_429_not_retried() -> None:
    """The rate-limit reply: 429, rate_limit_error, x-should-retry false."""
    with FakeAPI() as api:
        api.reply(fakeapi.rate_limit())
        status, headers, payload = post(api, "/v1/messages", turn("x"))
        assert (429, "false") == (status, headers["x-should-retry"])
        assert "rate_limit_error" == json.loads(payload)["error"]["type"]


def test_usage_limit_carries_the_unified_headers() -> None:
    """The subscription limit: rejected, five_hour, and the reset time in unix seconds."""
    with FakeAPI() as api:
        api.reply(fakeapi.usage_limit(1_900_000_000.7))
        status, headers, _ = post(api, "/v1/messages", turn("x"))
        assert 429 == status
        assert {
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-reset": "1900000000",
            "anthropic-ratelimit-unified-representative-claim": "five_hour",
            "anthropic-ratelimit-unified-5h-status": "rejected",
            "anthropic-ratelimit-unified-5h-reset": "1900000000",
            "anthropic-ratelimit-unified-fallback": "unavailable",
        }.items() <= headers.items()


def test_wait_for_says_what_it_saw() -> None:
    """A wait that runs out names what it waited for and the turns that did arrive."""
    with FakeAPI() as api:
        post(api, "/v1/messages", turn("only this"))
        with pytest.raises(AssertionError, match=r"a second turn.*only this"):
            api.wait_for(lambda a: len(a.user_turns()) > 1, 0.1, "a second turn")


def test_doctests() -> None:
    """The examples in tests.fakeapi hold."""
    assert 0 == doctest.testmod(fakeapi).failed
