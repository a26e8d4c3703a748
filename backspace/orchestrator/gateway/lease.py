"""One run's share of the model gateway: its socket, its budget, its spend, its reports.

The lease is served on the gateway's thread; the engine reads `spent_usd`, `exceeded` and `usage`
from its own loop (plain values, replaced whole) and calls `close` when the run's sandbox goes.
Refused attempts reach `emit` on the loop that opened the lease, so a run's events stay in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import httpx

from backspace.orchestrator.agent.pricing import Usage
from backspace.orchestrator.events import EventType
from backspace.orchestrator.gateway.request import Refusal

if TYPE_CHECKING:
    from backspace.orchestrator.gateway.connection import Connection
    from backspace.orchestrator.gateway.gateway import ModelGateway


class GatewayLease:
    def __init__(
        self,
        gateway: ModelGateway,
        run_id: str,
        *,
        budget_usd: float,
        emit: Callable[[str, dict[str, Any]], None],
        owner_loop: asyncio.AbstractEventLoop,
        loop: asyncio.AbstractEventLoop,
        client: httpx.AsyncClient,
    ) -> None:
        self.gateway = gateway
        self.run_id = run_id
        self.budget_usd = budget_usd
        self.usage = Usage()
        self.exceeded = False
        self.requests = 0  # forwarded to the model
        self.refused = 0  # refused for the budget
        self.client = client
        self.loop = loop
        self.connections: set[Connection] = set()
        self.path: Path | None = None
        self._emit = emit
        self._owner_loop = owner_loop
        self._reported: set[tuple[str, int, str | None]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def spent_usd(self) -> float:
        return self.usage.cost_usd

    def __repr__(self) -> str:
        return f"GatewayLease({self.run_id!r}, spent_usd={self.spent_usd:.4f})"

    # --- on the gateway's loop ------------------------------------------------------------------
    async def _listen(self, path: Path, owner_uid: int | None) -> None:
        from backspace.orchestrator.gateway.connection import Connection

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await Connection(self, reader, writer).serve()

        self._server = await asyncio.start_unix_server(
            serve, path=str(path), limit=self.gateway.limits.max_head_bytes, backlog=256
        )
        self.path = path
        os.chmod(path, 0o600)
        if owner_uid is not None:
            os.chown(path, owner_uid, -1)

    def over_budget(self) -> bool:
        """True (and `exceeded` from now on) when the run has spent its budget."""
        if self.usage.cost_usd >= self.budget_usd:
            self.exceeded = True
        if self.exceeded:
            self.refused += 1
        return self.exceeded

    def charge(self, model: str, usage: dict[str, int]) -> None:
        """Add one answer's usage; the Usage is replaced whole, so a reader on another thread
        never sees it half added."""
        if not usage:
            return
        total = Usage(**{k: v for k, v in vars(self.usage).items()})
        total.add(model, SimpleNamespace(**usage))
        self.usage = total

    def report(self, refusal: Refusal, method: str) -> None:
        """A refused attempt as a `network_blocked` event: once per host, port and path, at most
        max_reports_per_run times (every attempt is still refused)."""
        if refusal.blocked is None and refusal.path is None:
            return
        host, port = refusal.blocked or (self.gateway.upstream_host, self.gateway.upstream_port)
        key = (host, port, refusal.path)
        limit = self.gateway.limits.max_reports_per_run
        if key in self._reported or len(self._reported) >= limit:
            return
        self._reported.add(key)
        event: dict[str, Any] = {
            "host": host,
            "port": port,
            "phase": "agent",
            "command": None,
            "reason": refusal.message.removeprefix("backspace: "),
            "hint": "the model gateway lets the engine reach the model's Messages API only",
            "via": "model gateway",
            "method": method,
            "path": refusal.path,
        }
        with contextlib.suppress(RuntimeError):  # the run's loop has closed: the run is over
            self._owner_loop.call_soon_threadsafe(self._emit, EventType.NETWORK_BLOCKED, event)

    async def _shut(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [c.task for c in self.connections if c.task is not None]
        for connection in list(self.connections):
            connection.abort()
        if tasks:  # let them end (their answers' usage is still counted) before the loop may stop
            await asyncio.wait(tasks, timeout=5)
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.gateway.forget(self)

    # --- on the engine's loop -------------------------------------------------------------------
    async def close(self) -> None:
        """Stop listening, end every connection of the run, remove its socket. Twice is fine."""
        if self._closed:
            return
        self._closed = True
        self.gateway.forget(self)  # its capabilities die with it, before its socket does
        if self.loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._shut(), self.loop)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.wrap_future(future), timeout=10)
