"""The egress proxy: a sandbox's only way out, deciding every connection by host name.

A sandbox has its own empty network namespace; its one door is a Unix socket (one per sandbox,
a `Door`) where this proxy speaks HTTP proxy: `CONNECT host:port` tunnels bytes both ways (TLS
stays end to end: nothing is intercepted) and an absolute-form `GET http://host/path` is
forwarded in origin form. Every connection is decided by the sandbox's `Gate` (its phase's
allowlist), then by address: a name in the operator's AddressMap goes to its mapped address;
any other name is resolved once, refused if any of its addresses is not global, and connected
to that vetted address itself (no second lookup, so DNS rebinding gains nothing).

Hand-written on asyncio because no well-kept library fits: proxy.py is a large framework with
plugins and its own process model, and mitmproxy intercepts TLS, which is exactly what the door
must not do. The proxy runs on its own thread with its own event loop, so a large download never
loads the server's loop. The request head is read by a Protocol; once a tunnel is open, its
bytes move kernel to kernel with splice(2) through a pipe per direction (splice.py: about twice
as fast as copying them through Python, see docs/benchmarks.md), or, where splice is missing, by
the Protocols (`_Pipe`). Either way a side stops reading while the other cannot take more, so
memory stays bounded whatever the transfer's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from backspace.orchestrator.egress.addresses import refusal
from backspace.orchestrator.egress.gate import Gate
from backspace.orchestrator.egress.hosts import NAME, AddressMap, normalise
from backspace.orchestrator.egress.splice import AVAILABLE, SpliceTunnel
from backspace.orchestrator.loop_thread import LoopThread

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"host",
}
REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """Every address `host` has (getaddrinfo, in the loop's executor)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def name_problem(host: str) -> str | None:
    """Why `host` (normalised) is not a name the door may look up, or None."""
    if not host:
        return "an empty host name"
    last = host.rsplit(".", 1)[-1]
    if ":" in host or "[" in host or re.fullmatch(r"[0-9]+|0x[0-9a-f]*", last):
        return (
            f"{host} is an address, not a host name: the door reaches hosts by name only "
            "(an operator maps a name to an internal address with BACKSPACE_EGRESS_RESOLVE)"
        )
    if len(host) > 253 or not NAME.fullmatch(host):
        return f"{host!r} is not a host name"
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is this machine"
    return None


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str
    hint: str = ""


class EgressProxy:
    """One per server: serves every sandbox's door on its own thread and event loop."""

    def __init__(
        self,
        addresses: AddressMap,
        *,
        resolver: Resolver = system_resolver,
        ports: tuple[int, ...] = (80, 443),
        head_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        max_head_bytes: int = 16384,
        max_tunnels_per_door: int = 256,
        max_reports_per_door: int = 100,
        splice: bool = AVAILABLE,
    ) -> None:
        self.addresses = addresses
        self.resolver = resolver
        self.ports = ports
        self.head_timeout = head_timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_head_bytes = max_head_bytes
        self.max_tunnels_per_door = max_tunnels_per_door
        self.max_reports_per_door = max_reports_per_door
        self.splice = splice  # tunnels moved in the kernel (Linux); else by the Protocols
        self._thread = LoopThread("backspace-egress")
        self._doors: set[Door] = set()

    # --- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the proxy's thread (once; later calls do nothing)."""
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.loop is not None

    def stop(self) -> None:
        """Close every door and its tunnels, then stop the thread."""
        taken = self._thread.take()
        if taken is None:
            return
        for door in list(self._doors):
            door.close()
        LoopThread.finish(*taken)

    def open(self, socket_path: Path, gate: Gate, *, owner_uid: int | None = None) -> Door:
        """Listen at `socket_path` for one sandbox, deciding with `gate`. The socket is mode
        0600, owned by `owner_uid` when given (the user the sandbox runs as)."""
        loop, _ = self._thread.start()
        door = Door(self, loop, socket_path, gate)
        future = asyncio.run_coroutine_threadsafe(door._listen(owner_uid), loop)
        future.result(timeout=30)
        self._doors.add(door)
        return door

    # --- decisions --------------------------------------------------------------------------------
    async def admit(self, host: str, port: int, gate: Gate) -> tuple[str, int] | Refusal:
        """Where to connect for `host:port`, or why not (a refusal by policy, 403, is reported
        to the gate; a name that does not resolve is the internet's answer, not a block)."""
        refusal = await self.decide(host, port, gate)
        if isinstance(refusal, Refusal) and refusal.status == 403:
            gate.refuse(host, port, refusal.reason)
        return refusal

    async def decide(self, host: str, port: int, gate: Gate) -> tuple[str, int] | Refusal:
        problem = name_problem(host)
        if problem is not None:
            return Refusal(403, problem)
        listed = gate.decide(host, port)
        if listed is not None:
            hint = f"add `{host}` to [network] {gate.phase} in .backspace.toml"
            return Refusal(403, listed, hint)
        mapped = self.addresses.get(host)
        if mapped is not None:
            return mapped
        if port not in self.ports:
            shown = " and ".join(str(p) for p in self.ports)
            return Refusal(403, f"port {port} is closed: the door reaches only ports {shown}")
        try:
            async with asyncio.timeout(self.connect_timeout):
                found = list(await self.resolver(host, port))
        except (OSError, TimeoutError) as exc:
            return Refusal(502, f"{host} could not be resolved ({exc or 'timed out'})")
        if not found:
            return Refusal(502, f"{host} has no address")
        for address in found:
            bad = refusal(address)
            if bad is not None:
                return Refusal(403, f"{host} resolves to {bad}: the door reaches only the internet")
        return found[0], port


class Door:
    """One sandbox's socket on the proxy: its gate, its connections; `close` ends them all."""

    def __init__(
        self, proxy: EgressProxy, loop: asyncio.AbstractEventLoop, path: Path, gate: Gate
    ) -> None:
        self.proxy = proxy
        self.loop = loop
        self.path = path
        self.gate = gate
        self.connections: set[_Client] = set()
        self._reported: set[tuple[str, int, str, str | None]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._closed = False

    async def _listen(self, owner_uid: int | None) -> None:
        self._server = await self.loop.create_unix_server(
            lambda: _Client(self), path=str(self.path), backlog=512
        )
        os.chmod(self.path, 0o600)
        if owner_uid is not None:
            os.chown(self.path, owner_uid, -1)

    def report(self, host: str, port: int, refusal: Refusal) -> None:
        """Tell the gate of a refusal by policy (403), once per host, port, phase and command,
        and at most max_reports_per_door times: a command looping on refused names must not
        flood its run with events. Every attempt is still refused."""
        if refusal.status != 403 or len(self._reported) >= self.proxy.max_reports_per_door:
            return
        key = (host, port, str(self.gate.phase), self.gate.command)
        if key not in self._reported:
            self._reported.add(key)
            self.gate.refuse(host, port, refusal.reason)

    @property
    def tunnels(self) -> int:
        return len(self.connections)

    def close(self) -> None:
        """Stop listening, close every connection of this door, remove its socket. Twice is fine."""
        if self._closed:
            return
        self._closed = True
        self.proxy._doors.discard(self)
        if self.loop.is_closed():
            return
        if _on_loop(self.loop):
            self._shut()
            return
        future = asyncio.run_coroutine_threadsafe(self._ashut(), self.loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)

    async def _ashut(self) -> None:
        self._shut()

    def _shut(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self.connections):
            client.abort()
        with contextlib.suppress(OSError):
            self.path.unlink()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


READ_SIZE = 1024 * 1024
_SHARED = bytearray(READ_SIZE)  # every pipe reads into it: the loop runs one callback at a time


class _Pipe(asyncio.BufferedProtocol):
    """One side of a tunnel: what it reads goes to its peer, with flow control both ways.

    Reads land in one buffer shared by every pipe of the proxy's loop (a read is forwarded
    before the next one starts), so an idle tunnel holds no read buffer of its own; what the
    peer cannot take at once is copied into its transport's own buffer, and past the high-water
    mark this side stops reading."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.eof = False
        self.last = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(_SHARED)

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(memoryview(_SHARED)[:nbytes])

    def data_received(self, data: memoryview) -> None:
        self.forward(data)

    def forward(self, data: memoryview | bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None or peer.transport.is_closing():
            return
        peer.transport.write(bytes(data))
        self.last = peer.last = asyncio.get_running_loop().time()

    def pause_writing(self) -> None:  # my write buffer is full: stop reading my peer
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.eof:
            self.abort_both(graceful=True)
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True  # half-closed: the answer may still come
        self.abort_both(graceful=True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def abort_both(self, *, graceful: bool = False) -> None:
        for side in (self, self.peer):
            if side is not None and side.transport is not None:
                if graceful:
                    side.transport.close()
                else:
                    side.transport.abort()


class _Upstream(_Pipe):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # type: ignore[attr-defined]  # until the tunnel starts


class _Client(_Pipe):
    """A connection from the sandbox: first a request head, then (when admitted) a tunnel."""

    def __init__(self, door: Door) -> None:
        super().__init__()
        self.door = door
        self.proxy = door.proxy
        self.head = bytearray()
        self.started = False
        self.timer: asyncio.TimerHandle | None = None
        self.over = False
        self.splice: SpliceTunnel | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.door._closed:
            self.abort_both()
            return
        self.door.connections.add(self)
        loop = asyncio.get_running_loop()
        self.last = loop.time()
        self.over = len(self.door.connections) > self.proxy.max_tunnels_per_door
        self.timer = loop.call_later(self.proxy.head_timeout, self._head_late)

    def _head_late(self) -> None:
        if not self.started:
            self.abort()

    def data_received(self, data: memoryview | bytes) -> None:
        if self.started:
            self.forward(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        limit = self.proxy.max_head_bytes
        if (end == -1 and len(self.head) > limit) or end + 4 > limit:
            self.answer(Refusal(431, f"the request head is longer than {limit} bytes"))
            return
        if end == -1:
            return
        self.started = True
        if self.timer is not None:
            self.timer.cancel()
        assert self.transport is not None
        self.transport.pause_reading()
        head, rest = bytes(self.head[: end + 4]), bytes(self.head[end + 4 :])
        self.head = bytearray()
        if self.over:  # answered once its head is read: closing unread would reset instead
            limit = self.proxy.max_tunnels_per_door
            self.answer(Refusal(503, f"more than {limit} connections at once through this door"))
            return
        self.task = asyncio.get_running_loop().create_task(self._admit(head, rest))

    def eof_received(self) -> bool:
        if not self.started:
            return False
        return super().eof_received()

    async def _admit(self, head: bytes, rest: bytes) -> None:
        request = parse_head(head)
        if isinstance(request, Refusal):
            self.answer(request)
            return
        host, port, upstream_head = request
        target = await self.proxy.decide(host, port, self.door.gate)
        if isinstance(target, Refusal):
            self.door.report(host, port, target)
            self.answer(target)
            return
        loop = asyncio.get_running_loop()
        upstream = _Upstream()
        try:
            async with asyncio.timeout(self.proxy.connect_timeout):
                await loop.create_connection(lambda: upstream, target[0], target[1])
        except TimeoutError:
            self.answer(Refusal(504, f"{host}:{port} did not answer in time"))
            return
        except OSError as exc:
            self.answer(Refusal(502, f"{host}:{port} could not be reached ({exc.strerror})"))
            return
        assert self.transport is not None and upstream.transport is not None
        if self.transport.is_closing():
            upstream.transport.abort()
            return
        self.peer, upstream.peer = upstream, self
        if upstream_head is None:
            self.transport.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        else:
            upstream.transport.write(upstream_head)
        if rest:
            upstream.transport.write(rest)
        self.last = upstream.last = loop.time()
        self.timer = loop.call_later(self.proxy.idle_timeout, self._idle)
        sent = not self.transport.get_write_buffer_size() and not (
            upstream.transport.get_write_buffer_size()
        )
        if self.proxy.splice and sent:  # else (rare) the Protocols pump it
            try:
                self.splice = SpliceTunnel(
                    (self.transport, upstream.transport), touch=self._touch, ended=self.abort_both
                )
            except OSError:
                self.splice = None
            else:
                self.splice.start()
                return
        self.transport.resume_reading()
        upstream.transport.resume_reading()

    def _touch(self) -> None:
        self.last = asyncio.get_running_loop().time()

    def _idle(self) -> None:
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self.last
        if quiet >= self.proxy.idle_timeout:
            self.abort()
        else:
            self.timer = loop.call_later(self.proxy.idle_timeout - quiet, self._idle)

    def answer(self, refusal: Refusal) -> None:
        """Send the refusal as a plain-text response and close."""
        if self.transport is None or self.transport.is_closing():
            return
        body = f"backspace egress: {refusal.reason}\n"
        if refusal.hint:
            body += f"{refusal.hint}\n"
        data = body.encode()
        status = f"{refusal.status} {REASONS.get(refusal.status, 'Error')}"
        self.transport.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        self.transport.close()

    def abort(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.splice is not None:
            self.splice.close()
        self.abort_both()

    def connection_lost(self, exc: Exception | None) -> None:
        self.door.connections.discard(self)
        if self.splice is not None:
            self.splice.close()
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        super().connection_lost(exc)


def parse_head(head: bytes) -> tuple[str, int, bytes | None] | Refusal:
    """(host, port, the head to send upstream: None for CONNECT) or a 400 saying what is wrong."""
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    usage = (
        "send `CONNECT host:port HTTP/1.1` (https) or an absolute-form request such as "
        "`GET http://host/path HTTP/1.1` (plain http)"
    )
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return Refusal(400, f"not an HTTP/1.x proxy request: {usage}")
    method, target, version = parts
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        return Refusal(400, "the request target is not ASCII")
    if method == b"CONNECT":
        authority = _authority(text, None)
        if authority is None:
            return Refusal(400, f"CONNECT needs host:port, not {text!r}")
        return authority[0], authority[1], None
    if not text.lower().startswith("http://"):
        return Refusal(400, f"{text!r} is not an absolute http:// URL: {usage}")
    url = urlsplit(text)
    authority = _authority(url.netloc, 80)
    if authority is None or "@" in url.netloc:
        return Refusal(400, f"{text!r} has no usable host")
    host, port = authority
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    out = [b" ".join((method, path.encode(), version))]
    dropped = {b"proxy-authorization", b"proxy-authenticate"}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        key = name.strip().lower()
        if not colon or not key:
            return Refusal(400, "a malformed header line")
        if key == b"connection":
            dropped |= {token.strip().lower() for token in value.split(b",")}
    for line in lines[1:]:
        key = line.partition(b":")[0].strip().lower()
        if key in HOP_BY_HOP or key in dropped or key.startswith(b"proxy-"):
            continue
        out.append(line)
    shown = url.netloc.encode()
    out[1:1] = [b"Host: " + shown]
    out.append(b"Connection: close")
    return host, port, b"\r\n".join(out) + b"\r\n\r\n"


def _authority(text: str, default_port: int | None) -> tuple[str, int] | None:
    """(normalised host, port) of `host[:port]` or `[v6]:port`; None when malformed."""
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        host, rest = text[: end + 1], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            host, port_text = text, ""
    if port_text is None:
        return None
    if port_text == "":
        if default_port is None:
            return None
        port = default_port
    elif port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        return None
    return normalise(host), port
