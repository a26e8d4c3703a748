"""The model gateway: how an engine running inside a sandbox reaches the model without its key.

Claude Code (or any engine that speaks the Messages API) runs in the sandbox with
ANTHROPIC_BASE_URL=http://127.0.0.1:3129 and a placeholder key. That loopback port is relayed by
socat to a Unix socket bound into the sandbox, and on the host this gateway listens on it: one
`GatewayLease` per run, with its own socket, budget and usage. Each allowed request (the Messages
API, see request.py) is forwarded to the configured ANTHROPIC_BASE_URL with the real key in place of
the placeholder; the answer streams back unchanged while its usage is counted (meter.py), and past
the run's budget requests are refused. The real key lives here, on the host, and nowhere else.

Where the sandbox cannot be given a socket (Daytona: it runs on another machine), the same lease
is reached over the network instead: `grant` gives the run a capability, a 128-bit random token
the server's HTTP app accepts at `/gateway/<token>/v1/...` (backspace/http/model_gateway.py) and
relays to the lease's socket, which stays on the host. A capability is valid from `grant` to
`revoke` (the run's agent stage) and never after its lease closes; it reaches only its own lease,
with that run's budget, paths and reports.

One per server. Like the egress proxy, it serves on its own thread and event loop, so a slow or
hostile client (or a large answer) never loads the server's loop; every connection is a task
with its own timeouts, so one run's clients cannot hold up another's. Upstream goes through one
pooled httpx client.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from backspace.orchestrator.gateway.lease import GatewayLease
from backspace.orchestrator.loop_thread import LoopThread

if TYPE_CHECKING:
    from backspace.config import Settings

DEFAULT_BASE_URL = "https://api.anthropic.com"


@dataclass(frozen=True)
class GatewayLimits:
    max_head_bytes: int = 32 * 1024  # request line and headers
    max_body_bytes: int = 32 * 1024 * 1024  # the Messages API's own request limit
    head_timeout: float = 10.0  # from a request's first byte to the end of its head
    body_timeout: float = 60.0  # to read a whole body
    idle_timeout: float = 600.0  # a kept-alive connection between requests
    write_timeout: float = 60.0  # a client that stops reading its answer
    connect_timeout: float = 10.0
    read_timeout: float = 600.0  # between two pieces of the model's answer
    max_connections_per_run: int = 32
    max_reports_per_run: int = 50


class ModelGateway:
    """One per server: serves every run's model socket on its own thread and event loop."""

    def __init__(
        self,
        api_key: str | None,
        base_url: str | None = None,
        *,
        limits: GatewayLimits | None = None,
    ) -> None:
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.limits = limits or GatewayLimits()
        self._api_key = api_key or None
        self._lock = threading.Lock()
        self._thread = LoopThread("backspace-gateway")
        self._client: httpx.AsyncClient | None = None
        self._leases: set[GatewayLease] = set()
        # sha256(token) -> (token, lease): looked up by digest, so the dictionary's timing says
        # nothing about the token; then compared in constant time.
        self._capabilities: dict[bytes, tuple[str, GatewayLease]] = {}
        upstream = httpx.URL(self.base_url)
        self.upstream_host = upstream.host
        self.upstream_port = upstream.port or (443 if upstream.scheme == "https" else 80)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelGateway:
        key = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None
        return cls(key, settings.anthropic_base_url)

    def __repr__(self) -> str:  # never the key
        return f"ModelGateway({self.base_url!r})"

    # --- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the gateway's thread and its upstream pool (once; later calls do nothing)."""
        with self._lock:
            loop, started = self._thread.start()
            if started:
                future = asyncio.run_coroutine_threadsafe(self._make_client(), loop)
                self._client = future.result(30)

    async def _make_client(self) -> httpx.AsyncClient:
        limits = self.limits
        return httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=limits.connect_timeout,
                read=limits.read_timeout,
                write=limits.write_timeout,
                pool=limits.connect_timeout,
            ),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,  # the model's URL is the operator's setting, not the environment's
        )

    @property
    def running(self) -> bool:
        return self._thread.loop is not None

    def stop(self) -> None:
        """Close every lease and the upstream pool, then stop the thread."""
        with self._lock:
            taken, client = self._thread.take(), self._client
            self._client = None
        if taken is None:
            return
        loop, _ = taken
        for lease in list(self._leases):
            future = asyncio.run_coroutine_threadsafe(lease._shut(), loop)
            future.result(timeout=10)
        if client is not None:
            asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=10)
        LoopThread.finish(*taken)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.stop)

    async def open(
        self,
        run_id: str,
        *,
        budget_usd: float,
        emit: Callable[[str, dict[str, Any]], None],
        socket_path: Path,
        owner_uid: int | None = None,
    ) -> GatewayLease:
        """Listen at `socket_path` (mode 0600, owned by `owner_uid` when given: the user the
        sandbox runs as) for one run, whose spend may reach `budget_usd`. Refused attempts are
        given to `emit` as `network_blocked` events, on the caller's event loop."""
        if budget_usd <= 0:
            raise ValueError(f"the run's budget must be positive, not {budget_usd}")
        await asyncio.to_thread(self.start)
        loop, client = self._thread.loop, self._client
        assert loop is not None and client is not None
        lease = GatewayLease(
            self,
            run_id,
            budget_usd=budget_usd,
            emit=emit,
            owner_loop=asyncio.get_running_loop(),
            loop=loop,
            client=client,
        )
        await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(lease._listen(socket_path, owner_uid), loop)
        )
        self._leases.add(lease)
        return lease

    # --- for the leases -------------------------------------------------------------------------
    def upstream_headers(self) -> list[tuple[str, str]]:
        """The credential the gateway adds to every forwarded request (none for a keyless
        local server)."""
        return [("x-api-key", self._api_key)] if self._api_key else []

    def forget(self, lease: GatewayLease) -> None:
        self._leases.discard(lease)
        with self._lock:
            for digest, (_, holder) in list(self._capabilities.items()):
                if holder is lease:
                    del self._capabilities[digest]

    # --- capabilities: the lease over the network -------------------------------------------------
    def grant(self, lease: GatewayLease) -> str:
        """A new capability for `lease` (128 random bits, hex): whoever holds it reaches that
        lease, and nothing else, until `revoke` or the lease's close."""
        if lease.closed:
            raise ValueError(f"the lease of run {lease.run_id} is closed")
        token = secrets.token_hex(16)
        with self._lock:
            self._capabilities[_digest(token)] = (token, lease)
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._capabilities.pop(_digest(token), None)

    def lease_for(self, token: str) -> GatewayLease | None:
        """The open lease `token` was granted for; None for an unknown, revoked or expired one."""
        with self._lock:
            found = self._capabilities.get(_digest(token))
        if found is None or not hmac.compare_digest(found[0].encode(), token.encode()):
            return None
        lease = found[1]
        return None if lease.closed or lease.path is None else lease


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()
