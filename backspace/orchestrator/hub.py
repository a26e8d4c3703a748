"""Fan-out of a run's events: the past from the store, then the live ones, no gap, no duplicate.

Each subscriber has a small bounded buffer. A subscriber that falls behind is not allowed to grow
memory: its buffer is dropped and it catches up from the store, which holds every event anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator

from backspace.orchestrator.events import Event
from backspace.orchestrator.store import Store

BUFFER_LIMIT = 512


class _Subscriber:
    """A viewer's buffer, and a future its reader awaits while the buffer is empty.

    A bare future (rather than asyncio.Event plus wait_for) costs no task per wait: with a
    thousand viewers of one run, each event wakes a thousand readers.
    """

    __slots__ = ("buffer", "overflowed", "waiter")

    def __init__(self) -> None:
        self.buffer: deque[Event] = deque()
        self.overflowed = False
        self.waiter: asyncio.Future[None] | None = None

    def offer(self, event: Event) -> None:
        if len(self.buffer) >= BUFFER_LIMIT:
            self.buffer.clear()
            self.overflowed = True
        elif not self.overflowed:
            self.buffer.append(event)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, timeout: float | None) -> bool:
        """Wait until something was offered; False when `timeout` seconds passed first."""
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self.waiter
        except TimeoutError:
            return False
        finally:
            self.waiter = None
        return True


class EventHub:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._subscribers: dict[str, set[_Subscriber]] = {}

    def publish(self, event: Event) -> None:
        for subscriber in self._subscribers.get(event.run_id, ()):
            subscriber.offer(event)

    def subscriber_count(self, run_id: str) -> int:
        return len(self._subscribers.get(run_id, ()))

    async def subscribe(self, run_id: str, after: int = 0) -> AsyncIterator[Event]:
        """Yield the run's events with seq > after, ending after `complete`."""
        async with contextlib.aclosing(self.batches(run_id, after)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def batches(
        self, run_id: str, after: int = 0, heartbeat: float | None = None
    ) -> AsyncGenerator[list[Event], None]:
        """Like `subscribe`, but in batches: whatever arrived since the subscriber last asked.

        A viewer that writes one batch at a time pays its per-write cost once per batch, not
        once per event. An empty batch means `heartbeat` seconds passed without an event.
        Registration and the first store read happen with no await between them, so an event
        published meanwhile is either in the read or in the buffer (then skipped by seq).
        """
        subscriber = _Subscriber()
        self._subscribers.setdefault(run_id, set()).add(subscriber)
        last = after
        try:
            pending: list[Event] = self._store.events_after(run_id, last)
            while True:
                batch = [event for event in pending if event.seq > last]
                # The end also ends a viewer who says it saw past it (`after` beyond the last
                # seq): otherwise that viewer would wait forever.
                ended = any(event.is_terminal for event in pending)
                for index, event in enumerate(batch):
                    if event.is_terminal:
                        del batch[index + 1 :]
                        break
                if batch:
                    last = batch[-1].seq
                    yield batch
                if ended:
                    return
                pending = await self._next(subscriber, run_id, last, heartbeat)
                if not pending:
                    yield []
        finally:
            subscribers = self._subscribers.get(run_id)
            if subscribers is not None:
                subscribers.discard(subscriber)
                if not subscribers:
                    del self._subscribers[run_id]

    async def _next(
        self, subscriber: _Subscriber, run_id: str, last: int, heartbeat: float | None
    ) -> list[Event]:
        """The next batch of events; an empty list when `heartbeat` seconds passed without one."""
        while not subscriber.buffer and not subscriber.overflowed:
            if not await subscriber.wait(heartbeat):
                return []
        if subscriber.overflowed:
            subscriber.overflowed = False
            subscriber.buffer.clear()
            return self._store.events_after(run_id, last)
        events = list(subscriber.buffer)
        subscriber.buffer.clear()
        return events
