"""A loopback fake of Slack's Socket Mode WebSocket, driven by the real slack_sdk client.

Why: Socket Mode (a server with SLACK_APP_TOKEN and no public URL) must be tested end to end
like HTTP mode: the real ``AsyncSocketModeHandler`` of slack_bolt (slack_sdk's aiohttp client)
calls ``apps.connections.open`` on the fake Web API (:class:`tests.fakes.slack.FakeSlack`) with
the app-level token, connects to the ``ws://127.0.0.1:PORT/link/?ticket=...`` URL it gets, and
receives envelopes; its acks are recorded here.

The protocol, as Slack documents it (docs.slack.dev/apis/events-api/using-socket-mode) and as
slack_sdk reads it (``slack_sdk/socket_mode/request.py``, ``response.py``):

- on connect Slack sends ``{"type": "hello", "num_connections", "connection_info": {"app_id"},
  "debug_info": {...}}``;
- an envelope is ``{"envelope_id", "type": "events_api"|"slash_commands"|"interactive",
  "payload", "accepts_response_payload"}`` (events_api ones also carry ``retry_attempt`` and
  ``retry_reason``);
- the app acks with ``{"envelope_id", "payload"?}`` (``payload`` is a slash command's response);
- an events_api envelope not acked in time is delivered again with ``retry_attempt`` + 1 (Slack
  retries events three times); a slash command or a click is not (the person sees an error);
- ``{"type": "disconnect", "reason": "refresh_requested"}`` asks the app to open a new
  connection (a fresh ``apps.connections.open``); Slack then drops the old socket.

Usage::

    with FakeSlack(app_token="xapp-1-test") as slack, FakeSocketMode(slack) as socket:
        ...  # start the server with SLACK_APP_TOKEN=xapp-1-test, SLACK_API_URL=slack.api_url
        await socket.wait_connected()
        envelope_id = socket.send("slash_commands", socket.slash_command_payload(text="help"))
        ack = await socket.wait_ack(envelope_id)

The WebSocket server is aiohttp.web (already locked as slack_sdk's Socket Mode client's own
dependency) on its own event loop in a thread, so it works beside any test's loop.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

from tests.fakes.slack import FakeSlack, SlackSigner

__all__ = ["Envelope", "FakeSocketMode"]

Json = dict[str, Any]
ACK_TIMEOUT = 3.0
"""Slack wants an ack within 3 s."""
EVENT_RETRIES = 3
"""Slack retries an Events API event three times."""


@dataclass
class Envelope:
    """One envelope as sent, and what became of it."""

    envelope_id: str
    type: str
    payload: Json
    accepts_response_payload: bool
    sent: list[float] = field(default_factory=list)  # time.monotonic() of each delivery
    acks: list[Json] = field(default_factory=list)  # {"payload", "time", "connection"}

    @property
    def acked(self) -> bool:
        return bool(self.acks)

    @property
    def attempts(self) -> int:
        return len(self.sent)


class FakeSocketMode:
    """Slack's Socket Mode side on 127.0.0.1; attach it to a :class:`FakeSlack`, which then
    answers ``apps.connections.open``.

    Inspection: :attr:`opens` (``apps.connections.open`` answers), :attr:`connections` (every
    WebSocket, ``{"id", "ticket", "opened", "closed", "frames"}``), :meth:`envelope`, :attr:`acks`
    (every ack frame as received, in order). Knobs: :attr:`ack_timeout`, :attr:`lose_acks`
    (the next N acks are dropped as if lost on the way, so the envelope is re-delivered).
    """

    def __init__(self, slack: FakeSlack, *, app_id: str = "A1") -> None:
        self.slack = slack
        self.app_id = app_id
        self.ack_timeout = ACK_TIMEOUT
        self.lose_acks = 0
        self._lock = threading.RLock()
        self._tickets: set[str] = set()
        self._opens: list[Json] = []
        self._connections: list[Json] = []
        self._sockets: dict[int, web.WebSocketResponse] = {}
        self._envelopes: dict[str, Envelope] = {}
        self._acks: list[Json] = []
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self.signer = SlackSigner("socket-mode-has-no-signing-secret")

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._port}"

    def start(self) -> FakeSocketMode:
        if self._thread is not None:
            return self
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="fake-socket")
        self._thread.daemon = True
        self._thread.start()
        ready.result(timeout=10)
        self.slack.socket_mode = self
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self.slack.socket_mode = None

    def __enter__(self) -> FakeSocketMode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, ready: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start_site())
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        loop.run_forever()
        loop.close()

    async def _start_site(self) -> None:
        app = web.Application()
        app.router.add_get("/link/", self._link)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _shutdown(self) -> None:
        for ws in list(self._sockets.values()):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- apps.connections.open (called by FakeSlack, in its server thread) -------------------
    def open_link(self) -> str:
        """A one-use WebSocket URL, as ``apps.connections.open`` returns it."""
        ticket = secrets.token_hex(8)
        with self._lock:
            self._tickets.add(ticket)
            self._opens.append({"ticket": ticket, "time": time.monotonic()})
        return f"{self.url}/link/?ticket={ticket}"

    # -- the WebSocket ------------------------------------------------------------------------
    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        with self._lock:
            known = ticket in self._tickets
            self._tickets.discard(ticket)  # a ticket opens one connection
        if not known:
            return web.Response(status=401, text="invalid_auth: unknown or used ticket")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        with self._lock:
            number = next(self._ids)
            record: Json = {
                "id": number,
                "ticket": ticket,
                "opened": time.monotonic(),
                "closed": None,
                "frames": [],
            }
            self._connections.append(record)
            self._sockets[number] = ws
            open_now = sum(1 for c in self._connections if c["closed"] is None)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": open_now,
                "connection_info": {"app_id": self.app_id},
                "debug_info": {
                    "host": "applink-fake-1",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
            }
        )
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                self._on_frame(number, message.data)
        finally:
            with self._lock:
                record["closed"] = time.monotonic()
                self._sockets.pop(number, None)
        return ws

    def _on_frame(self, connection: int, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            frame = None
        with self._lock:
            self._connections[connection - 1]["frames"].append(text)
            if not isinstance(frame, dict) or not isinstance(frame.get("envelope_id"), str):
                return
            ack = {
                "envelope_id": frame["envelope_id"],
                "payload": frame.get("payload"),
                "time": time.monotonic(),
                "connection": connection,
            }
            if self.lose_acks > 0:
                self.lose_acks -= 1
                ack["lost"] = True
                self._acks.append(ack)
                return
            self._acks.append(ack)
            envelope = self._envelopes.get(frame["envelope_id"])
            if envelope is not None:
                envelope.acks.append(ack)

    # -- test-facing -------------------------------------------------------------------------
    def send(
        self,
        type: str,
        payload: Json,
        *,
        accepts_response_payload: bool | None = None,
    ) -> str:
        """Deliver an envelope on the newest open connection; its ``envelope_id``.

        An events_api envelope that is not acked within :attr:`ack_timeout` is delivered again
        with ``retry_attempt`` + 1, up to three times, as Slack does.
        """
        if accepts_response_payload is None:
            accepts_response_payload = type == "slash_commands"
        envelope = Envelope(
            envelope_id=f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(6)}",
            type=type,
            payload=payload,
            accepts_response_payload=accepts_response_payload,
        )
        with self._lock:
            self._envelopes[envelope.envelope_id] = envelope
        self._call(self._deliver(envelope, 0))
        return envelope.envelope_id

    def redeliver(self, envelope_id: str, reason: str = "timeout") -> None:
        """Deliver an envelope once more, as Slack does when it missed the ack (a lost ack, a
        connection dropped in between)."""
        with self._lock:
            envelope = self._envelopes[envelope_id]
        self._call(self._deliver(envelope, envelope.attempts, reason, retry=False))

    def disconnect(self, reason: str = "refresh_requested", *, drop_after: float = 0.5) -> None:
        """Send ``disconnect`` on every open connection, then drop them after ``drop_after`` s."""
        self._call(self._disconnect(reason, drop_after))

    def drop(self) -> None:
        """Close every open connection without a word (a network failure)."""
        self._call(self._disconnect(None, 0))

    @property
    def opens(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._opens)

    @property
    def connections(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._connections)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self._connections if c["closed"] is None)

    @property
    def acks(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._acks)

    def envelope(self, envelope_id: str) -> Envelope:
        with self._lock:
            return copy.deepcopy(self._envelopes[envelope_id])

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            await asyncio.sleep(0.01)

    async def wait_connected(self, count: int = 1, timeout: float = 20.0) -> None:
        """Until `count` connections were opened in all and one is open now."""
        await self.wait_until(
            lambda: len(self.connections) >= count and self.open_connections >= 1, timeout
        )

    async def wait_ack(self, envelope_id: str, timeout: float = 10.0) -> Json:
        await self.wait_until(lambda: self.envelope(envelope_id).acked, timeout)
        return self.envelope(envelope_id).acks[0]

    # -- payloads shaped like Slack's ----------------------------------------------------------
    def slash_command_payload(self, **fields: Any) -> Json:
        """A slash command's payload: the HTTP form's fields, as a JSON object of strings."""
        body = self.signer.slash_command_body(**fields)
        return dict(parse_qsl(body.decode(), keep_blank_values=True))

    def event_payload(self, event: Json, event_id: str, **fields: Any) -> Json:
        """An ``event_callback`` around ``event`` (what HTTP mode would POST)."""
        payload: Json = json.loads(self.signer.event_body(event, event_id=event_id, **fields))
        return payload

    def block_action_payload(self, **fields: Any) -> Json:
        return self.signer.block_action_payload(**fields)

    # -- on the fake's loop --------------------------------------------------------------------
    def _call(self, work: Any) -> Any:
        assert self._loop is not None, "FakeSocketMode is not started"
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)

    def _newest(self) -> web.WebSocketResponse:
        with self._lock:
            live = [
                self._sockets[c["id"]]
                for c in self._connections
                if c["closed"] is None and c["id"] in self._sockets
            ]
        if not live:
            raise RuntimeError("no open Socket Mode connection to deliver to")
        return live[-1]

    async def _deliver(
        self, envelope: Envelope, attempt: int, reason: str = "timeout", *, retry: bool = True
    ) -> None:
        frame: Json = {
            "envelope_id": envelope.envelope_id,
            "payload": envelope.payload,
            "type": envelope.type,
            "accepts_response_payload": envelope.accepts_response_payload,
        }
        if envelope.type == "events_api":
            frame["retry_attempt"] = attempt
            frame["retry_reason"] = reason if attempt else ""
        with self._lock:
            envelope.sent.append(time.monotonic())
        await self._newest().send_json(frame)
        if retry and envelope.type == "events_api" and attempt < EVENT_RETRIES:
            assert self._loop is not None
            self._loop.call_later(self.ack_timeout, self._retry_if_unacked, envelope, attempt)

    def _retry_if_unacked(self, envelope: Envelope, attempt: int) -> None:
        with self._lock:
            if envelope.acked or envelope.attempts > attempt + 1:
                return
        assert self._loop is not None
        self._loop.create_task(self._deliver(envelope, attempt + 1))

    async def _disconnect(self, reason: str | None, drop_after: float) -> None:
        with self._lock:
            sockets = list(self._sockets.values())
        if reason is not None:
            for ws in sockets:
                await ws.send_json(
                    {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-1"}}
                )
        await asyncio.sleep(drop_after)
        for ws in sockets:
            await ws.close()
