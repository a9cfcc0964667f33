"""A stand-in for the Anthropic Messages API, so the real Claude Code runs offline.

It serves ``127.0.0.1`` on an ephemeral port from a thread of the test process and
records every request, so a test asserts exactly what reached "the model". What it
answers (see ``/work/shared/claude-code-offline.md`` and ``docs/agents.md``):

- ``POST /v1/messages`` (``?beta=true``): with ``"stream": true``, server-sent events
  (``message_start`` ... ``message_stop``); else one JSON message. A *main* request
  (the one carrying the agent's tools) takes the next scripted :class:`Reply`, or
  :data:`DEFAULT_REPLY` when none is queued; any other (the small title request
  Claude Code sends per turn, with no tools) gets a short text at once.
- ``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``.
- anything else: ``{}``.

Replies are queued per test: :meth:`FakeAPI.reply` with :func:`text`,
:func:`tool_use` (a ``Bash`` command), :func:`rate_limit` (HTTP 429 that Claude Code
does not retry), :func:`usage_limit` (the subscription's "session limit" 429 with
the unified rate-limit headers), each optionally held behind a :class:`Gate` until
the test releases it (the agent stays busy meanwhile).

Every connection is closed after its response (HTTP/1.0), so no keep-alive socket
outlives a test. :meth:`FakeAPI.close` releases every gate and joins the thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import itertools
import json
import re
import socketserver
import threading
import time
import typing as t

MODEL = "claude-sonnet-4-5"
SYSTEM_REMINDER = "<system-reminder>"


class Gate:
    """Holds one reply until :meth:`release`; says when its request arrived."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        """Set when the request that waits here arrived (the agent is busy from then on)."""
        self._open = threading.Event()

    def release(self) -> None:
        """Let the held reply go (idempotent)."""
        self._open.set()

    def wait(self, timeout: float) -> bool:
        """Block the server thread until released or *timeout*; True when released."""
        self.reached.set()
        return self._open.wait(timeout)


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """What one main request gets: a content list, or an HTTP error with headers."""

    content: tuple[dict[str, t.Any], ...] = ()
    stop_reason: str = "end_turn"
    status: int = 200
    error: dict[str, t.Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    gate: Gate | None = None
    """When set, the reply waits for ``gate.release()`` before any byte is sent."""

    def held(self, gate: Gate) -> Reply:
        """The same reply, held behind *gate*."""
        return dataclasses.replace(self, gate=gate)


def text(words: str) -> Reply:
    """A plain answer that ends the turn."""
    return Reply(content=({"type": "text", "text": words},))


_tool_ids = itertools.count(1)


def tool_use(command: str, *, name: str = "Bash") -> Reply:
    """An answer asking the agent to run a ``Bash`` command (its result comes next)."""
    block = {
        "type": "tool_use",
        "id": f"toolu_{next(_tool_ids):024d}",
        "name": name,
        "input": {"command": command, "description": "run a test command"},
    }
    return Reply(content=(block,), stop_reason="tool_use")


def rate_limit() -> Reply:
    """HTTP 429 ``rate_limit_error`` with ``x-should-retry: false``: shown, not retried."""
    return Reply(
        status=429,
        error={"type": "rate_limit_error", "message": "Number of requests has exceeded your limit"},
        headers=(("x-should-retry", "false"),),
    )


def usage_limit(reset: float) -> Reply:
    """The subscription's five-hour limit, resetting at unix time *reset*.

    Claude Code shows "You've hit your session limit · resets ..." for it when it
    runs with a subscription login (``CLAUDE_CODE_OAUTH_TOKEN``).
    """
    at = str(int(reset))
    return Reply(
        status=429,
        error={"type": "rate_limit_error", "message": "Rate limited"},
        headers=(
            ("anthropic-ratelimit-unified-status", "rejected"),
            ("anthropic-ratelimit-unified-reset", at),
            ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
            ("anthropic-ratelimit-unified-5h-status", "rejected"),
            ("anthropic-ratelimit-unified-5h-reset", at),
            ("anthropic-ratelimit-unified-fallback", "unavailable"),
            ("x-should-retry", "false"),
        ),
    )


DEFAULT_REPLY = text("OK.")


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    body: t.Any
    """The parsed JSON body, or None."""
    at: float
    """``time.monotonic()`` when it arrived."""

    @property
    def is_messages(self) -> bool:
        """A ``POST /v1/messages`` (not ``count_tokens``)."""
        return self.method == "POST" and self.path.split("?")[0] == "/v1/messages"

    @property
    def is_main(self) -> bool:
        """A messages request that carries the agent's tools: a turn of the conversation."""
        return self.is_messages and isinstance(self.body, dict) and bool(self.body.get("tools"))

    def last_user_message(self) -> dict[str, t.Any] | None:
        """The last ``user`` message of the request, or None."""
        messages = self.body.get("messages", []) if isinstance(self.body, dict) else []
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else None

    def user_text(self) -> str | None:
        """What a person (or gtd) typed in the last user message; None for a tool result.

        Text blocks Claude Code adds itself (``<system-reminder>`` ...) are left out;
        the rest are joined with newlines.
        """
        message = self.last_user_message()
        if message is None:
            return None
        return typed_text(message.get("content"))


