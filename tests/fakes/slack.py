"""A recording fake of the Slack Web API, plus signed inbound Slack requests.

Why: the Slack front end must be tested end to end, offline, with the *real*
``slack_sdk.web.async_client.AsyncWebClient`` (and Bolt's ``respond()``) talking
HTTP to something shaped like Slack, and with *real* signed requests (slash
commands, button clicks, Events API callbacks) reaching the service. See
``../shared/reference/slack-bolt.md`` §3-4 and §7.

Usage::

    with FakeSlack(token="xoxb-test-token", team_id="T0001", bot_user_id="U0BOT") as slack:
        client = AsyncWebClient(token="xoxb-test-token", base_url=slack.api_url)
        await client.chat_postMessage(channel="C1", text="hi")
        assert slack.messages("C1")[0]["text"] == "hi"

    signer = SlackSigner("signing-secret")
    body = signer.slash_command_body(text="https://github.com/o/r fix it",
                                     response_url=slack.response_url("C1", "U1"))
    await send(http, "http://testserver/slack/events", body, signer)

How the real ``AsyncWebClient`` (slack-sdk 3.47) encodes requests, which the fake
accepts alike: methods called with ``json=`` (``chat.postMessage``, ``chat.update``,
``chat.postEphemeral``) POST a JSON body (``application/json;charset=utf-8``);
methods called with ``params=`` (``auth.test``, ``reactions.add``, ``chat.delete``)
POST an *empty* form-typed body with every argument in the **query string**
(aiohttp ``params``; booleans become ``"1"``/``"0"``); ``conversations.info`` and
``chat.getPermalink`` are GETs with query parameters. The token travels as
``Authorization: Bearer``; a ``token`` argument in the query, form or JSON is also
accepted, as Slack does. Bolt adds ``team_id`` to every call; unknown arguments
are ignored.

The server runs in its own thread (``ThreadingHTTPServer`` on 127.0.0.1, port 0),
so it works with any event loop, with ``httpx.ASGITransport`` and with Starlette's
sync ``TestClient``. Every answer is ``application/json`` (aiohttp's ``json()``
rejects other types and the SDK would then see no data), except the deliberate
``down`` 503 page and the ``response_url`` "ok".
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
from slack_sdk.signature import SignatureVerifier

__all__ = ["FakeSlack", "SlackSigner", "app_mention_event", "send"]

FIRST_TS = 1_700_000_000
"""Seconds part of the first ``ts`` the fake issues ("1700000000.000100")."""
TS_STEP = 100
MAX_BLOCKS = 50
MAX_TEXT = 40_000
UNSET_RESPONSE_URL = "https://hooks.slack.invalid/commands/{team_id}/0/unset"
"""Default ``response_url`` in signed bodies: ``.invalid`` never resolves, so nothing leaks online."""

Json = dict[str, Any]


# -- helpers -------------------------------------------------------------------
def _bool(value: Any) -> bool:
    """Slack booleans: JSON true/false, or form/query "1"/"0"/"true"/"false"."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _json_arg(value: Any) -> Any:
    """``blocks``/``attachments``/``metadata`` arrive as JSON strings in form/query encoding."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


class _ApiError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


@dataclass(frozen=True)
class _Failure:
    error: str
    status: int
    retry_after: int | None


@dataclass(frozen=True)
class _ResponseUrl:
    channel: str
    user: str
    message_ts: str | None


# -- the HTTP server -----------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    fake: FakeSlack


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections end instead of lingering
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake = self.server.fake
        if url.path.startswith("/api/"):
            status, extra, payload = fake._handle_api(
                self.command, url.path[len("/api/") :], url.query, headers, body
            )
            if payload is None:  # the "Slack is down" page
                self._send(status, b"<html><body>Service Unavailable</body></html>", "text/html")
            else:
                self._send(status, json.dumps(payload).encode(), "application/json", extra)
        elif url.path.startswith("/response/") and self.command == "POST":
            status, text = fake._handle_response_url(url.path[len("/response/") :], headers, body)
            self._send(status, text.encode(), "text/html")
        else:
            self._send(404, b"Not Found", "text/plain")

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


# -- the fake ------------------------------------------------------------------
class FakeSlack:
    """A recording Slack Web API on 127.0.0.1; mutate the public fields to change behaviour.

    Inspection (all thread-safe snapshots):

    - :attr:`calls`: every Web API call in arrival order, ``{method, args, time, headers,
      status, response, http_method, query, body_format}`` (``args`` = query + form/JSON
      body as received; ``headers`` lower-case; ``time`` = ``time.monotonic()`` on arrival;
      ``response`` = the JSON answer, ``{}`` for the ``down`` page; ``query`` = the query
      string part of ``args``; ``body_format`` = ``"json"``, ``"form"`` or ``"none"``).
    - :meth:`messages`: the current messages of a channel (root and thread replies, in
      posting order), ``{ts, text, blocks, thread_ts, user, reply_broadcast, updated,
      ...}``; :meth:`thread` the replies to one root.
    - :attr:`ephemerals`: ``chat.postEphemeral`` and ephemeral ``response_url`` posts.
    - :attr:`reactions`: successful ``reactions.add`` calls.
    - :attr:`responses`: every POST to a ``response_url`` (raw JSON payload).

    Behaviour knobs: :meth:`fail` (queued per-method errors, 429s, 5xx), :attr:`down`
    (every call answers HTTP 503), :attr:`not_in_channel` and :attr:`missing_channels`
    (sets of channel ids answering ``not_in_channel`` / ``channel_not_found``).
    """

    def __init__(
        self,
        token: str = "xoxb-test-token",  # noqa: S107
        team_id: str = "T0001",
        bot_user_id: str = "U0BOT",
        *,
        bot_id: str = "B0BOT",
        app_id: str = "A1",
        team_name: str = "Fake Team",
        team_domain: str = "fake-team",
        bot_name: str = "backspace",
        app_token: str = "xapp-1-A1-test-app-token",  # noqa: S107
    ) -> None:
        self.token = token
        self.app_token = app_token
        """The app-level token ``apps.connections.open`` takes (Socket Mode)."""
        self.socket_mode: Any = None
        """A started ``tests.fakes.slack_socket.FakeSocketMode``: ``apps.connections.open``
        answers with its WebSocket URL."""
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.team_name = team_name
        self.team_domain = team_domain
        self.bot_name = bot_name

        self.down = False
        """True: every Web API call (and response_url post) answers HTTP 503 with an HTML page."""
        self.not_in_channel: set[str] = set()
        """Channels where posting, updating and reacting answer ``not_in_channel``."""
        self.missing_channels: set[str] = set()
        """Channels that answer ``channel_not_found`` (private channel the bot can't see, DM...)."""

        self._lock = threading.RLock()
        self._calls: list[Json] = []
        self._messages: dict[str, list[Json]] = {}
        self._ephemerals: list[Json] = []
        self._reactions: list[Json] = []
        self._responses: list[Json] = []
        self._failures: dict[str, deque[_Failure]] = {}
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._ts_counter = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._methods: dict[str, Callable[[Json], Json]] = {
            "api.test": self._api_test,
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "reactions.add": self._reactions_add,
            "conversations.info": self._conversations_info,
            "apps.connections.open": lambda args: {},  # answered in _answer (app token)
        }

    # -- lifecycle ---------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("FakeSlack is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def api_url(self) -> str:
        """``AsyncWebClient(base_url=...)``: ``http://127.0.0.1:PORT/api/``."""
        return self.url + "/api/"

    def start(self) -> FakeSlack:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-slack"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- test-facing setup -------------------------------------------------------
    def fail(
        self,
        method: str,
        error: str = "ratelimited",
        times: int = 1,
        status: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        """The next ``times`` (authenticated) calls of ``method`` answer ``{"ok": false, "error": error}``.

        HTTP status: ``status`` if given, else 429 for ``"ratelimited"`` (with ``Retry-After``,
        default 1 s; slack-sdk parses it with ``int()``) and 200 for every other error, as Slack.
        """
        if status is None:
            status = 429 if error == "ratelimited" else 200
        if status == 429 and retry_after is None:
            retry_after = 1
        with self._lock:
            queue = self._failures.setdefault(method, deque())
            queue.extend(_Failure(error, status, retry_after) for _ in range(times))

    def response_url(self, channel: str, user: str, message_ts: str | None = None) -> str:
        """A ``response_url`` on the fake for a slash command / action payload.

        POSTs to it (Bolt's ``respond()``) are recorded in :attr:`responses`; ephemeral
        ones also in :attr:`ephemerals` (``via="response_url"``); ``response_type:
        in_channel`` posts a channel message as the bot. With ``message_ts`` (the message
        carrying the clicked button) ``replace_original``/``delete_original`` act on it.
        """
        with self._lock:
            rid = f"{self.team_id}-{len(self._response_urls) + 1}"
            self._response_urls[rid] = _ResponseUrl(channel, user, message_ts)
        return f"{self.url}/response/{rid}"

    def reset(self) -> None:
        """Forget recorded calls, messages, ephemerals, reactions and queued failures."""
        with self._lock:
            self._calls.clear()
            self._messages.clear()
            self._ephemerals.clear()
            self._reactions.clear()
            self._responses.clear()
            self._failures.clear()

    # -- test-facing inspection --------------------------------------------------
    @property
    def calls(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._calls)

    def calls_to(self, method: str) -> list[Json]:
        with self._lock:
            return copy.deepcopy([c for c in self._calls if c["method"] == method])

    def messages(self, channel: str) -> list[Json]:
        """Current messages of ``channel`` (roots and replies, in posting order)."""
        with self._lock:
            return copy.deepcopy(self._messages.get(channel, []))

    def message(self, channel: str, ts: str) -> Json | None:
        with self._lock:
            found = self._find(channel, ts)
            return copy.deepcopy(found) if found is not None else None

    def thread(self, channel: str, thread_ts: str) -> list[Json]:
        """The replies posted with ``thread_ts`` (the root itself excluded)."""
        return [
            m
            for m in self.messages(channel)
            if m["thread_ts"] == thread_ts and m["ts"] != thread_ts
        ]

    @property
    def ephemerals(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._ephemerals)

    @property
    def reactions(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._reactions)

    @property
    def responses(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._responses)

    async def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01
    ) -> None:
        """Poll ``predicate`` (never a fixed sleep) until true; ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            await asyncio.sleep(interval)

    async def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Json]:
        """Wait until ``method`` has been called at least ``count`` times; return those calls."""
        try:
            await self.wait_until(lambda: len(self.calls_to(method)) >= count, timeout)
        except TimeoutError:
            got = len(self.calls_to(method))
            raise TimeoutError(f"{method}: {got} calls after {timeout} s, wanted {count}") from None
        return self.calls_to(method)

    # -- request handling (server threads) -----------------------------------
    def _handle_api(
        self, http_method: str, method: str, query: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], Json | None]:
        started = time.monotonic()
        query_args: Json = dict(parse_qsl(query, keep_blank_values=True))
        args: Json = dict(query_args)
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        parse_error: str | None = None
        if body:
            if content_type == "application/json":
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                if isinstance(parsed, dict):
                    args.update(parsed)
                else:
                    parse_error = "invalid_json"
            elif content_type == "application/x-www-form-urlencoded":
                args.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            else:
                parse_error = "invalid_form_data"
        with self._lock:
            status, extra, payload = self._answer(method, args, headers, parse_error)
            self._calls.append(
                {
                    "method": method,
                    "args": args,
                    "time": started,
                    "headers": headers,
                    "status": status,
                    "response": copy.deepcopy(payload) if payload is not None else {},
                    "http_method": http_method,
                    "query": query_args,
                    "body_format": (
                        "none" if not body else "json" if content_type.endswith("json") else "form"
                    ),
                }
            )
        return status, extra, payload

    def _answer(
        self, method: str, args: Json, headers: dict[str, str], parse_error: str | None
    ) -> tuple[int, dict[str, str], Json | None]:
        if self.down:
            return 503, {}, None
        handler = self._methods.get(method)
        if handler is None:
            return 200, {}, {"ok": False, "error": "unknown_method", "req_method": method}
        auth = headers.get("authorization", "")
        token = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else None
        token = token or _text(args.get("token"))
        if not token:
            return 200, {}, {"ok": False, "error": "not_authed"}
        if method == "apps.connections.open":
            return 200, {}, self._apps_connections_open(token)
        if token != self.token:
            return 200, {}, {"ok": False, "error": "invalid_auth"}
        if parse_error is not None:
            return 200, {}, {"ok": False, "error": parse_error}
        queue = self._failures.get(method)
        if queue:
            failure = queue.popleft()
            extra = {}
            if failure.retry_after is not None:
                extra["Retry-After"] = str(failure.retry_after)
            return failure.status, extra, {"ok": False, "error": failure.error}
        try:
            return 200, {}, handler(args)
        except _ApiError as e:
            return 200, {}, {"ok": False, "error": e.error, **e.extra}

    # -- Web API methods (called with the lock held) ---------------------------
    def _next_ts(self) -> str:
        self._ts_counter += TS_STEP
        seconds, micros = divmod(self._ts_counter, 1_000_000)
        return f"{FIRST_TS + seconds}.{micros:06d}"

    def _find(self, channel: str, ts: str) -> Json | None:
        for message in self._messages.get(channel, []):
            if message["ts"] == ts:
                return message
        return None

    def _channel(self, args: Json, *, post: bool = True) -> str:
        channel = _text(args.get("channel"))
        if not channel or channel in self.missing_channels:
            raise _ApiError("channel_not_found")
        if post and channel in self.not_in_channel:
            raise _ApiError("not_in_channel")
        return channel

    def _content(self, args: Json) -> tuple[str | None, list[Any] | None, Any]:
        text = _text(args.get("text"))
        blocks = _json_arg(args.get("blocks"))
        attachments = _json_arg(args.get("attachments"))
        if not text and not blocks and not attachments:
            raise _ApiError("no_text")
        if blocks is not None and (not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS):
            raise _ApiError("invalid_blocks")
        if text is not None and len(text) > MAX_TEXT:
            raise _ApiError("msg_too_long")
        return text, blocks, attachments

    def _public(self, message: Json) -> Json:
        """The ``message`` object Slack returns (and shows in history)."""
        out: Json = {
            "user": message["user"],
            "type": "message",
            "ts": message["ts"],
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "text": message["text"],
            "team": self.team_id,
            "bot_profile": {
                "id": self.bot_id,
                "app_id": self.app_id,
                "name": self.bot_name,
                "deleted": False,
                "team_id": self.team_id,
            },
        }
        if message["blocks"] is not None:
            out["blocks"] = message["blocks"]
        if message.get("attachments") is not None:
            out["attachments"] = message["attachments"]
        if message["thread_ts"] is not None:
            out["thread_ts"] = message["thread_ts"]
            out["parent_user_id"] = message.get("parent_user_id") or message["user"]
        if message.get("metadata") is not None:
            out["metadata"] = message["metadata"]
        if message["updated"]:
            out["edited"] = {"user": message["user"], "ts": message["edited_ts"]}
        return out

    def _store(
        self,
        channel: str,
        *,
        text: str | None,
        blocks: list[Any] | None,
        attachments: Any,
        thread_ts: str | None,
        reply_broadcast: bool,
        metadata: Any,
        via: str,
    ) -> Json:
        parent = self._find(channel, thread_ts) if thread_ts else None
        message: Json = {
            "ts": self._next_ts(),
            "text": text or "",
            "blocks": blocks,
            "attachments": attachments,
            "thread_ts": thread_ts,
            "user": self.bot_user_id,
            "reply_broadcast": reply_broadcast,
            "updated": 0,
            "edited_ts": None,
            "metadata": metadata,
            "reactions": [],
            "parent_user_id": parent["user"] if parent is not None else None,
            "via": via,
        }
        self._messages.setdefault(channel, []).append(message)
        return message

    def _apps_connections_open(self, token: str) -> Json:
        """Socket Mode's WebSocket URL, for the app-level token only (as Slack answers)."""
        if token == self.token:
            return {"ok": False, "error": "not_allowed_token_type"}
        if token != self.app_token:
            return {"ok": False, "error": "invalid_auth"}
        if self.socket_mode is None:
            return {"ok": False, "error": "socket_mode_not_enabled"}  # never a real URL
        return {"ok": True, "url": self.socket_mode.open_link()}

    def _api_test(self, args: Json) -> Json:
        return {"ok": True, "args": {k: v for k, v in args.items() if k != "token"}}

    def _auth_test(self, args: Json) -> Json:
        return {
            "ok": True,
            "url": f"https://{self.team_domain}.slack.com/",
            "team": self.team_name,
            "user": self.bot_name,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: Json) -> Json:
        channel = self._channel(args)
        text, blocks, attachments = self._content(args)
        message = self._store(
            channel,
            text=text,
            blocks=blocks,
            attachments=attachments,
            thread_ts=_text(args.get("thread_ts")) or None,
            reply_broadcast=_bool(args.get("reply_broadcast", False)),
            metadata=_json_arg(args.get("metadata")),
            via="api",
        )
        return {
            "ok": True,
            "channel": channel,
            "ts": message["ts"],
            "message": self._public(message),
        }

    def _chat_update(self, args: Json) -> Json:
        channel = self._channel(args)
        ts = _text(args.get("ts"))
        message = self._find(channel, ts) if ts else None
        if message is None:
            raise _ApiError("message_not_found")
        text, blocks, attachments = self._content(args)
        # Slack: blocks given -> replaced; text without blocks -> blocks removed.
        if blocks is not None or text is not None:
            message["blocks"] = blocks
        if text is not None:
            message["text"] = text
        if attachments is not None:
            message["attachments"] = attachments
        if "metadata" in args:
            message["metadata"] = _json_arg(args["metadata"])
        if "reply_broadcast" in args:
            message["reply_broadcast"] = _bool(args["reply_broadcast"])
        message["updated"] += 1
        message["edited_ts"] = self._next_ts()
        public = self._public(message)
        return {
            "ok": True,
            "channel": channel,
            "ts": message["ts"],
            "text": message["text"],
            "message": public,
        }

    def _chat_delete(self, args: Json) -> Json:
        channel = self._channel(args)
        ts = _text(args.get("ts"))
        message = self._find(channel, ts) if ts else None
        if message is None:
            raise _ApiError("message_not_found")
        self._messages[channel].remove(message)
        return {"ok": True, "channel": channel, "ts": message["ts"]}

    def _chat_post_ephemeral(self, args: Json) -> Json:
        channel = self._channel(args)
        user = _text(args.get("user"))
        if not user:
            raise _ApiError("user_not_in_channel")
        text, blocks, _ = self._content(args)
        ts = self._next_ts()
        self._ephemerals.append(
            {
                "channel": channel,
                "user": user,
                "text": text or "",
                "blocks": blocks,
                "thread_ts": _text(args.get("thread_ts")) or None,
                "via": "api",
                "message_ts": ts,
            }
        )
        return {"ok": True, "message_ts": ts}

    def _chat_get_permalink(self, args: Json) -> Json:
        channel = self._channel(args, post=False)
        ts = _text(args.get("message_ts"))
        if not ts:
            raise _ApiError("message_not_found")
        link = f"https://{self.team_domain}.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        message = self._find(channel, ts)
        if message is not None and message["thread_ts"] and message["thread_ts"] != ts:
            link += "?" + urlencode({"thread_ts": message["thread_ts"], "cid": channel})
        return {"ok": True, "channel": channel, "permalink": link}

    def _reactions_add(self, args: Json) -> Json:
        channel = self._channel(args)
        ts = _text(args.get("timestamp"))
        name = _text(args.get("name"))
        if not ts:
            raise _ApiError("no_item_specified")
        if not name:
            raise _ApiError("invalid_name")
        name = name.strip(":")
        # Messages the fake never saw (a user's app_mention) are accepted too.
        if any(
            r["channel"] == channel and r["timestamp"] == ts and r["name"] == name
            for r in self._reactions
        ):
            raise _ApiError("already_reacted")
        self._reactions.append({"channel": channel, "timestamp": ts, "name": name})
        message = self._find(channel, ts)
        if message is not None:
            message["reactions"].append({"name": name, "users": [self.bot_user_id], "count": 1})
        return {"ok": True}

    def _conversations_info(self, args: Json) -> Json:
        channel = self._channel(args, post=False)
        return {
            "ok": True,
            "channel": {
                "id": channel,
                "name": channel.lower(),
                "is_channel": True,
                "is_group": False,
                "is_im": False,
                "is_private": False,
                "is_archived": False,
                "is_general": False,
                "is_member": channel not in self.not_in_channel,
                "created": FIRST_TS,
                "creator": "U0ADMIN",
                "context_team_id": self.team_id,
            },
        }

    # -- response_url ------------------------------------------------------------
    def _handle_response_url(
        self, rid: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str]:
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = None
        with self._lock:
            target = self._response_urls.get(rid)
            record: Json = {
                "id": rid,
                "payload": payload,
                "headers": headers,
                "time": time.monotonic(),
                "channel": target.channel if target else None,
                "user": target.user if target else None,
            }
            status, text = self._apply_response(target, payload)
            record["status"] = status
            self._responses.append(record)
        return status, text

    def _apply_response(self, target: _ResponseUrl | None, payload: Any) -> tuple[int, str]:
        if self.down:
            return 503, "Service Unavailable"
        if target is None:
            return 404, "no_service"
        if not isinstance(payload, dict):
            return 400, "invalid_payload"
        text = _text(payload.get("text"))
        blocks = _json_arg(payload.get("blocks"))
        original = self._find(target.channel, target.message_ts) if target.message_ts else None
        if _bool(payload.get("delete_original", False)):
            if original is not None:
                self._messages[target.channel].remove(original)
            return 200, "ok"
        if not text and not blocks and not payload.get("attachments"):
            return 400, "no_text"
        if _bool(payload.get("replace_original", False)) and original is not None:
            original["text"] = text or ""
            original["blocks"] = blocks
            original["updated"] += 1
            original["edited_ts"] = self._next_ts()
            return 200, "ok"
        if payload.get("response_type") == "in_channel":
            self._store(
                target.channel,
                text=text,
                blocks=blocks,
                attachments=_json_arg(payload.get("attachments")),
                thread_ts=_text(payload.get("thread_ts")) or None,
                reply_broadcast=False,
                metadata=None,
                via="response_url",
            )
            return 200, "ok"
        self._ephemerals.append(
            {
                "channel": target.channel,
                "user": target.user,
                "text": text or "",
                "blocks": blocks,
                "thread_ts": _text(payload.get("thread_ts")) or None,
                "via": "response_url",
                "replace_original": _bool(payload.get("replace_original", False)),
            }
        )
        return 200, "ok"


# -- signed inbound requests ---------------------------------------------------
class SlackSigner:
    """Builds request bodies shaped like Slack's and signs them (``v0`` HMAC-SHA256).

    Signatures come from ``slack_sdk.signature.SignatureVerifier.generate_signature``:
    ``v0=hex(HMAC_SHA256(secret, "v0:{timestamp}:{raw body}"))``. Bolt checks the
    timestamp against the wall clock (±300 s), so ``timestamp`` defaults to now; pass
    ``int(time.time()) - 301`` for a stale request. Sign and send the *same bytes*.
    """

    def __init__(
        self,
        signing_secret: str,
        *,
        team_domain: str = "fake-team",
        api_app_id: str = "A1",
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
        verification_token: str = "fake-verification-token",  # noqa: S107
    ) -> None:
        self.verifier = SignatureVerifier(signing_secret)
        self.team_domain = team_domain
        self.api_app_id = api_app_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.verification_token = verification_token
        self._trigger = 0

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else int(timestamp))
        signature = self.verifier.generate_signature(timestamp=ts, body=body)
        assert signature is not None
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}

    def _trigger_id(self) -> str:
        self._trigger += 1
        return f"{self._trigger}.{FIRST_TS}.fake{self._trigger:08x}"

    def slash_command_body(
        self,
        command: str = "/backspace",
        text: str = "",
        user_id: str = "U1",
        user_name: str = "ada",
        channel_id: str = "C1",
        team_id: str = "T0001",
        response_url: str | None = None,
        trigger_id: str | None = None,
        *,
        channel_name: str | None = None,
        api_app_id: str | None = None,
    ) -> bytes:
        """``application/x-www-form-urlencoded``, fields in the order Slack sends them."""
        fields = [
            ("token", self.verification_token),
            ("team_id", team_id),
            ("team_domain", self.team_domain),
            ("channel_id", channel_id),
            ("channel_name", channel_name or channel_id.lower()),
            ("user_id", user_id),
            ("user_name", user_name),
            ("command", command),
            ("text", text),
            ("api_app_id", api_app_id or self.api_app_id),
            ("is_enterprise_install", "false"),
            ("response_url", response_url or UNSET_RESPONSE_URL.format(team_id=team_id)),
            ("trigger_id", trigger_id or self._trigger_id()),
        ]
        return urlencode(fields).encode()

    def block_action_payload(
        self,
        action_id: str = "cancel_run",
        value: str = "",
        user_id: str = "U1",
        channel_id: str = "C1",
        message_ts: str = f"{FIRST_TS}.000100",
        team_id: str = "T0001",
        response_url: str | None = None,
        *,
        user_name: str = "ada",
        block_id: str = "actions",
        message: Json | None = None,
        trigger_id: str | None = None,
        button_text: str = "Cancel",
    ) -> Json:
        """The ``block_actions`` payload of a button click on a (non-ephemeral) bot message."""
        action_ts = f"{time.time():.6f}"
        original: Json = message or {
            "user": self.bot_user_id,
            "type": "message",
            "ts": message_ts,
            "bot_id": self.bot_id,
            "app_id": self.api_app_id,
            "text": "",
            "team": team_id,
            "blocks": [],
        }
        return {
            "type": "block_actions",
            "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
            "api_app_id": self.api_app_id,
            "token": self.verification_token,
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel_id,
                "is_ephemeral": False,
            },
            "trigger_id": trigger_id or self._trigger_id(),
            "team": {"id": team_id, "domain": self.team_domain},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel_id, "name": channel_id.lower()},
            "message": original,
            "state": {"values": {}},
            "response_url": response_url or UNSET_RESPONSE_URL.format(team_id=team_id),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": block_id,
                    "text": {"type": "plain_text", "text": button_text, "emoji": True},
                    "value": value,
                    "type": "button",
                    "action_ts": action_ts,
                }
            ],
        }

    def block_action_body(
        self,
        action_id: str = "cancel_run",
        value: str = "",
        user_id: str = "U1",
        channel_id: str = "C1",
        message_ts: str = f"{FIRST_TS}.000100",
        team_id: str = "T0001",
        response_url: str | None = None,
        **kwargs: Any,
    ) -> bytes:
        """Form-encoded ``payload=<json>``, as Slack posts interactivity requests."""
        payload = self.block_action_payload(
            action_id, value, user_id, channel_id, message_ts, team_id, response_url, **kwargs
        )
        return urlencode({"payload": json.dumps(payload, separators=(",", ":"))}).encode()

    def event_body(
        self,
        event: Json,
        event_id: str = "Ev1",
        team_id: str = "T0001",
        api_app_id: str = "A1",
        *,
        event_time: int | None = None,
    ) -> bytes:
        """A JSON ``event_callback`` envelope around ``event``."""
        envelope = {
            "token": self.verification_token,
            "team_id": team_id,
            "context_team_id": team_id,
            "context_enterprise_id": None,
            "api_app_id": api_app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": event_time if event_time is not None else int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-fake-{event_id}",
        }
        return json.dumps(envelope).encode()

    def url_verification_body(self, challenge: str = "abc") -> bytes:
        return json.dumps(
            {"token": self.verification_token, "challenge": challenge, "type": "url_verification"}
        ).encode()


