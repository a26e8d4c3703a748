"""uvicorn's server, with a drain before it stops: SIGTERM ends claiming first, not serving.

uvicorn on SIGTERM closes its listening socket at once, waits for open connections, and only
then runs the lifespan's shutdown, where the runner drains. For a replica of a fleet that order
is wrong twice: while uvicorn waits for a viewer's connection the runner still claims queued runs
(which the grace period may then cut short), and a load balancer asking /health meanwhile gets a
refused connection instead of `accepting_runs: false`. So the first SIGTERM (or SIGINT) starts
`drain` while the server still answers: no new claims, /health says not accepting, new runs are
refused with 503 (another replica takes them), the running runs get the grace period and their
viewers see them end. Then uvicorn stops as usual. A second signal stops it at once.

http/drain.py chains onto this server's handler: the runner stops claiming at the signal itself,
before this handler runs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """A signal handler (the main thread, between two steps of the loop)."""
        if self._loop is None or self._draining is not None or not self.started:
            super().handle_exit(sig, frame)  # a second signal, or before start: stop now
            return
        self._loop.call_soon_threadsafe(self._begin, sig)

    def _begin(self, sig: int) -> None:
        if self._draining is not None:
            return
        log.info("draining: no new runs here; running runs finish, then the server stops")
        self._draining = asyncio.get_running_loop().create_task(self._then_exit(sig))

    async def _then_exit(self, sig: int) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("the drain failed; the server stops")
        finally:
            super().handle_exit(sig, None)
