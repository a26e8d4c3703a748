"""The event hub, over a real SQLite store: history then live events, no gap, no duplicate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest

from backspace.orchestrator.events import Event, EventType, RunStatus, Stage
from backspace.orchestrator.hub import BUFFER_LIMIT, EventHub
from backspace.orchestrator.store import Fence, NewEvent, Run, SqliteStore

RUN = "run-1"


class Owner:
    """Writes a run's events as the worker that claimed it does (the first one submits it)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.fences: dict[str, Fence] = {}

    async def append(self, run_id: str, type: str = EventType.PROGRESS) -> Event:
        new = NewEvent(type, {"n": 0})
        fence = self.fences.get(run_id)
        if fence is None:
            run = Run(
                id=run_id,
                family_id=run_id,
                created_at="2026-01-01T00:00:00.000Z",
                status=RunStatus.QUEUED,
                stage=Stage.QUEUED,
                repo_url="local:x",
                prompt="p",
            )
            first = await self.store.submit(run, {"repo": {}}, new)
            claim = await self.store.claim("worker", 60, among=[run_id])
            assert claim is not None
            self.fences[run_id] = claim.fence
            return first
        (event,) = await self.store.append(fence, [new])
        return event


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "hub.db")
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def owner(store: SqliteStore) -> Owner:
    return Owner(store)


@pytest.fixture
def hub(store: SqliteStore) -> EventHub:
    return EventHub(store)


async def emit(
    owner: Owner, hub: EventHub, type: str = EventType.PROGRESS, run_id: str = RUN
) -> Event:
    """What the orchestrator does: store first, then publish."""
    event = await owner.append(run_id, type)
    hub.publish([event])
    return event


async def collect(events: AsyncIterator[Event], timeout: float = 3.0) -> list[int]:
    async def run() -> list[int]:
        return [event.seq async for event in events]

    return await asyncio.wait_for(run(), timeout)


async def until(condition: object, timeout: float = 2.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0)


async def test_history_then_live_then_end(owner: Owner, hub: EventHub) -> None:
    for _ in range(3):
        await owner.append(RUN, EventType.PROGRESS)
    received: list[int] = []

    async def consume() -> None:
        async for event in hub.subscribe(RUN, after=0):
            received.append(event.seq)

    task = asyncio.create_task(consume())
    await until(lambda: len(received) == 3)
    assert hub.subscriber_count(RUN) == 1
    for _ in range(3):
        await emit(owner, hub)
        await asyncio.sleep(0)
    await emit(owner, hub, EventType.COMPLETE)
    await asyncio.wait_for(task, 2)

    assert received == [1, 2, 3, 4, 5, 6, 7]
    assert hub.subscriber_count(RUN) == 0


async def test_subscribe_after_k(owner: Owner, hub: EventHub) -> None:
    for _ in range(5):
        await owner.append(RUN, EventType.PROGRESS)
    await owner.append(RUN, EventType.COMPLETE)
    assert await collect(hub.subscribe(RUN, after=3)) == [4, 5, 6]
    assert await collect(hub.subscribe(RUN, after=5)) == [6]
    assert hub.subscriber_count(RUN) == 0


async def test_subscribe_after_k_with_live_events(owner: Owner, hub: EventHub) -> None:
    for _ in range(4):
        await owner.append(RUN, EventType.PROGRESS)
    task = asyncio.create_task(collect(hub.subscribe(RUN, after=2)))
    await until(lambda: hub.subscriber_count(RUN) == 1)
    await emit(owner, hub)
    await emit(owner, hub, EventType.COMPLETE)
    assert await task == [3, 4, 5, 6]


async def test_many_concurrent_subscribers(owner: Owner, hub: EventHub) -> None:
    await owner.append(RUN, EventType.START)
    tasks = [asyncio.create_task(collect(hub.subscribe(RUN), timeout=10)) for _ in range(100)]
    await until(lambda: hub.subscriber_count(RUN) == 100)
    for i in range(50):
        await emit(owner, hub)
        if i % 7 == 0:
            await asyncio.sleep(0)  # interleave: some events are buffered, some read at once
    await emit(owner, hub, EventType.COMPLETE)
    results = await asyncio.gather(*tasks)
    expected = list(range(1, 53))
    assert all(result == expected for result in results)
    assert hub.subscriber_count(RUN) == 0