def typed_blocks(content: t.Any) -> list[str]:
    r"""The typed text blocks of a user message's content, in order (reminders left out).

    After an API error Claude Code keeps the failed message and sends the next one in
    the same user message, as a block of its own: ``["too fast\n", "HEARTBEAT: x"]``.
    """
    if isinstance(content, str):
        return [content]
    return [
        str(b.get("text", ""))
        for b in (content if isinstance(content, list) else [])
        if isinstance(b, dict)
        and b.get("type") == "text"
        and not str(b.get("text", "")).lstrip().startswith(SYSTEM_REMINDER)
    ]


def typed_text(content: t.Any) -> str | None:
    """The typed part of a user message's content; None when it is only tool results.

    >>> typed_text("hi")
    'hi'
    >>> typed_text([{"type": "text", "text": "<system-reminder>x</system-reminder>"},
    ...             {"type": "text", "text": "HEARTBEAT: a"}])
    'HEARTBEAT: a'
    >>> typed_text([{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]) is None
    True
    """
    texts = typed_blocks(content)
    return "\n".join(texts) if texts else None


_PASTED = re.compile(
    r'\s*<pasted_content id="(\w+)">\n(.*?)\n</pasted_content id="\1">\s*', re.DOTALL
)


def unpaste(text: str) -> str:
    r"""The text as typed, from a turn where Claude Code wrapped a long input it collapsed.

    Typed input over 800 characters shows as ``[Pasted text #1]`` and reaches the
    model as ``<pasted_content id="...">`` ... ``</pasted_content id="...">``.

    >>> unpaste('\n\n<pasted_content id="703f">\nyyy\n</pasted_content id="703f">\n')
    'yyy'
    >>> unpaste("plain")
    'plain'
    """
    return _PASTED.sub(lambda m: m.group(2), text)


def tool_results(content: t.Any) -> list[str]:
    """The text of each ``tool_result`` block in a user message's content."""
    out = []
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                inner = "\n".join(str(b.get("text", "")) for b in inner if isinstance(b, dict))
            out.append(str(inner))
    return out


def sse(reply: Reply, *, model: str = MODEL) -> bytes:
    r"""The server-sent events that stream *reply* (a 200 reply).

    >>> events = sse(text("hi")).decode().split("\n\n")
    >>> [e.split("\n")[0] for e in events if e]  # doctest: +NORMALIZE_WHITESPACE
    ['event: message_start', 'event: content_block_start', 'event: content_block_delta',
     'event: content_block_stop', 'event: message_delta', 'event: message_stop']
    """
    out: list[tuple[str, dict[str, t.Any]]] = []
    message = _message(reply, model=model)
    message["content"] = []
    message["stop_reason"] = None
    out.append(("message_start", {"type": "message_start", "message": message}))
    for i, block in enumerate(reply.content):
        start: dict[str, t.Any]
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            start = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        out.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": i, "content_block": start},
            )
        )
        out.append(
            ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
        )
        out.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    out.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
        )
    )
    out.append(("message_stop", {"type": "message_stop"}))
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in out)


_message_ids = itertools.count(1)


