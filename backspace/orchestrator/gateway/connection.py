"""One connection from a sandbox to the model gateway: requests in, answers out, with limits.

Every read and write has a deadline (limits in gateway.GatewayLimits): an idle kept-alive
connection, a head dribbled a byte at a time, a body sent slowly, a client that stops reading
its answer: each ends this connection only. A head longer than its cap is answered 431, a body
longer than its cap 413 (from Content-Length, before reading it; or while reading a chunked one).
What may pass is forwarded with the real key in place of the sandbox's (request.py decides);
the answer's body goes back byte for byte, chunked when it is a stream, while meter.py counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from http import HTTPStatus

import httpx

from backspace.orchestrator.gateway.lease import GatewayLease
from backspace.orchestrator.gateway.meter import UsageMeter
from backspace.orchestrator.gateway.request import SANDBOX_PORT, Refusal, Request, parse_head

log = logging.getLogger(__name__)

# Never forwarded upstream: framing (httpx frames the body itself), the sandbox's credentials
# (the gateway adds the real one), compression (the meter reads the answer), proxy headers.
DROPPED_REQUEST = {
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"upgrade",
    b"expect",
    b"x-api-key",
    b"authorization",
    b"cookie",
    b"accept-encoding",
}
LINGER = 2.0  # seconds to drop a refused request's unread body before closing
DROPPED_RESPONSE = {
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "content-encoding",
    "trailer",
    "upgrade",
    "set-cookie",
}


class Connection:
    def __init__(
        self, lease: GatewayLease, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.lease = lease
        self.limits = lease.gateway.limits
        self.reader = reader
        self.writer = writer
        self.task: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        self.task = asyncio.current_task()
        lease = self.lease
        lease.connections.add(self)
        try:
            if len(lease.connections) > self.limits.max_connections_per_run:
                limit = self.limits.max_connections_per_run
                await self._refuse(
                    Refusal(503, "overloaded_error", f"backspace: more than {limit} connections")
                )
                return
            while await self._one():
                pass
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # its lease closed: this task is the connection's own
            pass
        finally:
            lease.connections.discard(self)
            self.writer.transport.abort()

    def abort(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.writer.transport.abort()

    # --- one request ------------------------------------------------------------------------
    async def _one(self) -> bool:
        """Serve one request; True when the connection may carry another."""
        head = await self._head()
        if head is None:
            return False
        request = parse_head(head, port=SANDBOX_PORT)
        if isinstance(request, Refusal):
            self.lease.report(request, head.split(b" ", 1)[0].decode("ascii", "replace")[:16])
            await self._refuse(request)
            return False
        body = await self._body(request)
        if body is None:
            return False
        # 403 permission_error stops Claude Code at once (seen with the real CLI: one refused
        # request, then the run ends with api_error); a 400 there made it try five more times.
        if request.path == "/v1/messages" and self.lease.over_budget():
            limit = f"${self.lease.budget_usd:g}"
            await self._refuse(
                Refusal(
                    403,
                    "permission_error",
                    f"backspace: the run's spend limit ({limit}) is reached",
                ),
                keep=request.keep_alive,
            )
            return request.keep_alive
        return await self._forward(request, body)

    async def _head(self) -> bytes | None:
        """The next request head; None when the client is done or idle too long."""
        try:
            async with asyncio.timeout(self.limits.idle_timeout):
                first = await self.reader.read(1)
        except TimeoutError:
            return None
        if not first:
            return None
        try:
            async with asyncio.timeout(self.limits.head_timeout):
                rest = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            limit = self.limits.max_head_bytes
            await self._refuse(
                Refusal(431, "invalid_request_error", f"backspace: a head over {limit} bytes")
            )
            return None
        head = first + rest
        if len(head) > self.limits.max_head_bytes:
            limit = self.limits.max_head_bytes
            await self._refuse(
                Refusal(431, "invalid_request_error", f"backspace: a head over {limit} bytes")
            )
            return None
        return head

    async def _body(self, request: Request) -> bytes | None:
        cap = self.limits.max_body_bytes
        too_big = Refusal(
            413,
            "request_too_large",
            f"backspace: the request body is larger than the gateway's {cap} bytes",
        )
        async with asyncio.timeout(self.limits.body_timeout):
            if request.chunked:
                if (request.header(b"expect") or b"").lower() == b"100-continue":
                    self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return await self._chunked(cap, too_big)
            length_text = request.header(b"content-length") or b"0"
            if not length_text.isdigit():
                await self._refuse(
                    Refusal(400, "invalid_request_error", "backspace: a bad Content-Length")
                )
                return None
            length = int(length_text)
            if length > cap:
                await self._refuse(too_big)
                return None
            if length and (request.header(b"expect") or b"").lower() == b"100-continue":
                self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits 1 s for it
            return await self.reader.readexactly(length) if length else b""

    async def _chunked(self, cap: int, too_big: Refusal) -> bytes | None:
        body = bytearray()
        while True:
            line = await self.reader.readuntil(b"\r\n")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                await self._refuse(Refusal(400, "invalid_request_error", "backspace: bad chunk"))
                return None
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return bytes(body)
            if len(body) + size > cap:
                await self._refuse(too_big)
                return None
            body += await self.reader.readexactly(size)
            await self.reader.readexactly(2)

    # --- forwarding ---------------------------------------------------------------------------
    async def _forward(self, request: Request, body: bytes) -> bool:
        lease = self.lease
        gateway = lease.gateway
        headers = [
            (key.decode("latin-1"), value.decode("latin-1"))
            for key, value in request.headers
            if key not in DROPPED_REQUEST and not key.startswith(b"proxy-")
        ]
        headers += [("accept-encoding", "identity"), *gateway.upstream_headers()]
        upstream = lease.client.build_request(
            "POST", gateway.base_url + request.target, headers=headers, content=body
        )
        try:
            response = await lease.client.send(upstream, stream=True)
        except httpx.TimeoutException:
            await self._refuse(Refusal(504, "api_error", "backspace: the model did not answer"))
            return False
        except httpx.HTTPError as exc:
            reason = f"backspace: the model could not be reached ({type(exc).__name__})"
            await self._refuse(Refusal(502, "api_error", reason))
            return False
        lease.requests += 1
        keep = request.keep_alive and request.version == b"HTTP/1.1"
        stream = response.headers.get("content-type", "").startswith("text/event-stream")
        meter = UsageMeter(stream=stream, model=_model_of(body))
        try:
            whole = await self._relay(response, meter, keep)
        finally:
            await response.aclose()
            if request.path == "/v1/messages":
                lease.charge(meter.model, meter.finish())
        # The answer ends only now (its last chunk, or the connection's close), after it was
        # charged: a client that has the whole answer sees the run's spend with it.
        if whole and keep:
            self.writer.write(b"0\r\n\r\n")
            await self._drain()
        return whole and keep

    async def _relay(self, response: httpx.Response, meter: UsageMeter, keep: bool) -> bool:
        """Relay the answer's head and body, chunked on a kept-alive connection (never sized:
        its end is written by the caller once it is charged); False when it broke off."""
        lines = [f"HTTP/1.1 {response.status_code} {_reason(response.status_code)}"]
        for key, value in response.headers.multi_items():
            if key.lower() not in DROPPED_RESPONSE:
                lines.append(f"{key}: {value}")
        lines.append("transfer-encoding: chunked" if keep else "connection: close")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            async for data in response.aiter_raw():
                meter.feed(data)
                if keep:
                    self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                else:
                    self.writer.write(data)
                await self._drain()
        except httpx.HTTPError:
            # The model's answer broke off: so does ours (no final chunk), as the client expects.
            return False
        return True

    async def _drain(self) -> None:
        async with asyncio.timeout(self.limits.write_timeout):
            await self.writer.drain()

    async def _refuse(self, refusal: Refusal, *, keep: bool = False) -> None:
        """An Anthropic-shaped error answer; `x-should-retry: false` so the client gives up."""
        body = json.dumps(
            {"type": "error", "error": {"type": refusal.error_type, "message": refusal.message}}
        ).encode()
        head = (
            f"HTTP/1.1 {refusal.status} {_reason(refusal.status)}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "x-should-retry: false\r\n"
            f"connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
        )
        if self.writer.is_closing():
            return
        self.writer.write(head.encode() + body)
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self._drain()
            if not keep:
                await self._linger()

    async def _linger(self) -> None:
        """Close our side, then read and drop what the client still sends, for a moment: closing
        with its body unread would reset the connection, and the client would see that instead
        of the answer (a 413 that came before the body did)."""
        if self.writer.can_write_eof():
            self.writer.write_eof()
        with contextlib.suppress(ConnectionError, TimeoutError, OSError):
            async with asyncio.timeout(LINGER):
                while await self.reader.read(65536):
                    pass


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def _model_of(body: bytes) -> str:
    """The requested model, for pricing when the answer names none."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return ""
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) else ""
