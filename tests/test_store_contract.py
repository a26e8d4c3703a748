"""The run store's contract (`base.RunStore`), one suite run against both backends.

SQLite on a temporary file; PostgreSQL on the private server of tests/postgres.py (one database
for the module, emptied before each test). Where several replicas matter, each "replica" is its
own store instance (PostgreSQL: its own connection pool), as separate processes would be.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backspace.orchestrator.events import EventType, RunStatus, Stage
from backspace.orchestrator.store import (
    CancelOutcome,
    Fence,
    LeaseLost,
    NewEvent,
    Run,
    RunEnd,
    RunError,
    RunStore,
    SqliteStore,
    StoreError,
    open_store,
)
from backspace.orchestrator.store.migrations import migrations
from backspace.orchestrator.store.postgres import PostgresStore
from tests.postgres import PostgresServer

StoreFactory = Callable[[], Awaitable[RunStore]]
TABLES = (
    "runs, events, deliveries, channel_repos, pull_requests, pull_request_comments, rate_buckets, "
    "steers, duties"
)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def stores(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Makes store instances on ONE database (the first empties it)."""
    made: list[RunStore] = []
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    if url is not None:
        with psycopg.connect(url, autocommit=True) as conn:
            exists = conn.execute("SELECT to_regclass('runs') IS NOT NULL").fetchone()
            if exists and exists[0]:
                conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")

    async def make() -> RunStore:
        store = open_store(url, tmp_path / "runs.db", pool_max=4)
        await store.open()
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


def new_run(
    run_id: str | None = None, *, family: str | None = None, created: datetime | None = None
) -> Run:
    run_id = run_id or f"r-{uuid.uuid4().hex[:10]}"
    stamp = (created or datetime.now(UTC)).isoformat(timespec="milliseconds")
    return Run(
        id=run_id,
        status=RunStatus.QUEUED,
        stage=Stage.QUEUED,
        repo_url="https://github.com/acme/widgets",
        prompt="fix the bug",
        family_id=family or run_id,
        created_at=stamp.replace("+00:00", "Z"),
    )


def start_event() -> NewEvent:
    return NewEvent(EventType.START, {"message": "queued"})


async def submit(store: RunStore, run: Run | None = None, **kwargs: Any) -> Run:
    run = run or new_run(**kwargs)
    await store.submit(run, {"prompt": run.prompt, "repo": run.repo_url}, start_event())
    return run


async def claimed(store: RunStore, worker: str = "w1", lease: float = 30.0) -> Fence:
    claim = await store.claim(worker, lease)
    assert claim is not None
    return claim.fence