def _message(reply: Reply, *, model: str) -> dict[str, t.Any]:
    return {
        "id": f"msg_{next(_message_ids):024d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": list(reply.content),
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


class FakeAPI:
    """The stand-in server; a context manager that starts and closes it.

    Parameters
    ----------
    hold_timeout
        Longest a held reply waits for its gate, so a forgotten gate cannot hang
        the server thread past a test (``close()`` releases every gate anyway).
    """

    def __init__(self, *, hold_timeout: float = 300.0) -> None:
        self.hold_timeout = hold_timeout
        self._lock = threading.Condition()
        self._requests: list[Request] = []
        self._script: list[Reply] = []
        self._gates: list[Gate] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> t.Self:
        """Bind 127.0.0.1 on a free port and serve from a daemon thread."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.api = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="fakeapi", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Release every gate, stop serving, join the threads (idempotent)."""
        with self._lock:
            gates = list(self._gates)
        for gate in gates:
            gate.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> t.Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (for ``ANTHROPIC_BASE_URL``)."""
        assert self._server is not None, "FakeAPI not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- scripting ------------------------------------------------------------

    def reply(self, *replies: Reply) -> None:
        """Queue replies for the next main requests, in order."""
        with self._lock:
            self._script.extend(replies)
            self._gates.extend(r.gate for r in replies if r.gate is not None)

    def hold(self, then: Reply = DEFAULT_REPLY) -> Gate:
        """Queue *then* held behind a new gate; return the gate."""
        gate = Gate()
        self.reply(then.held(gate))
        return gate

    def pending(self) -> int:
        """Replies queued and not yet taken."""
        with self._lock:
            return len(self._script)

    # -- what arrived ---------------------------------------------------------

    def requests(self) -> list[Request]:
        """Every request so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def main_requests(self) -> list[Request]:
        """The messages requests that carried tools (turns of the conversation)."""
        return [r for r in self.requests() if r.is_main]

    def user_turns(self) -> list[str]:
        """What reached the model as typed user turns, in order.

        One entry per main request whose last user message is typed text; the
        follow-ups that carry only tool results are left out.
        """
        return [u for r in self.main_requests() if (u := r.user_text()) is not None]

    def wait_for(
        self, predicate: t.Callable[[FakeAPI], bool], timeout: float, what: str = ""
    ) -> None:
        """Block until *predicate(self)* holds, re-checked on every request.

        Raises
        ------
        AssertionError
            After *timeout* seconds, naming *what* and the user turns seen.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    turns = [r.user_text() for r in self._requests if r.is_main]
                    paths = [r.path for r in self._requests]
                    msg = (
                        f"stand-in API: {what or predicate} not seen in {timeout}s; "
                        f"turns {turns!r}; paths {paths!r}"
                    )
                    raise AssertionError(msg)
                self._lock.wait(min(left, 0.5))

    # -- serving (called from the handler thread) -----------------------------

    def _record(self, request: Request) -> Reply | None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
            if not request.is_main:
                return None
            return self._script.pop(0) if self._script else DEFAULT_REPLY


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    api: FakeAPI


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: t.Any) -> None:
        """Quiet: the recorded requests are the log."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = Request(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            time.monotonic(),
        )
        api = self.server.api
        reply = api._record(request)
        path = self.path.split("?")[0]
        if path == "/v1/messages/count_tokens":
            self._json(200, {"input_tokens": 100})
        elif not request.is_messages:
            self._json(200, {})
        else:
            if reply is None:
                reply = text("Test session")
            if reply.gate is not None:
                reply.gate.wait(api.hold_timeout)
            # The agent may give up on the request (Escape interrupts a turn).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._answer(reply, stream=bool(isinstance(body, dict) and body.get("stream")))

    def _answer(self, reply: Reply, *, stream: bool) -> None:
        if reply.status != 200:
            error = {"type": "error", "error": reply.error or {"type": "api_error", "message": "x"}}
            self._json(reply.status, error, reply.headers)
            return
        if not stream:
            self._json(200, _message(reply, model=MODEL))
            return
        payload = sse(reply)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self._write(payload)

    def _json(self, status: int, data: t.Any, headers: t.Iterable[tuple[str, str]] = ()) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("request-id", "req_fakeapi")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self._write(payload)

    def _write(self, payload: bytes) -> None:
        self.wfile.write(payload)
        self.wfile.flush()
