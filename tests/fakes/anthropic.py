"""A scripted fake of the Anthropic Messages API, driven by the real ``anthropic`` SDK.

Why: the agent loop must be tested end to end (streaming, tool calls, retries,
mid-stream failures, truncated streams, timeouts) without network access or a
real key. The fake speaks the wire format the SDK parses (see
``../shared/reference/anthropic-agent.md`` section 5) on 127.0.0.1.

A scenario is a sequence of steps; step ``i`` answers every request whose
``messages`` hold ``i`` assistant messages. A step is a :class:`Reply`, a single
failure item, or a list such as ``[Fail(529, times=2), MidStreamError(), Reply(...)]``:
failure items are served first, each for ``times`` attempts of that turn, then the
``Reply`` for every further attempt. A list without a ``Reply`` keeps serving its
last item once the earlier ones are used up (a persistent failure).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeAlias, cast
from urllib.parse import urlsplit

__all__ = [
    "CutStream",
    "DroppedStream",
    "Fail",
    "FakeAnthropic",
    "Hang",
    "MidStreamError",
    "Reply",
    "StallStream",
    "Step",
    "Text",
    "ToolCall",
]

DEFAULT_USAGE: dict[str, int] = {
    "input_tokens": 100,
    "output_tokens": 20,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}

ERROR_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

_DEFAULT_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request",
    "authentication_error": "invalid x-api-key",
    "permission_error": "Permission denied",
    "not_found_error": "Not found",
    "rate_limit_error": "Rate limited",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
}

TOOL_JSON_PIECE = 7
"""Tool input JSON is streamed in fragments this long, to exercise the SDK's accumulator."""

TEXT_PIECE = 16
"""Text is streamed in deltas this long, so snapshots grow over several events."""


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class Text:
    """A text content block of a scripted reply."""

    text: str


@dataclass
class ToolCall:
    """A tool_use content block; the id is generated when not given so tests can omit it."""

    name: str
    input: dict[str, Any]
    id: str | None = None

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = _new_id("toolu")


@dataclass
class Reply:
    """A successful model turn; ``stop_reason`` defaults from the blocks like the real API."""

    blocks: list[Text | ToolCall]
    stop_reason: str | None = None
    usage: dict[str, int] | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.stop_reason is None:
            has_tool = any(isinstance(b, ToolCall) for b in self.blocks)
            self.stop_reason = "tool_use" if has_tool else "end_turn"
        if self.usage is None:
            self.usage = dict(DEFAULT_USAGE)


@dataclass
class Fail:
    """An HTTP error answer shaped like Anthropic's, to exercise status-code error handling.

    An empty ``message`` is replaced by a default for the error type.
    ``retry_after_ms`` defaults to 1 so SDK retries in tests are instant. ``retry_after`` sends
    the ``retry-after`` header in whole seconds, as the real API does on a 429 (set
    ``retry_after_ms=None`` with it); ``headers`` adds more (``anthropic-ratelimit-*``, say).
    """

    status: int
    error_type: str | None = None
    message: str = ""
    times: int = 1
    retry_after_ms: int | None = 1
    retry_after: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.error_type is None:
            self.error_type = ERROR_TYPE_BY_STATUS.get(
                self.status, "api_error" if self.status >= 500 else "invalid_request_error"
            )
        if not self.message:
            self.message = _DEFAULT_MESSAGES.get(self.error_type, self.error_type)


@dataclass
class MidStreamError:
    """A 200 stream that starts a text block then emits ``event: error`` (the SDK won't retry)."""

    error_type: str = "overloaded_error"
    message: str = "Overloaded"
    times: int = 1


@dataclass
class CutStream:
    """A 200 stream closed before ``message_delta``: the SDK reports success with no stop_reason."""

    times: int = 1


@dataclass
class DroppedStream:
    """A 200 stream (HTTP/1.1, chunked, as the real API sends) whose connection closes in the
    middle of the body, without the last chunk: the client sees a broken transfer, not an end."""

    times: int = 1


@dataclass
class StallStream:
    """A 200 stream that starts a text block, then sends nothing for ``seconds`` (then closes).

    A proxy or an overloaded server that stops mid-answer: only the client's read timeout ends it.
    """

    seconds: float
    times: int = 1


@dataclass
class Hang:
    """Accept the request and answer nothing for ``seconds`` (then close), to trigger timeouts."""

    seconds: float
    times: int = 1


Failure: TypeAlias = Fail | MidStreamError | CutStream | DroppedStream | StallStream | Hang
Item: TypeAlias = Reply | Failure
Step: TypeAlias = Reply | Failure | Sequence[Item]

NO_MORE_TURNS = Reply([Text("(the scripted model has no more turns)")], stop_reason="end_turn")

_RESPONDER_KEY = "\x00responder"