# --- runs and their queries ------------------------------------------------------------------
async def test_every_run_query(stores: StoreFactory) -> None:
    store = await stores()
    base = datetime(2026, 1, 1, tzinfo=UTC)
    first = await submit(store, new_run("run-a", created=base))
    second = await submit(
        store, new_run("run-b", family="run-a", created=base + timedelta(seconds=1))
    )
    third = await submit(store, new_run("run-c", created=base + timedelta(seconds=2)))

    got = await store.get_run("run-a")
    assert got == first and got.created_at == "2026-01-01T00:00:00.000Z"
    assert await store.get_run("nope") is None
    assert [r.id for r in await store.list_runs()] == ["run-c", "run-b", "run-a"]
    assert [r.id for r in await store.list_runs(limit=2)] == ["run-c", "run-b"]
    assert [r.id for r in await store.list_runs(before=second.created_at)] == ["run-a"]
    assert [r.id for r in await store.family_runs("run-a")] == ["run-a", "run-b"]
    assert await store.counts() == {"queued": 3, "running": 0}
    assert [await store.queue_position(r.id) for r in (first, second, third)] == [1, 2, 3]

    await store.set_meta("run-b", slack_channel="C1", thread="1.2")
    await store.set_meta("run-b", thread=None, status_ts="3.4")  # a merge: null removes a key
    assert (await store.get_run("run-b")).meta == {"slack_channel": "C1", "status_ts": "3.4"}  # type: ignore[union-attr]
    assert [r.id for r in await store.runs_with_meta("slack_channel", "C1")] == ["run-b"]
    assert await store.runs_with_meta("slack_channel", "C2") == []

    fence = await claimed(store)
    assert fence.run_id == "run-a" and fence.attempt == 1
    assert await store.running_in_family("run-a") == "run-a"
    assert await store.running_in_family("run-c") is None
    assert await store.counts() == {"queued": 2, "running": 1}
    assert await store.queue_position("run-a") is None
    assert await store.queue_position("run-c") == 2
    pr = "https://github.com/acme/widgets/pull/7"
    usage = {"cost_usd": 0.25, "input_tokens": 10, "output_tokens": 5}
    await store.append(
        fence,
        [
            NewEvent(EventType.PROGRESS, {"stage": "agent", "message": "thinking"}),
            NewEvent(EventType.USAGE, usage),
            NewEvent(EventType.PR_CREATED, {"branch": "bs/x", "pr_url": pr, "pr_number": 7}),
        ],
    )
    run = await store.get_run("run-a")
    assert run is not None and run.stage == Stage.AGENT and run.cost_usd == 0.25
    assert (run.branch, run.pr_url, run.pr_number, run.input_tokens) == ("bs/x", pr, 7, 10)
    assert (await store.run_for_pull_request(pr)).id == "run-a"  # type: ignore[union-attr]
    assert await store.run_for_pull_request(pr + "0") is None
    end = RunEnd(status=RunStatus.SUCCEEDED, duration_ms=1234, pr_url=pr, summary="Fixed it")
    done = await store.finish(fence, end, [NewEvent(EventType.COMPLETE, {"status": "succeeded"})])
    assert [e.seq for e in done] == [5]
    run = await store.get_run("run-a")
    assert run is not None and run.status == RunStatus.SUCCEEDED and run.stage == Stage.COMPLETE
    assert (run.duration_ms, run.summary, run.finished_at is not None) == (1234, "Fixed it", True)
    assert run.finished_at is not None and run.finished_at.endswith("Z")
    assert len(run.finished_at) == 24
    assert (await store.claim("w1", 30)).fence.run_id == "run-b"  # type: ignore[union-attr]


