"""The event hub, over a real SQLite store: history then live events, no gap, no duplicate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path

import pytest

from backspace.orchestrator.events import Event, EventType
from backspace.orchestrator.hub import BUFFER_LIMIT, EventHub
from backspace.orchestrator.store import Store

RUN = "run-1"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "hub.db")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def hub(store: Store) -> EventHub:
    return EventHub(store)


def emit(store: Store, hub: EventHub, type: str = EventType.PROGRESS, run_id: str = RUN) -> Event:
    """What the orchestrator does: store first, then publish."""
    event = store.append_event(run_id, type, {"n": 0})
    hub.publish(event)
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


async def test_history_then_live_then_end(store: Store, hub: EventHub) -> None:
    for _ in range(3):
        store.append_event(RUN, EventType.PROGRESS, {})
    received: list[int] = []

    async def consume() -> None:
        async for event in hub.subscribe(RUN, after=0):
            received.append(event.seq)

    task = asyncio.create_task(consume())
    await until(lambda: len(received) == 3)
    assert hub.subscriber_count(RUN) == 1
    for _ in range(3):
        emit(store, hub)
        await asyncio.sleep(0)
    emit(store, hub, EventType.COMPLETE)
    await asyncio.wait_for(task, 2)

    assert received == [1, 2, 3, 4, 5, 6, 7]
    assert hub.subscriber_count(RUN) == 0


async def test_subscribe_after_k(store: Store, hub: EventHub) -> None:
    for _ in range(5):
        store.append_event(RUN, EventType.PROGRESS, {})
    store.append_event(RUN, EventType.COMPLETE, {})
    assert await collect(hub.subscribe(RUN, after=3)) == [4, 5, 6]
    assert await collect(hub.subscribe(RUN, after=5)) == [6]
    assert hub.subscriber_count(RUN) == 0


async def test_subscribe_after_k_with_live_events(store: Store, hub: EventHub) -> None:
    for _ in range(4):
        store.append_event(RUN, EventType.PROGRESS, {})
    task = asyncio.create_task(collect(hub.subscribe(RUN, after=2)))
    await until(lambda: hub.subscriber_count(RUN) == 1)
    emit(store, hub)
    emit(store, hub, EventType.COMPLETE)
    assert await task == [3, 4, 5, 6]


async def test_many_concurrent_subscribers(store: Store, hub: EventHub) -> None:
    store.append_event(RUN, EventType.START, {})
    tasks = [asyncio.create_task(collect(hub.subscribe(RUN), timeout=10)) for _ in range(100)]
    await until(lambda: hub.subscriber_count(RUN) == 100)
    for i in range(50):
        emit(store, hub)
        if i % 7 == 0:
            await asyncio.sleep(0)  # interleave: some events are buffered, some read at once
    emit(store, hub, EventType.COMPLETE)
    results = await asyncio.gather(*tasks)
    expected = list(range(1, 53))
    assert all(result == expected for result in results)
    assert hub.subscriber_count(RUN) == 0


async def test_slow_subscriber_catches_up_from_the_store_with_bounded_memory(
    store: Store, hub: EventHub
) -> None:
    store.append_event(RUN, EventType.START, {})
    events = hub.subscribe(RUN)
    first = await anext(events)  # registered, and now not reading
    assert first.seq == 1
    (subscriber,) = hub._subscribers[RUN]  # the hub's own per-subscriber state
    largest = 0
    total = 3 * BUFFER_LIMIT + 17
    for _ in range(total):
        emit(store, hub)
        largest = max(largest, len(subscriber.buffer))
    emit(store, hub, EventType.COMPLETE)
    assert largest <= BUFFER_LIMIT
    assert subscriber.overflowed

    rest = await collect(events)
    assert [first.seq, *rest] == list(range(1, total + 3))
    assert hub.subscriber_count(RUN) == 0


async def test_slow_subscriber_after_partial_read(store: Store, hub: EventHub) -> None:
    """Overflow while events from an earlier batch are still unread: still exact."""
    task_events = hub.subscribe(RUN)

    async def read_one() -> Event:
        return await anext(task_events)

    reader = asyncio.create_task(read_one())
    await until(lambda: hub.subscriber_count(RUN) == 1)
    for _ in range(10):
        emit(store, hub)
    first = await reader  # the generator now holds 9 buffered events it has not yielded
    for _ in range(BUFFER_LIMIT + 5):
        emit(store, hub)
    emit(store, hub, EventType.COMPLETE)
    rest = await collect(task_events)
    assert [first.seq, *rest] == list(range(1, 10 + BUFFER_LIMIT + 5 + 2))


async def test_finished_run_gives_the_whole_history(store: Store, hub: EventHub) -> None:
    for _ in range(20):
        store.append_event(RUN, EventType.TOOL_BASH, {})
    store.append_event(RUN, EventType.COMPLETE, {})
    assert await collect(hub.subscribe(RUN)) == list(range(1, 22))
    # Another run's events are not mixed in.
    store.append_event("other", EventType.COMPLETE, {})
    assert await collect(hub.subscribe("other")) == [1]
    assert hub.subscriber_count(RUN) == 0 and hub.subscriber_count("other") == 0


async def test_a_subscriber_that_stops_early_is_removed(store: Store, hub: EventHub) -> None:
    for _ in range(3):
        store.append_event(RUN, EventType.PROGRESS, {})
    events = hub.subscribe(RUN)
    assert isinstance(events, AsyncGenerator)
    assert (await anext(events)).seq == 1
    assert hub.subscriber_count(RUN) == 1
    await events.aclose()  # released at once, not whenever the garbage collector gets to it
    assert hub.subscriber_count(RUN) == 0
    emit(store, hub)  # publishing to nobody is fine


async def test_batches_heartbeat_while_idle(store: Store, hub: EventHub) -> None:
    store.append_event(RUN, EventType.START, {})
    received: list[int | None] = []

    async def consume() -> None:
        async for batch in hub.batches(RUN, heartbeat=0.05):
            received.extend([e.seq for e in batch] or [None])

    task = asyncio.create_task(consume())
    await until(lambda: received.count(None) >= 2)
    emit(store, hub)
    emit(store, hub, EventType.COMPLETE)
    await asyncio.wait_for(task, 2)
    assert [seq for seq in received if seq is not None] == [1, 2, 3]
    assert received[0] == 1 and received[-2:] == [2, 3]
    assert hub.subscriber_count(RUN) == 0


async def test_events_that_arrive_together_come_as_one_batch(store: Store, hub: EventHub) -> None:
    """A viewer pays its write cost per batch, so a burst must not be split into single events."""
    store.append_event(RUN, EventType.START, {})
    batches = hub.batches(RUN)
    assert [e.seq for e in await anext(batches)] == [1]
    waiting = asyncio.create_task(anext(batches))
    await until(lambda: hub.subscriber_count(RUN) == 1)
    await asyncio.sleep(0)
    for _ in range(5):
        emit(store, hub)
    emit(store, hub, EventType.COMPLETE)
    assert [e.seq for e in await asyncio.wait_for(waiting, 2)] == [2, 3, 4, 5, 6, 7]
    with pytest.raises(StopAsyncIteration):
        await anext(batches)
    assert hub.subscriber_count(RUN) == 0


async def test_a_viewer_that_claims_to_be_past_the_end_still_ends(
    store: Store, hub: EventHub
) -> None:
    """An `after` beyond every seq (a stale or made-up Last-Event-ID) must not wait forever."""
    store.append_event(RUN, EventType.START, {})
    task = asyncio.create_task(collect(hub.subscribe(RUN, after=99), timeout=5))
    await until(lambda: hub.subscriber_count(RUN) == 1)
    emit(store, hub)
    emit(store, hub, EventType.COMPLETE)
    assert await asyncio.wait_for(task, 2) == []
    assert hub.subscriber_count(RUN) == 0