def _resolve(step: Step, attempt: int) -> Item:
    """Pick the item of ``step`` that answers the ``attempt``-th (0-based) try of a turn."""
    items: list[Item] = [step] if isinstance(step, Item) else list(step)
    if not items:
        return NO_MORE_TURNS
    remaining = attempt
    for item in items:
        if isinstance(item, Reply):
            return item
        if remaining < item.times:
            return item
        remaining -= item.times
    return items[-1]


_TASK = re.compile(r"<task>\n(.*?)\n</task>", re.DOTALL)


def _first_user_text(body: dict[str, Any]) -> str:
    """Text of the first user message, which is what scenario keys are matched against."""
    for message in body.get("messages") or []:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "\n".join(
                str(block.get("text", ""))
                for block in content
                if isinstance(block, dict) and block.get("type") == "text"
            )
        return ""
    return ""


def _turn_index(body: dict[str, Any]) -> int:
    messages = body.get("messages") or []
    return sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")


def _block_json(block: Text | ToolCall) -> dict[str, Any]:
    if isinstance(block, Text):
        return {"type": "text", "text": block.text}
    return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for Hang handlers
    request_queue_size = 256  # tests open dozens of connections at once
    fake: FakeAnthropic


class _Handler(BaseHTTPRequestHandler):
    """One request; HTTP/1.0 so a stream ends (or is cut) simply by closing the connection."""

    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        self._dispatch(None)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        self._dispatch(raw)

    def _dispatch(self, raw: bytes | None) -> None:
        fake = self.server.fake
        self.request_id = _new_id("req")
        path = urlsplit(self.path).path
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json, body = True, raw.decode("utf-8", "replace")
        # The client may give up (timeout, cancelled stream): then there is nothing to answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            fake._handle(self, path, body, bad_json)

    # -- writing helpers -------------------------------------------------
    def send_json(
        self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", self.request_id)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(
        self, status: int, error_type: str, message: str, extra: dict[str, str] | None = None
    ) -> None:
        payload = {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": self.request_id,
        }
        self.send_json(status, payload, extra)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", self.request_id)
        self.end_headers()

    def event(self, name: str, data: dict[str, Any]) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


