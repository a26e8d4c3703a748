"""A run's events on their way to the store, then to its viewers.

`emit` stays synchronous (the pipeline, the agent's tools and their timers call it from plain
functions); a flusher task writes whatever gathered since its last write in one transaction,
then hands the stored events to the hub. So an event is stored before any viewer sees it, an
idle run's event is written at once, and a busy run's events are batched by how long a write
takes, with no delay added. A write the store refuses (its disk, or a lost lease) ends the run
through `on_failure`; nothing more is written after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from backspace.orchestrator.errors import StoreError
from backspace.orchestrator.events import Event
from backspace.orchestrator.redact import Redactor
from backspace.orchestrator.store import Fence, NewEvent, RunStore

log = logging.getLogger(__name__)


class EventSink:
    def __init__(
        self,
        store: RunStore,
        fence: Fence,
        publish: Callable[[list[Event]], None],
        redactor: Redactor,
        on_failure: Callable[[StoreError], None],
    ) -> None:
        self.store = store
        self.fence = fence
        self._publish = publish
        self._redactor = redactor
        self._on_failure = on_failure
        self._pending: list[NewEvent] = []
        self._flusher: asyncio.Task[None] | None = None
        self.failure: StoreError | None = None
        self.last_seq = 0  # the last seq stored

    def emit(self, type_: str, data: dict[str, Any]) -> None:
        if self.failure is not None:
            return
        self._pending.append(NewEvent(type_, self._redactor.data(data)))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name=f"events-{self.fence.run_id}"
            )

    async def drain(self) -> None:
        """Wait until everything emitted so far is stored (or the store refused it)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        while self._pending and self.failure is None:
            batch, self._pending = self._pending, []
            try:
                events = await self.store.append(self.fence, batch)
            except Exception as exc:
                failure = exc if isinstance(exc, StoreError) else StoreError(str(exc))
                if failure is not exc:
                    log.error("run %s: its events could not be stored: %r", self.fence.run_id, exc)
                self.failure = failure
                self._pending.clear()
                self._on_failure(failure)
                return
            if events:
                self.last_seq = events[-1].seq
                self._publish(events)
