"""Two runners on one PostgreSQL database, as two replicas are (in one process, each with its
own store, pool, bell and hub): a steer and a cancel sent to the one that does not run the run
reach the one that does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from backspace.orchestrator.events import Event, EventType, RunStatus
from backspace.orchestrator.githosts.base import RepoRef
from backspace.orchestrator.hub import EventHub
from backspace.orchestrator.inbox import Steer
from backspace.orchestrator.redact import Redactor
from backspace.orchestrator.run import Outcome, RunContext, RunRequest
from backspace.orchestrator.runner import Runner, RunnerLimits
from backspace.orchestrator.store import RunStore, open_store


class Listening:
    """A pipeline whose agent listens for steers (its inbox open) until one arrives."""

    async def run(self, ctx: RunContext) -> Outcome:
        ctx.inbox.open = True
        try:
            while not ctx.inbox:
                await asyncio.sleep(0.01)
            (steer,) = ctx.inbox.take()
            ctx.emit(EventType.AI_MESSAGE, {"message": f"read: {steer.prompt}"})
        finally:
            ctx.inbox.open = False
        return Outcome(RunStatus.SUCCEEDED, "done")


@dataclass
class Replica:
    store: RunStore
    hub: EventHub
    runner: Runner


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    made = []
    for _ in range(2):
        store = open_store(postgres_url, "unused.db", pool_max=4)
        await store.open()
        hub = EventHub(store)
        runner = Runner(
            store,
            hub,
            Listening(),
            redactor=Redactor(),
            limits=RunnerLimits(lease_seconds=5, poll_seconds=0.5, shutdown_grace=0),
            public_url="http://x",
        )
        made.append(Replica(store, hub, runner))
    running, other = made
    other.runner.own_runs_only()  # it takes no run of the other's: the run executes on `running`
    for replica in made:
        await replica.runner.start()
    yield running, other
    for replica in made:
        await replica.runner.shutdown()
        await replica.store.aclose()


REQUEST = RunRequest("local:x", RepoRef("local", "x", "/x"), "listen")


async def events(hub: EventHub, run_id: str) -> list[Event]:
    return [event async for event in hub.subscribe(run_id)]


async def until_running(replica: Replica, run_id: str) -> None:
    async with asyncio.timeout(10):
        while run_id not in replica.runner.local_run_ids():
            await asyncio.sleep(0.01)


async def test_a_steer_sent_to_another_replica_reaches_the_agent(
    replicas: tuple[Replica, Replica],
) -> None:
    running, other = replicas
    run = await running.runner.submit(REQUEST)
    await until_running(running, run.id)
    seen = asyncio.ensure_future(events(other.hub, run.id))  # a viewer on the other replica
    steered = await other.runner.steer(run.family_id or run.id, Steer("mind the docs", "ana"))
    assert steered == run.id
    got = await asyncio.wait_for(seen, 10)
    said = [e.data for e in got if e.type == EventType.FOLLOWUP_RECEIVED]
    assert said == [
        {"prompt": "mind the docs", "requester": "ana", "source": "api", "mode": "steer"}
    ]
    assert any(e.data.get("message") == "read: mind the docs" for e in got)
    assert got[-1].data["status"] == "succeeded"
    assert [e.seq for e in got] == list(range(1, len(got) + 1))


async def test_a_steer_nobody_can_read_is_refused_so_it_can_be_queued(
    replicas: tuple[Replica, Replica],
) -> None:
    running, other = replicas
    assert await other.runner.steer("no-such-family", Steer("hello")) is None
    run = await running.runner.submit(REQUEST)
    await until_running(running, run.id)
    async with asyncio.timeout(10):  # the agent has not opened its inbox yet, or has closed it
        while True:
            execution = running.runner._runs.get(run.id)
            if execution is not None and execution.ctx.inbox.open:
                break
            await asyncio.sleep(0.01)
    execution.ctx.inbox.open = False
    assert await other.runner.steer(run.family_id or run.id, Steer("too late")) is None
    execution.ctx.inbox.open = True
    await other.runner.cancel(run.id)


async def test_a_cancel_sent_to_another_replica_stops_the_run_within_a_second(
    replicas: tuple[Replica, Replica],
) -> None:
    running, other = replicas
    run = await running.runner.submit(REQUEST)
    await until_running(running, run.id)
    seen = asyncio.ensure_future(events(other.hub, run.id))
    started = time.monotonic()
    assert await other.runner.cancel(run.id)
    got = await asyncio.wait_for(seen, 10)
    took = time.monotonic() - started
    assert got[-1].type == EventType.COMPLETE and got[-1].data["status"] == "cancelled"
    assert took < 1.0, f"the cancel took {took:.2f} s to reach the viewer on the other replica"
    assert not await other.runner.cancel(run.id)  # it is over