async def test_slow_subscriber_catches_up_from_the_store_with_bounded_memory(
    owner: Owner, hub: EventHub
) -> None:
    await owner.append(RUN, EventType.START)
    events = hub.subscribe(RUN)
    first = await anext(events)  # registered, and now not reading
    assert first.seq == 1
    (subscriber,) = hub._feeds[RUN].subscribers  # the hub's own per-subscriber state
    largest = 0
    total = 3 * BUFFER_LIMIT + 17
    for _ in range(total):
        await emit(owner, hub)
        largest = max(largest, len(subscriber.buffer))
    await emit(owner, hub, EventType.COMPLETE)
    assert largest <= BUFFER_LIMIT
    assert subscriber.overflowed

    rest = await collect(events)
    assert [first.seq, *rest] == list(range(1, total + 3))
    assert hub.subscriber_count(RUN) == 0


async def test_slow_subscriber_after_partial_read(owner: Owner, hub: EventHub) -> None:
    """Overflow while events from an earlier batch are still unread: still exact."""
    task_events = hub.subscribe(RUN)

    async def read_one() -> Event:
        return await anext(task_events)

    reader = asyncio.create_task(read_one())
    await until(lambda: hub.subscriber_count(RUN) == 1)
    for _ in range(10):
        await emit(owner, hub)
    first = await reader  # the generator now holds 9 buffered events it has not yielded
    for _ in range(BUFFER_LIMIT + 5):
        await emit(owner, hub)
    await emit(owner, hub, EventType.COMPLETE)
    rest = await collect(task_events)
    assert [first.seq, *rest] == list(range(1, 10 + BUFFER_LIMIT + 5 + 2))


async def test_finished_run_gives_the_whole_history(owner: Owner, hub: EventHub) -> None:
    for _ in range(20):
        await owner.append(RUN, EventType.TOOL_BASH)
    await owner.append(RUN, EventType.COMPLETE)
    assert await collect(hub.subscribe(RUN)) == list(range(1, 22))
    # Another run's events are not mixed in.
    await owner.append("other", EventType.COMPLETE)
    assert await collect(hub.subscribe("other")) == [1]
    assert hub.subscriber_count(RUN) == 0 and hub.subscriber_count("other") == 0


async def test_a_subscriber_that_stops_early_is_removed(owner: Owner, hub: EventHub) -> None:
    for _ in range(3):
        await owner.append(RUN, EventType.PROGRESS)
    events = hub.subscribe(RUN)
    assert isinstance(events, AsyncGenerator)
    assert (await anext(events)).seq == 1
    assert hub.subscriber_count(RUN) == 1
    await events.aclose()  # released at once, not whenever the garbage collector gets to it
    assert hub.subscriber_count(RUN) == 0
    await emit(owner, hub)  # publishing to nobody is fine


async def test_batches_heartbeat_while_idle(owner: Owner, hub: EventHub) -> None:
    await owner.append(RUN, EventType.START)
    received: list[int | None] = []

    async def consume() -> None:
        async for batch in hub.batches(RUN, heartbeat=0.05):
            received.extend([e.seq for e in batch] or [None])

    task = asyncio.create_task(consume())
    await until(lambda: received.count(None) >= 2)
    await emit(owner, hub)
    await emit(owner, hub, EventType.COMPLETE)
    await asyncio.wait_for(task, 2)
    assert [seq for seq in received if seq is not None] == [1, 2, 3]
    assert received[0] == 1 and received[-2:] == [2, 3]
    assert hub.subscriber_count(RUN) == 0