# --- the event log ---------------------------------------------------------------------------
async def test_seq_is_gapless_under_eight_concurrent_writers_and_a_tailing_reader(
    stores: StoreFactory,
) -> None:
    """8 replicas append at once to one shared run (each holding its fence: the owner's sink
    is one writer, but the row lock must order ANY number) and each to its own run, while the
    un-fenced writers (announce_positions on queued runs) bump the same counters. No seq is
    missing or repeated, each writer's events keep its order, and a reader tailing the shared
    run never sees a gap."""
    writers = [await stores() for _ in range(8)]
    first = writers[0]
    shared = await submit(first)
    fence = await claimed(first, "owner")
    own: list[Fence] = []
    for i, store in enumerate(writers):
        await submit(store)
        own.append(await claimed(store, f"w{i}"))
    for _ in range(3):
        await submit(first)  # queued: announce_positions writes to them
    batches = 25

    async def write(i: int, store: RunStore) -> None:
        rng = random.Random(i)
        for b in range(batches):
            size = rng.randint(1, 4)
            events = [NewEvent(EventType.OUTPUT, {"w": i, "b": b, "k": k}) for k in range(size)]
            written = await store.append(fence, events)
            assert [e.seq for e in written] == list(range(written[0].seq, written[0].seq + size))
            await store.append(own[i], events[:1])
            if b % 10 == 0:
                await store.announce_positions()

    seen: list[int] = []
    stop = asyncio.Event()

    async def tail() -> None:
        reader = writers[-1]
        while True:
            batch = await reader.events_after(shared.id, seen[-1] if seen else 0)
            for event in batch:
                assert event.seq == (seen[-1] if seen else 0) + 1, "a gap or a repeat"
                seen.append(event.seq)
            if stop.is_set() and not batch:
                return
            await asyncio.sleep(0)

    reader_task = asyncio.create_task(tail())
    await asyncio.gather(*(write(i, s) for i, s in enumerate(writers)))
    stop.set()
    await reader_task

    events = await first.events_after(shared.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert seen == [e.seq for e in events]
    assert await first.last_seq(shared.id) == len(events)
    for i in range(8):  # each writer's own order survives
        mine = [(e.data["b"], e.data["k"]) for e in events if e.data.get("w") == i]
        assert mine == sorted(mine) and len({b for b, _ in mine}) == batches
    for i, f in enumerate(own):
        log = await first.events_after(f.run_id)
        assert [e.seq for e in log] == list(range(1, len(log) + 1))
        assert sum(e.type == EventType.OUTPUT for e in log) == batches, i


async def test_replay_from_any_seq(stores: StoreFactory) -> None:
    store = await stores()
    run = await submit(store)
    fence = await claimed(store)
    for b in range(5):
        await store.append(fence, [NewEvent(EventType.OUTPUT, {"n": b * 3 + k}) for k in range(3)])
    everything = await store.events_after(run.id)
    assert len(everything) == 16 and everything[0].type == EventType.START
    for after in range(0, 18):
        assert await store.events_after(run.id, after) == everything[after:]
        assert await store.events_after(run.id, after, limit=2) == everything[after : after + 2]
    assert all(e.timestamp.endswith("Z") and len(e.timestamp) == 24 for e in everything)
    assert await store.events_after("unknown") == []
    assert await store.last_seq("unknown") == 0


# --- the queue -------------------------------------------------------------------------------
async def test_eight_concurrent_claimers_take_distinct_runs_and_keep_the_family_rule(
    stores: StoreFactory,
) -> None:
    replicas = [await stores() for _ in range(8)]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    singles = [
        await submit(replicas[0], new_run(created=base + timedelta(seconds=i))) for i in range(24)
    ]
    families = {}
    for f in range(4):  # four families of three runs: one each may run, its oldest
        head = f"fam-{f}"
        families[head] = [
            (
                await submit(
                    replicas[0],
                    new_run(f"{head}-{k}", family=head, created=base + timedelta(seconds=30 + k)),
                )
            ).id
            for k in range(3)
        ]

    async def drain(i: int, store: RunStore) -> list[str]:
        taken = []
        while (claim := await store.claim(f"w{i}", 30)) is not None:
            taken.append(claim.fence.run_id)
        return taken

    results = await asyncio.gather(*(drain(i, s) for i, s in enumerate(replicas)))
    taken = [run_id for batch in results for run_id in batch]
    assert len(taken) == len(set(taken)), "a run was claimed twice"
    assert set(taken) == {r.id for r in singles} | {runs[0] for runs in families.values()}
    assert await replicas[0].counts() == {"queued": 8, "running": 28}


@pytest.mark.parametrize("backend", ["postgres"])  # one SQLite connection serialises claims
async def test_two_replicas_claiming_two_runs_of_one_family_cannot_both_win(
    stores: StoreFactory, backend: str
) -> None:
    """The race: replica A picks run S of a family (the only one it sees) and is paused before
    its claim commits; meanwhile an OLDER run Q of the family is submitted (a submitting
    replica's clock behind, or an insert that committed late), and replica B's snapshot shows Q
    queued and S still queued and newer: Q looks free. Without a second look under a lock held
    per family, both commit and the family runs two at once on one branch."""
    a, b, submitter = await stores(), await stores(), await stores()
    assert isinstance(a, PostgresStore)
    now = datetime.now(UTC)
    family = "fam-race"
    newer = await submit(submitter, new_run("S", family=family, created=now))
    # Hold the family's lock, as a third claimer of the family would for a moment: A will wait
    # on it with S taken, which holds the race's window open.
    url = a._url
    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))", (f"backspace.family:{family}",)
        )
        claim_a = asyncio.create_task(a.claim("A", 30))
        await asyncio.sleep(0.3)
        older = await submit(
            submitter, new_run("Q", family=family, created=now - timedelta(seconds=5))
        )
        claim_b = asyncio.create_task(b.claim("B", 30))
        await asyncio.sleep(0.3)
        holder.execute(
            "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (f"backspace.family:{family}",)
        )
        got = [c.fence.run_id for c in await asyncio.gather(claim_a, claim_b) if c]
    assert got == [older.id], got  # one winner, the family's oldest
    assert await submitter.running_in_family(family) == older.id
    assert (await submitter.get_run(newer.id)).status == RunStatus.QUEUED  # type: ignore[union-attr]