def app_mention_event(
    text: str,
    user: str = "U1",
    channel: str = "C1",
    ts: str | None = None,
    thread_ts: str | None = None,
    team: str = "T0001",
) -> Json:
    """An ``app_mention`` event (the ``event`` of :meth:`SlackSigner.event_body`)."""
    ts = ts or f"{int(time.time())}.000200"
    event: Json = {
        "type": "app_mention",
        "user": user,
        "text": text,
        "ts": ts,
        "team": team,
        "channel": channel,
        "event_ts": ts,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return event


async def send(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    signer: SlackSigner,
    *,
    content_type: str | None = None,
    retry_num: int | None = None,
    retry_reason: str = "http_timeout",
    timestamp: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """POST ``body`` byte-for-byte with Slack's signature headers.

    ``content_type`` defaults to JSON for a body starting with ``{`` and form encoding
    otherwise. ``retry_num`` adds ``X-Slack-Retry-Num`` / ``X-Slack-Retry-Reason``
    (Events API redeliveries).
    """
    if content_type is None:
        content_type = (
            "application/json"
            if body.lstrip().startswith(b"{")
            else "application/x-www-form-urlencoded"
        )
    all_headers = {"Content-Type": content_type, **signer.headers(body, timestamp)}
    if retry_num is not None:
        all_headers["X-Slack-Retry-Num"] = str(retry_num)
        all_headers["X-Slack-Retry-Reason"] = retry_reason
    all_headers.update(headers or {})
    return await client.post(url, content=body, headers=all_headers)
