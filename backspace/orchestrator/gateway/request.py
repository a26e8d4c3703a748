"""A request from the sandbox to the model gateway: its head, parsed, or why it is refused.

The gateway speaks plain HTTP/1.1 on the sandbox's model socket. Only two things may pass:
`POST /v1/messages` and `POST /v1/messages/count_tokens` (a query such as `?beta=true` is
kept). A CONNECT, an absolute URL naming another host, or any other method or path is refused
here, before a byte of the body is read, with the host (or path) the gateway reports as a
`network_blocked` event: the door to the model is not a door to anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

ALLOWED_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
SANDBOX_PORT = 3129  # the sandbox's end of the door: ANTHROPIC_BASE_URL=http://127.0.0.1:3129
OWN_HOSTS = ("127.0.0.1", "localhost")
MAX_SHOWN_PATH = 200


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer the gateway gives itself, Anthropic-shaped so the CLI shows it as it is.

    `blocked` is the (host, port) the sandbox tried to reach instead of the model; `path`, the
    path it asked for. Either makes the refusal a `network_blocked` event (never with the body).
    """

    status: int
    error_type: str
    message: str
    blocked: tuple[str, int] | None = None
    path: str | None = None


@dataclass(slots=True)
class Request:
    method: str
    target: str  # origin form: path and query, as forwarded upstream
    path: str
    version: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        """The last value of header `name` (lower case), or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header(b"connection") or b"").split(b",")}
        if self.version == b"HTTP/1.0":
            return b"keep-alive" in tokens
        return b"close" not in tokens

    @property
    def chunked(self) -> bool:
        return b"chunked" in (self.header(b"transfer-encoding") or b"").lower()


def parse_head(head: bytes, port: int) -> Request | Refusal:
    """The request in `head` (ending in CRLF CRLF) or why it may not pass. `port` is the
    sandbox's end of the door, for absolute URLs that name the gateway itself."""
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return Refusal(400, "invalid_request_error", "backspace: not an HTTP/1.x request")
    method_raw, target_raw, version = parts
    try:
        method, target = method_raw.decode("ascii"), target_raw.decode("ascii")
    except UnicodeDecodeError:
        return Refusal(400, "invalid_request_error", "backspace: the request line is not ASCII")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        key = name.strip().lower()
        if not colon or not key or key != name.lower():
            return Refusal(400, "invalid_request_error", "backspace: a malformed header line")
        headers.append((key, value.strip()))
    if method == "CONNECT":
        host, _, port_text = target.rpartition(":")
        port_number = int(port_text) if port_text.isdigit() else 443
        return _blocked(
            host or target,
            port_number if 0 < port_number < 65536 else 443,
            f"CONNECT {_shown(target)}: the model gateway opens no tunnels",
        )
    if not target.startswith("/"):
        url = urlsplit(target)
        if url.scheme not in ("http", "https") or not url.hostname:
            return Refusal(400, "invalid_request_error", f"backspace: {_shown(target)!r} is no URL")
        own = url.hostname in OWN_HOSTS and (url.port or 80) == port
        if not own:
            where = url.port or (443 if url.scheme == "https" else 80)
            reason = f"{url.hostname} is not the model: the model gateway reaches the model only"
            return _blocked(url.hostname, where, reason, url.path or "/")
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    path = target.split("?", 1)[0]
    if method != "POST" or path not in ALLOWED_PATHS:
        reason = (
            f"{method} {_shown(path)} is not a Messages API request: the model gateway forwards "
            "only POST /v1/messages and POST /v1/messages/count_tokens"
        )
        return Refusal(404, "not_found_error", f"backspace: {reason}", None, _shown(path))
    return Request(method, target, path, version, headers)


def _blocked(host: str, port: int, reason: str, path: str | None = None) -> Refusal:
    return Refusal(
        403, "permission_error", f"backspace: {reason}", (host.lower()[:253], port), path
    )


def _shown(text: str) -> str:
    """A path as events and errors show it: no query (it may carry data), bounded."""
    text = text.split("?", 1)[0]
    return text if len(text) <= MAX_SHOWN_PATH else text[: MAX_SHOWN_PATH - 1] + "…"
