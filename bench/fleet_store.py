"""The run store as a fleet sees it: three replicas appending, an idle one claiming, a viewer's
replica woken by NOTIFY.

- **append**: 3 processes (as 3 replicas), each with its own PostgresStore (its own pool),
  submit and claim 10 runs each, then append their events in batches of 10 (as an owner's sink
  flushes), all runs at once → events/s in all. The same workload on SQLite in one process.
- **claim**: an idle store woken by the `queued` notification claims the run another store
  just submitted: submit called → claim returned.
- **delivery**: a store appends (as a run's owner); another, listening, reads the batch when
  its `run_id:seq` notification arrives: append committed → rows read.

PostgreSQL is a private server in a temp directory (tests/postgres.py; fsync off, Unix socket),
unless `--url` names one.

    uv run python -m bench.fleet_store [--events N] [--quick] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from backspace.orchestrator.events import EventType, RunStatus, Stage, now_iso
from backspace.orchestrator.store import Fence, NewEvent, Run, RunStore, open_store
from bench.common import print_table

REPLICAS = 3
RUNS_EACH = 10
BATCH = 10


def new_run() -> Run:
    return Run(
        id=uuid.uuid4().hex,
        status=RunStatus.QUEUED,
        stage=Stage.QUEUED,
        repo_url="local:widgets",
        prompt="fleet bench",
        source="bench",
        created_at=now_iso(),
    )


def batch(run: int, first: int) -> list[NewEvent]:
    return [
        NewEvent(
            EventType.OUTPUT,
            {"call_id": f"toolu_{run}", "output": f"line {first + k}: " + "x" * 120},
        )
        for k in range(BATCH)
    ]


async def append_workload(store: RunStore, events: int, ready: Any = None) -> tuple[float, float]:
    """Submit and claim RUNS_EACH runs, then append `events` to each, all runs at once; the
    appends' start and end (wall clock)."""
    fences: list[Fence] = []
    for _ in range(RUNS_EACH):
        run = new_run()
        await store.submit(run, {"prompt": run.prompt}, NewEvent(EventType.START, {}))
    while len(fences) < RUNS_EACH:
        claim = await store.claim(f"bench-{uuid.uuid4().hex[:6]}", 60)
        if claim is None:
            await asyncio.sleep(0.01)  # another replica holds the rest: it claims its own
            continue
        fences.append(claim.fence)
    if ready is not None:
        ready.wait()  # every replica starts appending together

    async def one(i: int) -> None:
        for first in range(0, events, BATCH):
            await store.append(fences[i], batch(i, first))

    started = time.time()
    await asyncio.gather(*(one(i) for i in range(len(fences))))
    return started, time.time()


def replica(url: str, events: int, ready: Any, out: Any) -> None:
    async def main() -> tuple[float, float]:
        store = open_store(url, "unused.db", pool_max=RUNS_EACH)
        await store.open()
        try:
            return await append_workload(store, events, ready)
        finally:
            await store.aclose()

    out.put(asyncio.run(main()))


def fleet_append(url: str, events: int) -> float:
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(REPLICAS)
    out = context.Queue()
    processes = [
        context.Process(target=replica, args=(url, events, ready, out)) for _ in range(REPLICAS)
    ]
    for process in processes:
        process.start()
    spans: list[tuple[float, float]] = [out.get(timeout=300) for _ in processes]
    for process in processes:
        process.join()
    total = REPLICAS * RUNS_EACH * events
    return total / (max(end for _, end in spans) - min(start for start, _ in spans))