async def test_heartbeat_renews_and_reports_lost_runs_and_cancels(stores: StoreFactory) -> None:
    store = await stores()
    runs = [await submit(store) for _ in range(3)]
    fences = [await claimed(store, "w1", lease=0.2) for _ in runs]
    ids = [f.run_id for f in fences]
    leases = await store.heartbeat("w1", ids, 30)
    assert sorted(lease.run_id for lease in leases) == sorted(r.id for r in runs)
    assert not any(lease.cancel_requested for lease in leases)
    await store.request_cancel(ids[1])
    await store.finish(fences[2], RunEnd(status=RunStatus.FAILED, duration_ms=1), [])
    leases = await store.heartbeat("w1", ids, 30)
    assert {lease.run_id: lease.cancel_requested for lease in leases} == {
        ids[0]: False,
        ids[1]: True,
    }
    assert await store.heartbeat("w2", [ids[0]], 30) == []  # not its run
    assert await store.heartbeat("w1", [], 30) == []
    await asyncio.sleep(0.3)  # the leases were renewed for 30 s: nothing to reap
    assert await store.reap("w2") == []


async def test_a_reaped_runs_old_owner_is_fenced_out(stores: StoreFactory) -> None:
    owner, other = await stores(), await stores()
    run = await submit(owner)
    fence = await claimed(owner, "dead", lease=0.05)
    await owner.append(fence, [NewEvent(EventType.OUTPUT, {"text": "before"})])
    assert await other.reap("alive") == []  # not expired yet
    await asyncio.sleep(0.2)
    reaped = await other.reap("alive")
    assert [(e.run_id, e.type) for e in reaped] == [
        (run.id, EventType.ERROR),
        (run.id, EventType.COMPLETE),
    ]
    assert reaped[0].data["code"] == "interrupted" and reaped[0].data["retryable"] is True
    before = await other.events_after(run.id)
    with pytest.raises(LeaseLost):
        await owner.append(fence, [NewEvent(EventType.OUTPUT, {"text": "after"})])
    with pytest.raises(LeaseLost):
        await owner.finish(fence, RunEnd(status=RunStatus.SUCCEEDED, duration_ms=5), [])
    assert await owner.heartbeat("dead", [run.id], 30) == []
    assert await owner.hand_back(fence) is False
    assert await other.events_after(run.id) == before  # it wrote nothing
    ended = await other.get_run(run.id)
    assert ended is not None and ended.status == RunStatus.FAILED
    assert ended.error == RunError(code="interrupted", message=reaped[0].data["message"])
    assert await other.reap("alive") == []  # once


async def test_reap_ends_only_expired_leases_once_even_when_two_replicas_reap(
    stores: StoreFactory,
) -> None:
    a, b = await stores(), await stores()
    expired = [await submit(a) for _ in range(4)]
    for _ in expired:
        await claimed(a, "gone", lease=0.05)
    healthy = await submit(a)
    await claimed(b, "alive", lease=30)
    queued = await submit(a)
    await asyncio.sleep(0.2)
    written = [e for batch in await asyncio.gather(a.reap("x"), b.reap("y")) for e in batch]
    by_run: dict[str, list[str]] = {}
    for event in written:
        by_run.setdefault(event.run_id, []).append(event.type)
    assert by_run == {r.id: [EventType.ERROR, EventType.COMPLETE] for r in expired}
    for run in expired:  # exactly one error and one complete in the log
        types = [e.type for e in await a.events_after(run.id)]
        assert types == [EventType.START, EventType.ERROR, EventType.COMPLETE]
    assert (await a.get_run(healthy.id)).status == RunStatus.RUNNING  # type: ignore[union-attr]
    assert (await a.get_run(queued.id)).status == RunStatus.QUEUED  # type: ignore[union-attr]
    assert await a.live_run_ids() == {healthy.id, queued.id}
    # A lone process at start: every run not its own is ended, expired or not.
    reaped = await b.reap("me", every_other_worker=True)
    assert {e.run_id for e in reaped} == {healthy.id}