async def test_events_that_arrive_together_come_as_one_batch(owner: Owner, hub: EventHub) -> None:
    """A viewer pays its write cost per batch, so a burst must not be split into single events."""
    await owner.append(RUN, EventType.START)
    batches = hub.batches(RUN)
    assert [e.seq for e in await anext(batches)] == [1]
    waiting = asyncio.create_task(anext(batches))
    await until(lambda: hub.subscriber_count(RUN) == 1)
    await asyncio.sleep(0)
    for _ in range(5):
        await emit(owner, hub)
    await emit(owner, hub, EventType.COMPLETE)
    assert [e.seq for e in await asyncio.wait_for(waiting, 2)] == [2, 3, 4, 5, 6, 7]
    with pytest.raises(StopAsyncIteration):
        await anext(batches)
    assert hub.subscriber_count(RUN) == 0


async def test_a_viewer_that_claims_to_be_past_the_end_still_ends(
    owner: Owner, hub: EventHub
) -> None:
    """An `after` beyond every seq (a stale or made-up Last-Event-ID) must not wait forever."""
    await owner.append(RUN, EventType.START)
    task = asyncio.create_task(collect(hub.subscribe(RUN, after=99), timeout=5))
    await until(lambda: hub.subscriber_count(RUN) == 1)
    await emit(owner, hub)
    await emit(owner, hub, EventType.COMPLETE)
    assert await asyncio.wait_for(task, 2) == []
    assert hub.subscriber_count(RUN) == 0


class CountingStore(SqliteStore):
    """The same SQLite file, counting the reads the hub makes of it."""

    reads = 0

    async def events_after(
        self, run_id: str, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        self.reads += 1
        return await super().events_after(run_id, after, limit)


async def test_a_ring_from_another_process_is_one_read_for_every_viewer(tmp_path: Path) -> None:
    """Events another replica stored arrive as a bell `run_id:seq`: the hub reads them once per
    ring, however many viewers the run has here, and every viewer gets each event once."""
    path = tmp_path / "shared.db"
    elsewhere = Owner(SqliteStore(path))  # the replica that executes the run
    await elsewhere.append(RUN, EventType.START)
    here = CountingStore(path)
    hub = EventHub(here, poll_seconds=0)
    viewers = [asyncio.create_task(collect(hub.subscribe(RUN), timeout=5)) for _ in range(50)]
    await until(lambda: hub.subscriber_count(RUN) == 50)
    await until(lambda: here.reads == 50)  # each viewer's own first read of the past
    for _ in range(3):
        last = await elsewhere.append(RUN)
    hub.notified(RUN, last.seq)
    hub.notified(RUN, last.seq)  # a repeated ring while the read runs: one more read at most
    await until(lambda: here.reads >= 51)
    last = await elsewhere.append(RUN, EventType.COMPLETE)
    hub.notified(RUN, last.seq)
    assert all(seqs == [1, 2, 3, 4, 5] for seqs in await asyncio.gather(*viewers))
    assert here.reads <= 53, here.reads  # rings, not viewers, cost reads
    await here.aclose()
    await elsewhere.store.aclose()


async def test_a_published_batch_that_skips_seqs_is_filled_from_the_store(tmp_path: Path) -> None:
    """This process publishes seq 5 (a reaper here ending a run another replica wrote 2..4 of):
    its viewers still get 2, 3, 4 first, read from the store."""
    path = tmp_path / "shared.db"
    elsewhere = Owner(SqliteStore(path))
    await elsewhere.append(RUN, EventType.START)
    here = SqliteStore(path)
    hub = EventHub(here, poll_seconds=0)
    viewer = asyncio.create_task(collect(hub.subscribe(RUN), timeout=5))
    await until(lambda: hub.subscriber_count(RUN) == 1)
    await asyncio.sleep(0.05)
    for _ in range(3):
        await elsewhere.append(RUN)
    end = await elsewhere.append(RUN, EventType.COMPLETE)
    hub.publish([end])
    assert await viewer == [1, 2, 3, 4, 5]
    await here.aclose()
    await elsewhere.store.aclose()