async def sqlite_append(events: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(None, Path(tmp) / "runs.db")
        await store.open()
        total = 0.0
        for _ in range(REPLICAS):  # the same 30 runs, one process
            started, ended = await append_workload(store, events)
            total += ended - started
        await store.aclose()
    return REPLICAS * RUNS_EACH * events / total


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def claim_latency(url: str, rounds: int) -> list[float]:
    submitter = open_store(url, "unused.db")
    idle = open_store(url, "unused.db")
    await submitter.open()
    await idle.open()
    claimed: asyncio.Queue[float] = asyncio.Queue()

    async def wake() -> None:
        if await idle.claim("idle", 60) is not None:
            claimed.put_nowait(time.perf_counter())

    def on_control(message: str) -> None:
        if message == "queued":
            asyncio.get_running_loop().create_task(wake())

    await idle.listen(lambda run, seq: None, on_control)
    latencies = []
    for _ in range(rounds):
        run = new_run()
        started = time.perf_counter()
        await submitter.submit(run, {"prompt": run.prompt}, NewEvent(EventType.START, {}))
        latencies.append((await asyncio.wait_for(claimed.get(), 5) - started) * 1000)
        await asyncio.sleep(0.01)
    await submitter.aclose()
    await idle.aclose()
    return latencies


async def delivery_latency(url: str, rounds: int) -> list[float]:
    owner = open_store(url, "unused.db")
    viewer = open_store(url, "unused.db")
    await owner.open()
    await viewer.open()
    run = new_run()
    await owner.submit(run, {"prompt": run.prompt}, NewEvent(EventType.START, {}))
    claim = await owner.claim("owner", 60)
    assert claim is not None
    read_at: dict[int, float] = {}
    fetched = [1]

    async def read(seq: int) -> None:
        rows = await viewer.events_after(run.id, fetched[0])
        now = time.perf_counter()
        for event in rows:
            read_at.setdefault(event.seq, now)
        if rows:
            fetched[0] = max(fetched[0], rows[-1].seq)

    def on_events(run_id: str, seq: int) -> None:
        if run_id == run.id and seq > fetched[0]:
            asyncio.get_running_loop().create_task(read(seq))

    await viewer.listen(on_events, lambda message: None)
    committed: dict[int, float] = {}
    for i in range(rounds):
        written = await owner.append(claim.fence, batch(0, i * BATCH))
        committed[written[-1].seq] = time.perf_counter()
        await asyncio.sleep(0.005)
    for _ in range(500):  # the last reads: at most 5 s
        if all(seq in read_at for seq in committed):
            break
        await asyncio.sleep(0.01)
    await owner.aclose()
    await viewer.aclose()
    return [(read_at[s] - t) * 1000 for s, t in committed.items() if s in read_at]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500, help="events per run (default 500)")
    parser.add_argument("--rounds", type=int, default=200, help="claims and deliveries timed")
    parser.add_argument("--url", help="a PostgreSQL URL (default: a private server)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    events, rounds = (20, 10) if args.quick else (args.events, args.rounds)

    server = None
    url = args.url
    if url is None:
        from tests.postgres import PostgresServer  # the tests' private server

        server = PostgresServer().start()
        url = server.database("bench")
    try:
        per_second = fleet_append(url, events)
        sqlite_per_second = asyncio.run(sqlite_append(events))
        claims = asyncio.run(claim_latency(url, rounds))
        deliveries = asyncio.run(delivery_latency(url, rounds))
    finally:
        if server is not None:
            server.stop()
    rows: list[tuple[str, ...]] = [
        (
            f"append, {REPLICAS} replicas × {RUNS_EACH} runs × {events} events, batches of {BATCH}",
            f"{per_second:,.0f} events/s",
            "≥ 5,000 events/s",
        ),
        (
            f"the same on SQLite, one process ({REPLICAS * RUNS_EACH} runs)",
            f"{sqlite_per_second:,.0f} events/s",
            "",
        ),
        (
            f"claim by an idle replica woken by NOTIFY ({len(claims)})",
            f"median {statistics.median(claims):.1f} ms, p99 {percentile(claims, 99):.1f} ms",
            "≤ 100 ms",
        ),
        (
            f"delivery to another replica, commit → rows read ({len(deliveries)} of {rounds})",
            f"median {statistics.median(deliveries):.1f} ms, "
            f"p99 {percentile(deliveries, 99):.1f} ms",
            "p99 ≤ 50 ms",
        ),
    ]
    print_table("The run store in a fleet (PostgreSQL)", rows, ("what", "measured", "target"))


if __name__ == "__main__":
    main()