async def test_hand_back_returns_a_claim_to_the_queue(stores: StoreFactory) -> None:
    store = await stores()
    controls: list[str] = []
    await store.listen(lambda run, seq: None, controls.append)
    run = await submit(store)
    fence = await claimed(store, "draining")
    assert await store.hand_back(fence) is True
    assert (await store.get_run(run.id)).status == RunStatus.QUEUED  # type: ignore[union-attr]
    again = await claimed(store, "other")
    assert again.run_id == run.id and again.attempt == 2
    assert await store.hand_back(fence) is False  # the old claim is gone
    with pytest.raises(LeaseLost):
        await store.append(fence, [NewEvent(EventType.OUTPUT, {})])
    for _ in range(50):
        if controls.count("queued") >= 2:
            break
        await asyncio.sleep(0.02)
    assert controls.count("queued") >= 2  # the submit and the hand-back rang


async def test_cancel_a_queued_run_ends_it_and_a_running_one_reaches_its_owner(
    stores: StoreFactory, backend: str
) -> None:
    owner, api = await stores(), await stores()
    controls: list[str] = []
    # PostgreSQL: the owner is another replica, woken by NOTIFY. SQLite: one process.
    listener = owner if backend == "postgres" else api
    await listener.listen(lambda run, seq: None, controls.append)
    running = await submit(api)
    fence = await claimed(owner, "owner")
    queued = await submit(api)

    cancel = await api.request_cancel(queued.id)
    assert cancel.outcome == CancelOutcome.CANCELLED
    assert [e.type for e in cancel.events] == [EventType.COMPLETE]
    assert cancel.events[0].data["status"] == "cancelled"
    assert [e.type for e in await api.events_after(queued.id)] == [
        EventType.START,
        EventType.COMPLETE,
    ]
    assert (await api.get_run(queued.id)).status == RunStatus.CANCELLED  # type: ignore[union-attr]
    assert await owner.claim("owner", 30) is None  # never claimed

    cancel = await api.request_cancel(running.id)
    assert cancel.outcome == CancelOutcome.SIGNALLED and cancel.worker == "owner"
    for _ in range(100):
        if f"cancel:{running.id}" in controls:
            break
        await asyncio.sleep(0.01)
    assert f"cancel:{running.id}" in controls
    assert [
        lease.cancel_requested for lease in await owner.heartbeat("owner", [fence.run_id], 30)
    ] == [True]
    assert (await api.request_cancel(queued.id)).outcome == CancelOutcome.NOT_LIVE
    assert (await api.request_cancel("unknown")).outcome == CancelOutcome.NOT_LIVE


