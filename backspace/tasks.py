"""A front end's background work (after it answered Slack or GitHub): owned, never raised."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger(__name__)


class Tasks:
    """Tasks a front end owns: a failure is logged, never raised; `aclose` cancels the rest."""

    def __init__(self, owner: str) -> None:
        self.owner = owner  # "Slack", "GitHub webhook": named in the log line of a failure
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("a %s task failed", self.owner)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
