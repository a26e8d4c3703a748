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
    __slots__ = ("buffer", "overflowed", "wakeup")

    def __init__(self) -> None:
        self.buffer: deque[Event] = deque()
        self.overflowed = False
        self.wakeup = asyncio.Event()

    def offer(self, event: Event) -> None:
        if len(self.buffer) >= BUFFER_LIMIT:
            self.buffer.clear()
            self.overflowed = True
        elif not self.overflowed:
            self.buffer.append(event)
        self.wakeup.set()


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
        async with contextlib.aclosing(self.stream(run_id, after)) as events:
            async for event in events:
                if event is not None:
                    yield event

    async def stream(
        self, run_id: str, after: int = 0, heartbeat: float | None = None
    ) -> AsyncGenerator[Event | None, None]:
        """Like `subscribe`, but yields None after `heartbeat` seconds without an event.

        Registration and the first store read happen with no await between them, so an event
        published meanwhile is either in the read or in the buffer (then skipped by seq).
        """
        subscriber = _Subscriber()
        self._subscribers.setdefault(run_id, set()).add(subscriber)
        last = after
        try:
            pending: list[Event] = self._store.events_after(run_id, last)
            while True:
                for event in pending:
                    if event.seq <= last:
                        continue
                    last = event.seq
                    yield event
                    if event.is_terminal:
                        return
                pending = await self._next(subscriber, run_id, last, heartbeat)
                if not pending:
                    yield None
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
            subscriber.wakeup.clear()
            try:
                await asyncio.wait_for(subscriber.wakeup.wait(), heartbeat)
            except TimeoutError:
                return []
        if subscriber.overflowed:
            subscriber.overflowed = False
            subscriber.buffer.clear()
            return self._store.events_after(run_id, last)
        events = list(subscriber.buffer)
        subscriber.buffer.clear()
        return events
