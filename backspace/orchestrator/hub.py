"""Fan-out of a run's events: the past from the store, then the live ones, no gap, no duplicate.

Live events reach this process's viewers two ways. The runs it executes publish what they stored
(`publish`). Runs executing elsewhere (another replica) ring the store's bell with
`run_id:last_seq` (`notified`): one read per run per ring, however many viewers the run has
here, then offered to all of them; a poll does the same for a missed ring (a shared store only).

Each subscriber has a small bounded buffer. A subscriber that falls behind is not allowed to grow
memory: its buffer is dropped and it catches up from the store, which holds every event anyway.
A batch that would skip a seq is never yielded: the subscriber reads the gap from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable

from backspace.orchestrator.events import Event
from backspace.orchestrator.store import RunStore

log = logging.getLogger(__name__)
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


class _Feed:
    """One run's viewers in this process, and the last seq they were all offered."""

    __slots__ = ("again", "reader", "seen", "subscribers")

    def __init__(self) -> None:
        self.subscribers: set[_Subscriber] = set()
        self.seen = 0
        self.reader: asyncio.Task[None] | None = None
        self.again = False


class EventHub:
    def __init__(self, store: RunStore, *, poll_seconds: float | None = None) -> None:
        self._store = store
        self._feeds: dict[str, _Feed] = {}
        # A shared store's bell can be missed (a listener reconnecting): poll the watched runs.
        self._poll_seconds = (
            poll_seconds if poll_seconds is not None else (2.0 if store.shared else None)
        )
        self._poller: asyncio.Task[None] | None = None

    # --- what arrives --------------------------------------------------------------------------
    def publish(self, events: Iterable[Event]) -> None:
        """Events this process stored (in seq order per run): offered to the run's viewers."""
        for event in events:
            feed = self._feeds.get(event.run_id)
            if feed is None or event.seq <= feed.seen:
                continue
            if feed.seen and event.seq > feed.seen + 1:
                self._read(event.run_id, feed)  # another process wrote the ones between
                continue
            feed.seen = event.seq
            for subscriber in feed.subscribers:
                subscriber.offer(event)

    def notified(self, run_id: str, seq: int) -> None:
        """The bell: another process stored the run's events up to `seq` (-1: unknown, read)."""
        feed = self._feeds.get(run_id)
        if feed is not None and (seq < 0 or seq > feed.seen):
            self._read(run_id, feed)

    def catch_up(self) -> None:
        """Read every watched run (after the bell was deaf for a while)."""
        for run_id, feed in list(self._feeds.items()):
            self._read(run_id, feed)

    def subscriber_count(self, run_id: str | None = None) -> int:
        """Viewers of `run_id` in this process (of every run, without one)."""
        if run_id is None:
            return sum(len(feed.subscribers) for feed in self._feeds.values())
        feed = self._feeds.get(run_id)
        return len(feed.subscribers) if feed else 0

    def _read(self, run_id: str, feed: _Feed) -> None:
        """One read at a time per run; a ring during it makes one more."""
        if feed.reader is not None and not feed.reader.done():
            feed.again = True
            return
        feed.reader = asyncio.get_running_loop().create_task(
            self._read_feed(run_id, feed), name=f"hub-read-{run_id}"
        )

    async def _read_feed(self, run_id: str, feed: _Feed) -> None:
        while True:
            feed.again = False
            try:
                events = await self._store.events_after(run_id, feed.seen)
            except Exception as exc:
                log.warning("the events of run %s could not be read: %s", run_id, exc)
                return
            for event in events:
                if event.seq == feed.seen + 1:
                    feed.seen = event.seq
                    for subscriber in feed.subscribers:
                        subscriber.offer(event)
            if not feed.again or self._feeds.get(run_id) is not feed:
                return

    async def _poll(self) -> None:
        assert self._poll_seconds is not None
        while self._feeds:
            await asyncio.sleep(self._poll_seconds)
            self.catch_up()

    # --- viewers -------------------------------------------------------------------------------
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
        The subscriber is registered before the first store read: an event stored meanwhile is
        either in the read or offered to its buffer (then skipped by seq).
        """
        subscriber = _Subscriber()
        feed = self._feeds.get(run_id)
        if feed is None:
            feed = self._feeds[run_id] = _Feed()
            if self._poll_seconds and (self._poller is None or self._poller.done()):
                self._poller = asyncio.get_running_loop().create_task(self._poll(), name="hub-poll")
        feed.subscribers.add(subscriber)
        last = after
        try:
            pending: list[Event] = await self._store.events_after(run_id, last)
            if pending:
                feed.seen = max(feed.seen, pending[-1].seq)
            while True:
                batch = [event for event in pending if event.seq > last]
                if batch and batch[0].seq != last + 1:  # a gap: the store has what is missing
                    batch = await self._store.events_after(run_id, last)
                # The end also ends a viewer who says it saw past it (`after` beyond the last
                # seq): otherwise that viewer would wait forever.
                ended = any(event.is_terminal for event in pending + batch)
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
            feed.subscribers.discard(subscriber)
            if not feed.subscribers and self._feeds.get(run_id) is feed:
                del self._feeds[run_id]

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
            return await self._store.events_after(run_id, last)
        events = list(subscriber.buffer)
        subscriber.buffer.clear()
        return events