async def test_a_steer_reaches_the_runs_owner_once_or_is_withdrawn(
    stores: StoreFactory, backend: str
) -> None:
    owner, api = await stores(), await stores()
    controls: list[str] = []
    listener = owner if backend == "postgres" else api
    await listener.listen(lambda run, seq: None, controls.append)
    running = await submit(api)
    await claimed(owner, "owner")

    first = await api.send_steer(running.id, {"prompt": "also the docs", "source": "slack"})
    for _ in range(100):
        if f"steer:{running.id}" in controls:
            break
        await asyncio.sleep(0.01)
    assert f"steer:{running.id}" in controls
    assert await api.steer_state(first) == "pending"
    assert await owner.take_steers(running.id) == [
        (first, {"prompt": "also the docs", "source": "slack"})
    ]
    assert await owner.take_steers(running.id) == []  # taken once
    assert await api.steer_state(first, withdraw=True) == "taken"  # too late to withdraw
    await owner.settle_steer(first, delivered=True)
    assert await api.steer_state(first) == "delivered"

    late = await api.send_steer(running.id, {"prompt": "nobody takes this"})
    assert await api.steer_state(late, withdraw=True) == "withdrawn"
    assert await owner.take_steers(running.id) == []  # a withdrawn steer is never delivered
    refused = await api.send_steer(running.id, {"prompt": "the agent has finished"})
    ((taken, _),) = await owner.take_steers(running.id)
    await owner.settle_steer(taken, delivered=False)
    assert await api.steer_state(refused) == "refused"