class FakeAnthropic:
    """Scripted Messages API server on 127.0.0.1 with an ephemeral port.

    ``scenarios`` maps a key (matched as a substring of the first user message) to
    its steps; ``default`` names the scenario used when no key matches; otherwise
    ``responder(body)`` is asked for the step. ``api_key`` (if set) is enforced.
    """

    def __init__(
        self,
        scenarios: Mapping[str, Sequence[Step]] | None = None,
        default: str | None = None,
        responder: Callable[[dict[str, Any]], Step] | None = None,
        *,
        api_key: str | None = None,
    ) -> None:
        self.scenarios: dict[str, Sequence[Step]] = dict(scenarios or {})
        self.default = default
        self.responder = responder
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._attempts: dict[tuple[str, int], int] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL for ``AsyncAnthropic(base_url=...)`` (the SDK appends ``/v1/...``)."""
        if self._server is None:
            raise RuntimeError("FakeAnthropic is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeAnthropic:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-anthropic",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; sleeping Hang/delay handlers are woken so nothing lingers."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- inspection ---------------------------------------------------------
    def requests_for(self, key: str) -> list[dict[str, Any]]:
        """Bodies of the ``/v1/messages`` requests that were answered by scenario ``key``."""
        with self._lock:
            return [
                r["body"]
                for r in self.requests
                if r.get("scenario") == key and r["path"] == "/v1/messages"
            ]

    def attempts(self, key: str, turn: int) -> int:
        """How many requests scenario ``key`` has received for turn ``turn``."""
        with self._lock:
            return self._attempts.get((key, turn), 0)

    def reset(self) -> None:
        """Forget recorded requests and attempt counters (scenarios are kept)."""
        with self._lock:
            self.requests.clear()
            self._attempts.clear()

    # -- request handling ---------------------------------------------------
    def _choose_scenario(self, body: dict[str, Any]) -> str | None:
        text = _first_user_text(body)
        with self._lock:
            keys = list(self.scenarios)
        # backspace's first message quotes a follow-up's earlier requests too: the key in the
        # request itself (its <task>) wins.
        task = _TASK.search(text)
        for where in ([task.group(1)] if task else []) + [text]:
            for key in keys:
                if key in where:
                    return key
        if self.default is not None and self.default in self.scenarios:
            return self.default
        return None

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.api_key is None:
            return True
        bearer = headers.get("authorization", "")
        presented = bearer[7:] if bearer.lower().startswith("bearer ") else headers.get("x-api-key")
        return presented == self.api_key

    def _handle(self, h: _Handler, path: str, body: Any, bad_json: bool) -> None:
        headers = {k.lower(): v for k, v in h.headers.items()}
        record: dict[str, Any] = {
            "path": path,
            "headers": headers,
            "body": body,
            "time": time.monotonic(),
        }
        scenario: str | None = None
        if path == "/v1/messages" and isinstance(body, dict):
            scenario = self._choose_scenario(body)
            record["scenario"] = scenario
        with self._lock:
            self.requests.append(record)

        if not self._authorized(headers):
            h.send_error_json(401, "authentication_error", "invalid x-api-key")
            return
        if h.command != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            h.send_error_json(404, "not_found_error", f"Not found: {h.command} {path}")
            return
        if bad_json or not isinstance(body, dict):
            h.send_error_json(400, "invalid_request_error", "request body is not a JSON object")
            return
        if path == "/v1/messages/count_tokens":
            h.send_json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
            return

        turn = _turn_index(body)
        if scenario is not None:
            steps = self.scenarios.get(scenario, ())
            step: Step = steps[turn] if turn < len(steps) else NO_MORE_TURNS
            counter_key = scenario
        elif self.responder is not None:
            step = self.responder(body)
            counter_key = _RESPONDER_KEY
        else:
            h.send_error_json(400, "invalid_request_error", "no scenario matches")
            return
        with self._lock:
            attempt = self._attempts.get((counter_key, turn), 0)
            self._attempts[(counter_key, turn)] = attempt + 1

        item = _resolve(step, attempt)
        model = str(body.get("model") or "claude-fake")
        stream = bool(body.get("stream"))
        self._serve(h, item, model, stream)

    def _serve(self, h: _Handler, item: Item, model: str, stream: bool) -> None:
        if isinstance(item, Hang):
            self._stopping.wait(item.seconds)
            h.close_connection = True
            return
        if isinstance(item, Fail):
            extra = dict(item.headers)
            if item.retry_after_ms is not None:
                extra["retry-after-ms"] = str(item.retry_after_ms)
            if item.retry_after is not None:
                extra["retry-after"] = str(item.retry_after)
            h.send_error_json(item.status, cast(str, item.error_type), item.message, extra)
            return
        if isinstance(item, DroppedStream):
            self._drop_stream(h, model)
            return
        if isinstance(item, MidStreamError | CutStream | StallStream):
            usage = dict(DEFAULT_USAGE)
            h.start_stream()
            self._stream_start(h, model, usage)
            h.event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            h.event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "Let me look at"},
                },
            )
            if isinstance(item, MidStreamError):
                error = {"type": item.error_type, "message": item.message}
                h.event("error", {"type": "error", "error": error})
            if isinstance(item, StallStream):
                self._stopping.wait(item.seconds)
            h.close_connection = True
            return

        if item.delay > 0:
            self._stopping.wait(item.delay)
        if stream:
            self._stream_reply(h, item, model)
        else:
            h.send_json(200, self._message(item, model))

    @staticmethod
    def _drop_stream(h: _Handler, model: str) -> None:
        """Chunked framing written by hand (the handler speaks HTTP/1.0), cut before its end."""
        head = (
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            f"request-id: {h.request_id}\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        message: dict[str, Any] = {
            "id": _new_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": dict(DEFAULT_USAGE),
        }
        events = [
            ("message_start", {"type": "message_start", "message": message}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "Let me look at"},
                },
            ),
        ]
        h.wfile.write(head.encode())
        for name, data in events:
            chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        h.wfile.write(b"400\r\nevent: content_block_delta\ndata: {")  # a chunk cut short
        h.wfile.flush()
        h.close_connection = True

    @staticmethod
    def _usage(reply: Reply) -> dict[str, int]:
        usage = dict(DEFAULT_USAGE)
        usage.update(reply.usage or {})
        return usage

    def _message(self, reply: Reply, model: str) -> dict[str, Any]:
        return {
            "id": _new_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [_block_json(b) for b in reply.blocks],
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": self._usage(reply),
        }

    @staticmethod
    def _stream_start(h: _Handler, model: str, usage: dict[str, int]) -> None:
        start_usage = dict(usage)
        start_usage["output_tokens"] = 1
        message: dict[str, Any] = {
            "id": _new_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        h.event("message_start", {"type": "message_start", "message": message})
        h.event("ping", {"type": "ping"})

    def _stream_reply(self, h: _Handler, reply: Reply, model: str) -> None:
        usage = self._usage(reply)
        h.start_stream()
        self._stream_start(h, model, usage)
        for index, block in enumerate(reply.blocks):
            if isinstance(block, Text):
                start: dict[str, Any] = {"type": "text", "text": ""}
                deltas = [
                    {"type": "text_delta", "text": piece}
                    for piece in _chunks(block.text, TEXT_PIECE)
                ]
            else:
                start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
                deltas = [
                    {"type": "input_json_delta", "partial_json": piece}
                    for piece in _chunks(json.dumps(block.input), TOOL_JSON_PIECE)
                ]
            h.event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
            for delta in deltas:
                h.event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            h.event("content_block_stop", {"type": "content_block_stop", "index": index})
        h.event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": usage,
            },
        )
        h.event("message_stop", {"type": "message_stop"})
        h.close_connection = True
