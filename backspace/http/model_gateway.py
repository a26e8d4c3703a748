"""The model gateway's network entry: `/gateway/<capability>/v1/messages`, for remote sandboxes.

A Daytona sandbox runs on another machine, so it cannot be handed the host's gateway socket.
Its Claude Code gets ANTHROPIC_BASE_URL=<BACKSPACE_PUBLIC_URL>/gateway/<capability> instead,
where the capability is a 128-bit random token granted for one run's lease while that run's
agent stage lasts (ModelGateway.grant). This route needs no API key: the capability is the
authorisation, and it reaches only its own run's lease (budget, allowed paths, `network_blocked`
reports), never the model beyond it.

An unknown, revoked or expired capability gets 404 before a byte of the body is read, and nothing
starts. A known one has the socket's own limits applied here first (head and body sizes: 431 and
413) and is then relayed to the lease's socket on this host, unchanged, so everything the socket
decides (which paths pass, the spend limit, the real key) is decided the same way for both
doors. The answer streams back as it comes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from backspace.orchestrator.gateway import ModelGateway
from backspace.orchestrator.gateway.request import ALLOWED_PATHS, SANDBOX_PORT

PREFIX = "/gateway"
# Not relayed: framing (httpx frames the body again) and the hop's own headers.
HOP = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
}
HOP_BACK = {"content-length", "transfer-encoding", "connection", "keep-alive", "trailer"}


def _error(status: int, error_type: str, message: str) -> Response:
    """Anthropic-shaped, as the socket answers, with `x-should-retry: false`."""
    body = json.dumps({"type": "error", "error": {"type": error_type, "message": message}})
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={"x-should-retry": "false"},
    )


def _unknown() -> Response:
    return _error(404, "not_found_error", "backspace: no such model gateway (unknown or expired)")


async def model_gateway(request: Request) -> Response:
    service = request.app.state.service
    gateway: ModelGateway | None = getattr(service, "gateway", None)
    token = request.path_params["capability"]
    lease = gateway.lease_for(token) if gateway is not None else None
    if gateway is None or lease is None or lease.path is None:
        return _unknown()
    limits = gateway.limits
    path = request.url.path.removeprefix(f"{PREFIX}/{token}")
    target = path + (f"?{request.url.query}" if request.url.query else "")
    head = (
        len(request.method)
        + len(target)
        + 11
        + sum(len(k) + len(v) + 4 for k, v in request.headers.raw)
    )
    if head > limits.max_head_bytes:
        return _error(
            431, "invalid_request_error", f"backspace: a head over {limits.max_head_bytes} bytes"
        )
    cap = limits.max_body_bytes
    too_big = _error(
        413,
        "request_too_large",
        f"backspace: the request body is larger than the gateway's {cap} bytes",
    )
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > cap):
        return (
            too_big
            if length.isdigit()
            else _error(400, "invalid_request_error", "backspace: a bad Content-Length")
        )
    body = bytearray()
    try:
        async for piece in request.stream():
            body += piece
            if len(body) > cap:
                return too_big
    except ClientDisconnect:
        return _unknown()
    headers = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in request.headers.raw
        if k.decode("latin-1").lower() not in HOP
    ]
    client = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(lease.path)),
        timeout=httpx.Timeout(
            connect=limits.connect_timeout,
            read=limits.read_timeout,
            write=limits.write_timeout,
            pool=limits.connect_timeout,
        ),
        trust_env=False,
    )
    relayed = client.build_request(
        request.method,
        f"http://127.0.0.1:{SANDBOX_PORT}{target}",
        headers=headers,
        content=bytes(body),
    )
    try:
        answer = await client.send(relayed, stream=True)
    except httpx.HTTPError:  # the lease closed in the meantime: the run is over
        await client.aclose()
        return _unknown()

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for data in answer.aiter_raw():
                yield data
        except httpx.HTTPError:
            return  # the model's answer broke off: so does ours
        finally:
            await answer.aclose()
            await client.aclose()

    back = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BACK}
    return StreamingResponse(relay(), status_code=answer.status_code, headers=back)


def gateway_routes() -> list[BaseRoute]:
    """The Messages API's two paths the socket forwards (request.ALLOWED_PATHS); any other path
    under /gateway is this app's plain 404 and reaches no lease."""
    return [
        Route(f"{PREFIX}/{{capability}}{path}", model_gateway, methods=["POST"])
        for path in ALLOWED_PATHS
    ]