async def test_queue_positions_are_announced_once_across_two_replicas(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    base = datetime.now(UTC)
    runs = [await submit(a, created=base + timedelta(seconds=i)) for i in range(4)]
    first = await asyncio.gather(a.announce_positions(), b.announce_positions())
    written = [e for batch in first for e in batch]
    assert sorted((e.run_id, e.data["position"]) for e in written) == sorted(
        (r.id, i) for i, r in enumerate(runs, start=1)
    )
    assert await a.announce_positions() == [] and await b.announce_positions() == []
    await claimed(b)  # the queue moves: three runs move up one place
    moved = await b.announce_positions()
    assert sorted((e.run_id, e.data["position"]) for e in moved) == sorted(
        (r.id, i) for i, r in enumerate(runs[1:], start=1)
    )
    assert await a.announce_positions() == []
    assert [e.seq for e in await a.events_after(runs[3].id)] == [1, 2, 3]


# --- deliveries, channels, rate limits, pull requests ----------------------------------------
async def test_deliveries_and_channel_repos_are_shared(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    assert await a.claim_delivery("github", "d-1") is True
    assert await b.claim_delivery("github", "d-1") is False
    assert await b.claim_delivery("slack", "d-1") is True
    assert await a.channel_repo("T1", "C1") is None
    await a.set_channel_repo("T1", "C1", "acme/widgets", "U1")
    await b.set_channel_repo("T1", "C1", "acme/gadgets", "U2")
    assert await a.channel_repo("T1", "C1") == "acme/gadgets"


async def test_token_buckets_are_shared_between_replicas(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    results = await asyncio.gather(
        *(s.take_tokens(["user:1", "global"], 0.001, 3) for s in (a, b) * 5)
    )
    assert sum(wait == 0 for wait in results) == 3  # the burst, across both replicas
    assert all(wait > 100 for wait in results if wait)
    assert await a.take_tokens(["user:2"], 0.001, 3) == 0  # a fresh key, a full bucket
    assert await b.take_tokens(["user:2", "global"], 0.001, 3) > 0  # global is empty
    assert await a.take_tokens(["user:3"], 0, 1) == 0
    assert await b.take_tokens(["user:3"], 0, 1) == float("inf")


async def test_a_fast_bucket_never_refills_a_slow_one(stores: StoreFactory) -> None:
    """Two limiters share the table (Slack's pacing refills in a second, the API's in minutes):
    the pacing's clean-up of full buckets must not judge the API's by its own rate and forget
    an empty one (which would hand the client a fresh burst)."""
    store = await stores()
    assert await store.take_tokens(["api:slow"], 0.001, 2) == 0
    assert await store.take_tokens(["api:slow"], 0.001, 2) == 0
    assert await store.take_tokens(["api:slow"], 0.001, 2) > 0
    assert await store.take_tokens(["slack:C1"], 100.0, 1) == 0
    await asyncio.sleep(0.05)
    assert await store.take_tokens(["slack:C1"], 100.0, 1) == 0
    assert await store.take_tokens(["api:slow"], 0.001, 2) > 100, "still empty"


# --- a front end's duty to report a run (Slack), held like a lease -----------------------------
async def test_a_duty_is_held_by_one_replica_and_adopted_once_its_lease_expires(
    stores: StoreFactory,
) -> None:
    a, b = await stores(), await stores()
    run = await submit(a)
    duty = await a.take_duty("slack", run.id, "A", 30)
    assert duty is not None and (duty.holder, duty.cursor) == ("A", 0)
    assert await b.take_duty("slack", run.id, "B", 30) is None, "held by A"
    assert await b.adopt_duties("slack", "B", 30) == [], "A's lease is live"
    assert await a.keep_duty(duty, 5, 30)
    assert await a.keep_duty(duty, 3, 30), "renewed; the cursor never goes back"
    assert await a.keep_duty(duty, 7, 0)  # released: its lease ends now (a replica stopping)
    await asyncio.sleep(0.01)
    found = await asyncio.gather(b.adopt_duties("slack", "B", 30), a.adopt_duties("slack", "C", 30))
    (adopted,) = [d for got in found for d in got]
    assert adopted.run_id == run.id and adopted.cursor == 7 and adopted.attempt == duty.attempt + 1
    assert not await a.keep_duty(duty, 9, 30), "the old holder's fence is stale"
    assert not await a.end_duty(duty), "so it cannot post the final message"
    assert await b.end_duty(adopted)
    assert not await b.end_duty(adopted), "the final message is claimed once"
    assert not await b.keep_duty(adopted, 10, 30)
    assert await b.adopt_duties("slack", "B", 0) == []
    assert await a.take_duty("slack", run.id, "A", 30) is None, "an ended duty stays ended"
    assert await a.take_duty("github", run.id, "A", 30) is not None, "kinds are separate"


async def test_only_expired_duties_are_adopted(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    runs = [await submit(a) for _ in range(3)]
    duties = [await a.take_duty("slack", r.id, "A", 30 if i else 0) for i, r in enumerate(runs)]
    assert all(duties)
    await asyncio.sleep(0.01)
    (adopted,) = await b.adopt_duties("slack", "B", 30)
    assert adopted.run_id == runs[0].id and adopted.holder == "B"
    taken = await b.take_duty("slack", runs[0].id, "C", 30)
    assert taken is None, "B holds it now"


async def test_pull_request_records(stores: StoreFactory) -> None:
    store = await stores()
    files = [{"path": "app.py", "status": "modified"}]
    fields = dict(
        run_id="r1", repo="acme/widgets", title="Fix", body="b", branch="bs/x", base="main",
        base_sha="a" * 40, head_sha="b" * 40, additions=1, deletions=0, diff="+x\n",
    )  # fmt: skip
    pr_id = await store.create_pull_request(**fields, files=files)
    second = await store.create_pull_request(**fields, files=[])
    assert second == pr_id + 1
    record = await store.get_pull_request(pr_id)
    assert record is not None and record.files == files and record.state == "open"
    assert record.created_at.endswith("Z") and record.title == "Fix"
    await store.update_pull_request(pr_id, state="merged", files=[], head_sha="c" * 40)
    record = await store.get_pull_request(pr_id)
    assert record is not None and (record.state, record.files, record.head_sha) == (
        "merged",
        [],
        "c" * 40,
    )
    with pytest.raises(ValueError, match="unknown pull request fields"):
        await store.update_pull_request(pr_id, run_id="x")
    assert await store.get_pull_request(999) is None
    c1 = await store.add_pull_request_comment(pr_id, "looks good")
    await store.add_pull_request_comment(pr_id, "merged")
    comments = await store.pull_request_comments(pr_id)
    assert (comments[0]["id"], comments[0]["body"]) == (c1, "looks good")
    assert [c["body"] for c in comments] == ["looks good", "merged"]


# --- PostgreSQL only: the bell, migrations, credentials --------------------------------------
async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite is one process: it rings within it
async def test_an_append_on_one_replica_wakes_another_and_survives_a_lost_listener(
    stores: StoreFactory, backend: str
) -> None:
    writer, viewer = await stores(), await stores()
    woken: list[tuple[str, int]] = []
    reconnects: list[int] = []
    await viewer.listen(
        lambda run, seq: woken.append((run, seq)), lambda m: None, lambda: reconnects.append(1)
    )
    run = await submit(writer)
    fence = await claimed(writer)
    await writer.append(fence, [NewEvent(EventType.OUTPUT, {"n": n}) for n in range(3)])
    await until(lambda: (run.id, 4) in woken)
    assert (run.id, 1) in woken  # the submit's start rang too
    assert all(seq in (1, 4) for r, seq in woken if r == run.id)  # once per batch

    assert isinstance(viewer, PostgresStore) and viewer._listen_conn is not None
    pid = viewer._listen_conn.info.backend_pid
    with psycopg.connect(viewer._url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    await until(lambda: reconnects == [1])
    await writer.append(fence, [NewEvent(EventType.OUTPUT, {"n": 3})])
    await until(lambda: (run.id, 5) in woken)


async def test_migrations_race_once_and_a_failing_one_leaves_nothing(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.database("mig")
    try:
        racers = [PostgresStore(url, pool_max=2) for _ in range(3)]
        await asyncio.gather(*(s._pool.open(wait=True) for s in racers))
        applied = await asyncio.gather(*(s.migrate() for s in racers))
        every = [m.version for m in migrations("postgres")]
        assert sorted(applied) == [[], [], every]
        with psycopg.connect(url) as conn:
            done = conn.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [version for (version,) in done.fetchall()] == every
        for store in racers:
            await store.aclose()

        broken = tmp_path / "migrations"
        broken.mkdir()
        (broken / "0001_ok.sql").write_text("CREATE TABLE widgets (id integer);\n")
        (broken / "0002_half.sql").write_text("CREATE TABLE gadgets (id integer);\nSELECT 1/0;\n")
        fresh = postgres_server.database("mig")
        store = PostgresStore(fresh)
        with pytest.raises(StoreError, match="division by zero"):
            await store.open(broken)
        await store.aclose()
        with psycopg.connect(fresh) as conn:
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchall()
        assert tables == []  # not even schema_migrations, nor 0001's table
        postgres_server.drop(fresh)
    finally:
        postgres_server.drop(url)


async def test_a_password_in_the_url_is_never_shown(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    password = "hunter2-Sup3rSecret"
    caplog.set_level(logging.DEBUG)
    url = postgres_server.url(
        postgres_server.database("pw").split("?")[0].rsplit("/", 1)[1], password
    )
    store = open_store(url, tmp_path / "unused.db")
    await store.open()
    assert isinstance(store, PostgresStore)
    assert password not in store.describe() and "pw_" in store.describe()
    await store.aclose()
    gone = f"postgresql://postgres:{password}@/nowhere?host={tmp_path}&connect_timeout=1"
    store = open_store(gone, tmp_path / "unused.db")
    with pytest.raises(StoreError) as caught:
        await store.open()
    assert password not in str(caught.value) and "nowhere" in str(caught.value)
    assert password not in caplog.text
    await store.aclose()
    with pytest.raises(StoreError, match="PostgreSQL URL"):
        open_store("mysql://u:p@h/db", tmp_path / "x.db")
    assert isinstance(open_store(None, tmp_path / "x.db"), SqliteStore)


async def test_a_claim_among_given_runs_takes_only_those(stores: StoreFactory) -> None:
    store = await stores()
    base = datetime.now(UTC)
    older = await submit(store, created=base)
    mine = await submit(store, created=base + timedelta(seconds=1))
    assert await store.claim("one-shot", 30, among=[]) is None
    assert await store.claim("one-shot", 30, among=["unknown"]) is None
    assert (await claimed_among(store, [mine.id])).run_id == mine.id
    assert (await claimed_among(store, None)).run_id == older.id


async def claimed_among(store: RunStore, among: list[str] | None) -> Fence:
    claim = await store.claim("w", 30, among=among)
    assert claim is not None
    return claim.fence
