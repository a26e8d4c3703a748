"""Several `backspace serve` replicas on one PostgreSQL database, end to end (issue 18).

Real processes on one private PostgreSQL (tests/postgres.py): each replica has its own data
directory (its local sandbox root its own), the local git host's repositories at one shared
path, the fake Anthropic behind all of them. One group runs local bubblewrap sandboxes (the
queue, viewers across replicas, cancel across replicas, no credential anywhere); a second group
uses the fake Daytona, whose sandboxes every replica sees under one instance label (SIGKILL of a
replica, a replica starting while others run, SIGTERM draining).

Which replica executes a run is read from the store (`runs.worker_id`, sampled while it runs:
the column is cleared when the run ends) and matched with each replica's /health `worker`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from backspace.orchestrator.store.migrations import migrations
from tests.conftest import make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, ToolCall
from tests.fakes.daytona import FakeDaytona
from tests.helpers import base_env, processes_running, stop_and_remove, wait_for_process, workdir
from tests.postgres import PostgresServer
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import Server, start_server
from tests.sse import frames

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LEASE = 2.0  # seconds: a dead replica's run is reaped soon after
PG_PASSWORD = "pg-Fleet-S3cret-7f1c2b"  # in every replica's URL; the server trusts the socket
MODEL_KEY = "sk-ant-api03-fleet-key-5a4c3e2d1b"
DAYTONA_KEY = "dtn_FLEETDAYTONAKEY0123456789"
SECRETS = (PG_PASSWORD, MODEL_KEY, DAYTONA_KEY)
INSTANCE = "fleet-shared"  # every Daytona replica's label: the hazard of issue 18


def secret_url(postgres: PostgresServer) -> str:
    """A fresh database's URL with a password in it (never to be shown anywhere)."""
    name = postgres.database("fleet").split("?")[0].rsplit("/", 1)[1]
    return postgres.url(name, password=PG_PASSWORD)


def health(server: Server) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{server.url}/health", timeout=5).json()
    return answer


class Sampler:
    """Who runs what: `runs.worker_id` of the running runs, read every 20 ms on a thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.owners: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                try:
                    rows = conn.execute(
                        "SELECT id, worker_id FROM runs WHERE status = 'running' "
                        "AND worker_id IS NOT NULL"
                    ).fetchall()
                except psycopg.errors.UndefinedTable:  # no replica has migrated yet
                    rows = []
                for run_id, worker in rows:
                    self.owners.setdefault(run_id, set()).add(worker)
                time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Fleet:
    url: str  # the database, password included
    model: FakeAnthropic
    repos: Path
    env: dict[str, str]
    root: Path
    sampler: Sampler
    replicas: list[Server] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)  # every event any viewer got
    daytona: FakeDaytona | None = None

    def start(self, *names: str) -> list[Server]:
        """Start replicas at once (threads: each waits for its /health)."""
        with ThreadPoolExecutor(len(names)) as pool:
            started = list(pool.map(lambda n: start_server(self.root / n, self.env), names))
        self.replicas.extend(started)
        return started

    def by_worker(self, worker: str) -> Server | None:
        """The replica whose process is this worker (a worker is named host:pid:random)."""
        pid = int(worker.split(":")[-2])
        return next((s for s in self.replicas if s.process.pid == pid), None)

    def alive(self, *besides: Server) -> list[Server]:
        return [s for s in self.replicas if s not in besides and s.process.poll() is None]

    def owner(self, run_id: str) -> Server:
        """The replica that executed the run (exactly one: asserted)."""
        workers = self.sampler.owners.get(run_id, set())
        assert len(workers) == 1, f"run {run_id} ran on {workers}"
        server = self.by_worker(next(iter(workers)))
        assert server is not None, workers
        return server

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    async def running(self, run_id: str, timeout: float = 30) -> Server:
        """Wait until the run executes somewhere; that replica."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.rows(
                "SELECT worker_id FROM runs WHERE id = %s AND status = 'running'", run_id
            )
            server = self.by_worker(rows[0][0]) if rows else None
            if server is not None:
                return server
            await asyncio.sleep(0.02)
        raise AssertionError(f"run {run_id} never ran")

    def stored(self, run_id: str) -> list[tuple[int, str]]:
        return [
            (int(seq), str(kind))
            for seq, kind in self.rows(
                "SELECT seq, type FROM events WHERE run_id = %s ORDER BY seq", run_id
            )
        ]


@contextmanager
def fleet_of(
    prefix: str,
    postgres: PostgresServer,
    extra: Callable[[], dict[str, str]] | None = None,
    daytona: FakeDaytona | None = None,
) -> Iterator[Fleet]:
    repos, root = workdir(f"{prefix}-repos"), workdir(prefix)
    url = secret_url(postgres)
    sampler = Sampler(url)
    try:
        with FakeAnthropic(scenarios={}) as model:
            env = {
                **base_env(repos, model),
                "ANTHROPIC_API_KEY": MODEL_KEY,
                "BACKSPACE_DATABASE_URL": url,
                "BACKSPACE_LEASE_SECONDS": str(LEASE),
                # The API's rate limit is shared by the replicas: 30 runs at once from here.
                "BACKSPACE_RUNS_PER_MINUTE": "6000",
                "BACKSPACE_RUNS_BURST": "100",
                **(extra() if extra else {}),
            }
            fleet = Fleet(url, model, repos, env, root, sampler, daytona=daytona)
            try:
                yield fleet
            finally:
                for server in fleet.replicas:
                    stop_and_remove(server, server.log_path.parent)
    finally:
        sampler.close()
        shutil.rmtree(repos, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        postgres.drop(url)


# --- talking to replicas -----------------------------------------------------------------------
async def submit(server: Server, prompt: str, repo: str) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{server.url}/api/code",
            json={"repo_url": repo, "prompt": prompt},
            headers={"Accept": "application/json"},
        )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


async def watch(
    fleet: Fleet, server: Server, run_id: str, after: int | None = None
) -> AsyncIterator[tuple[float, dict[str, Any]]]:
    """A viewer on `server`: (arrival time, event) until `complete`, SSE parsed from the bytes."""
    headers = {"Last-Event-ID": str(after)} if after is not None else {}
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("GET", f"{server.url}/api/runs/{run_id}/events", headers=headers) as answer,
    ):
        assert answer.status_code == 200, await answer.aread()
        async for frame in frames(answer):
            if not frame.data:
                continue
            event = frame.json
            fleet.seen.append(event)
            yield time.monotonic(), event
            if event["type"] == "complete":
                return


async def read_all(
    fleet: Fleet, server: Server, run_id: str, after: int | None = None
) -> list[tuple[float, dict[str, Any]]]:
    return [item async for item in watch(fleet, server, run_id, after)]


def bash(command: str) -> Reply:
    return Reply([ToolCall("bash", {"command": command})])


def unique_sleep(seconds: int) -> str:
    """A sleep whose command line is this call's own (see processes_running)."""
    return f"sleep {seconds}.{uuid.uuid4().int % 10**9:09d}"


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def assert_once(events: list[dict[str, Any]], status: str) -> None:
    """Exactly one `complete` (the last), seqs 1..n with no gap, the final status."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events].count("complete") == 1
    assert events[-1]["type"] == "complete" and events[-1]["status"] == status, events[-3:]


# --- three replicas, local bubblewrap sandboxes --------------------------------------------------
@pytest.fixture(scope="module")
def local(postgres_server: PostgresServer) -> Iterator[Fleet]:
    # A long lease: the heartbeat (a third of it) cannot stand in for the bell's cancel here.
    settings = {"MAX_CONCURRENT_RUNS": "2", "BACKSPACE_LEASE_SECONDS": "30"}
    with fleet_of("fleet", postgres_server, lambda: settings) as fleet:
        fleet.start("A", "B", "C")
        yield fleet


async def test_thirty_runs_round_robin_finish_once_each_on_one_worker(local: Fleet) -> None:
    make_repo(local.repos, "many")
    local.model.scenarios["fleet-many"] = [Reply([EDIT_SIGNUP]), finish()]
    a, b, c = local.replicas
    order = [a, b, c]
    run_ids = [await submit(order[i % 3], f"fleet-many {i}", "local:many") for i in range(30)]
    streams = await asyncio.wait_for(
        asyncio.gather(
            *(read_all(local, order[(i + 1) % 3], rid) for i, rid in enumerate(run_ids))
        ),
        timeout=150,
    )
    for stream in streams:
        assert_once([event for _, event in stream], "succeeded")
    rows = local.rows("SELECT id, status, attempt FROM runs WHERE id = ANY(%s)", run_ids)
    assert sorted((r[1], r[2]) for r in rows) == [("succeeded", 1)] * 30
    owners = [local.owner(rid) for rid in run_ids]
    assert {s.url for s in owners} == {s.url for s in local.replicas}, "every replica ran some"
    claimed_elsewhere = sum(owner is not order[i % 3] for i, owner in enumerate(owners))
    assert claimed_elsewhere > 0, "no replica claimed another's submission"


async def test_a_viewer_on_another_replica_gets_every_event_live_and_can_resume(
    local: Fleet,
) -> None:
    make_repo(local.repos, "view")
    local.model.scenarios["fleet-view"] = [
        bash("echo fleet-one; sleep 0.4"),
        bash("echo fleet-two; sleep 0.6"),
        Reply([EDIT_SIGNUP]),
        finish(),
    ]
    run_id = await submit(local.replicas[0], "fleet-view", "local:view")
    executor = await local.running(run_id)
    viewer, resumer = local.alive(executor)[:2]
    got: list[tuple[float, dict[str, Any]]] = []
    resumed: asyncio.Task[list[tuple[float, dict[str, Any]]]] | None = None
    walls: list[tuple[float, dict[str, Any]]] = []
    async for arrival, event in watch(local, viewer, run_id):
        got.append((arrival, event))
        walls.append((time.time(), event))
        if resumed is None and event["type"] == "Tool: Bash":  # mid-run: resume on the third
            resumed = asyncio.create_task(read_all(local, resumer, run_id, after=event["seq"]))
    assert resumed is not None
    tail = await asyncio.wait_for(resumed, 30)
    events = [event for _, event in got]
    assert_once(events, "succeeded")
    assert [(e["seq"], e["type"]) for e in events] == local.stored(run_id)
    afterwards = [event for _, event in await read_all(local, executor, run_id)]
    assert events == afterwards, "the viewer's events are the stored log, once each, in order"
    first_bash = next(t for t, e in got if e["type"] == "Tool: Bash")
    assert got[-1][0] - first_bash > 0.4, "events arrived live, not all at the end"
    # Woken by NOTIFY, not found by the hub's 2 s poll: each event soon after it was stamped.
    lags = sorted(wall - _epoch(e["timestamp"]) for wall, e in walls if e["seq"] > 1)
    assert lags[len(lags) // 2] < 0.5, f"median delivery lag {lags[len(lags) // 2]:.2f} s"
    cut = next(e["seq"] for e in events if e["type"] == "Tool: Bash")
    assert [e for _, e in tail] == events[cut:]
    assert local.owner(run_id) is executor and executor is not viewer


async def test_cancel_on_one_replica_stops_a_run_executing_on_another(local: Fleet) -> None:
    make_repo(local.repos, "cancel")
    marker = unique_sleep(90)
    local.model.scenarios["fleet-cancel"] = [bash(f"{marker}; echo never"), finish()]
    run_id = await submit(local.replicas[0], "fleet-cancel", "local:cancel")
    executor = await local.running(run_id)
    canceller, viewer = local.alive(executor)[:2]
    await wait_for_process(marker)
    stream = watch(local, viewer, run_id)
    first = await anext(stream)  # the viewer is connected
    async with httpx.AsyncClient(timeout=10) as client:
        asked = time.monotonic()
        answer = await client.post(f"{canceller.url}/api/runs/{run_id}/cancel")
    assert answer.status_code == 202, answer.text
    events = [first[1]]
    arrival = asked
    async for arrival, event in stream:  # noqa: B007 (the last arrival is the complete's)
        events.append(event)
    elapsed = arrival - asked
    print(f"\ncancel on another replica -> viewer's complete: {elapsed * 1000:.0f} ms")
    assert_once(events, "cancelled")
    assert elapsed < 1.5, f"the cancel took {elapsed:.2f} s to stop the run"
    assert local.owner(run_id) is executor
    deadline = time.monotonic() + 5
    while processes_running(marker) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not processes_running(marker), "the sandbox's command was killed"


async def test_no_credential_in_any_event_log_line_health_answer_or_error(
    local: Fleet, postgres_server: PostgresServer
) -> None:
    assert local.seen, "the tests above streamed events"
    texts = [json.dumps(local.seen)]
    for server in local.replicas:
        texts.append(httpx.get(f"{server.url}/health", timeout=5).text)
        texts.append(httpx.get(f"{server.url}/api/runs", timeout=5).text)
        texts.append(server.logs())
    # A replica whose database does not exist: it fails, saying why, without the password.
    wrong = postgres_server.url("no_such_database", password=PG_PASSWORD)
    with pytest.raises(RuntimeError) as failed:
        start_server(local.root / "wrong", {**local.env, "BACKSPACE_DATABASE_URL": wrong})
    message = str(failed.value)
    assert "no_such_database" in message and "does not exist" in message, message
    texts.append(message)
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


# --- two replicas migrating at once --------------------------------------------------------------
async def test_two_replicas_starting_on_an_empty_database_migrate_once(
    postgres_server: PostgresServer,
) -> None:
    with fleet_of("fleet-migrate", postgres_server) as fleet:
        assert fleet.rows("SELECT to_regclass('schema_migrations')") == [(None,)]
        fleet.start("M1", "M2")
        assert all(health(s)["store"]["ok"] for s in fleet.replicas)
        versions = fleet.rows("SELECT version, count(*) FROM schema_migrations GROUP BY version")
        assert sorted(versions) == [(m.version, 1) for m in migrations("postgres")]


# --- Daytona sandboxes shared by the replicas: SIGKILL, a replica starting, SIGTERM --------------
@pytest.fixture(scope="module")
def daytona_fleet(postgres_server: PostgresServer) -> Iterator[Fleet]:
    with FakeDaytona(api_key=DAYTONA_KEY) as daytona:

        def extra() -> dict[str, str]:
            return {
                "MAX_CONCURRENT_RUNS": "1",
                "DAYTONA_API_KEY": DAYTONA_KEY,
                "DAYTONA_API_URL": daytona.api_url,
                "BACKSPACE_INSTANCE": INSTANCE,
                "BACKSPACE_SHUTDOWN_GRACE": "15",
            }

        with fleet_of("fleet-dt", postgres_server, extra, daytona) as fleet:
            make_repo(fleet.repos, "dt")
            fleet.start("D", "E")
            yield fleet


def live_sandboxes(fleet: Fleet, run_id: str) -> list[str]:
    assert fleet.daytona is not None
    return [
        sid
        for sid in fleet.daytona.live()
        if fleet.daytona.sandboxes[sid].labels.get("backspace.run") == run_id
    ]


async def test_sigkill_of_a_replica_its_run_is_reaped_by_another_the_rest_untouched(
    daytona_fleet: Fleet,
) -> None:
    fleet = daytona_fleet
    long_marker, short_marker = unique_sleep(120), unique_sleep(9)
    fleet.model.scenarios["fleet-orphan"] = [bash(f"{long_marker}; echo never"), finish()]
    fleet.model.scenarios["fleet-bystander"] = [
        bash(short_marker),
        Reply([EDIT_SIGNUP]),
        finish(),
    ]
    d, e = fleet.replicas
    orphan = await submit(d, "fleet-orphan", "local:dt")
    bystander = await submit(e, "fleet-bystander", "local:dt")
    dead = await fleet.running(orphan)
    survivor = await fleet.running(bystander)
    assert dead is not survivor  # one slot each
    await wait_for_process(long_marker)
    await wait_for_process(short_marker)
    assert live_sandboxes(fleet, orphan) and live_sandboxes(fleet, bystander)

    # A replica starting now ends nobody's run and deletes no sandbox in use.
    (newcomer,) = fleet.start("F")
    await asyncio.sleep(0.5)
    rows = fleet.rows("SELECT status FROM runs WHERE id = ANY(%s)", [orphan, bystander])
    assert [r[0] for r in rows] == ["running", "running"]
    assert live_sandboxes(fleet, orphan) and live_sandboxes(fleet, bystander)

    stream = watch(fleet, newcomer, orphan)
    await anext(stream)
    os.killpg(dead.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    dead.process.wait()
    events = [event async for _, event in stream]
    reaped = time.monotonic() - killed
    print(f"\nSIGKILL -> complete (interrupted) on another replica: {reaped:.2f} s")
    assert reaped <= LEASE + 5, f"reaped after {reaped:.1f} s"
    assert [e["type"] for e in events][-2:] == ["error", "complete"]
    assert events[-2]["code"] == "interrupted" and events[-1]["status"] == "failed"
    stored = fleet.stored(orphan)
    assert [kind for _, kind in stored].count("error") == 1
    assert [kind for _, kind in stored].count("complete") == 1
    assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1))
    deadline = time.monotonic() + 5
    while live_sandboxes(fleet, orphan) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert live_sandboxes(fleet, orphan) == [], "the dead replica's sandbox is deleted"

    bystanders = [event for _, event in await read_all(fleet, newcomer, bystander)]
    assert_once(bystanders, "succeeded")
    assert fleet.rows("SELECT attempt FROM runs WHERE id = %s", bystander) == [(1,)]
    assert fleet.owner(bystander) is survivor


async def test_sigterm_drains_stops_claiming_and_leaves_the_queue_to_others(
    daytona_fleet: Fleet,
) -> None:
    fleet = daytona_fleet
    fleet.model.scenarios["fleet-drain-long"] = [bash("sleep 6"), Reply([EDIT_SIGNUP]), finish()]
    fleet.model.scenarios["fleet-drain-mine"] = [bash("sleep 2"), Reply([EDIT_SIGNUP]), finish()]
    fleet.model.scenarios["fleet-drain-later"] = [Reply([EDIT_SIGNUP]), finish()]
    first, second = fleet.alive()[:2]
    long_run = await submit(first, "fleet-drain-long", "local:dt")
    other = await fleet.running(long_run)
    mine = await submit(first, "fleet-drain-mine", "local:dt")
    drained = await fleet.running(mine)
    assert {other.url, drained.url} == {first.url, second.url}
    # A viewer on the draining replica: its connection stays open while the replica drains.
    held = asyncio.create_task(read_all(fleet, drained, long_run))
    mine_stream = asyncio.create_task(read_all(fleet, other, mine))
    own_viewer = asyncio.create_task(read_all(fleet, drained, mine))  # kept through the drain
    await asyncio.sleep(0.3)
    drained.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    await asyncio.sleep(0.3)
    assert health(drained)["accepting_runs"] is False, "a draining replica says so"
    async with httpx.AsyncClient(timeout=10) as client:
        refused = await client.post(
            f"{drained.url}/api/code",
            json={"repo_url": "local:dt", "prompt": "fleet-drain-later"},
            headers={"Accept": "application/json"},
        )
    assert refused.status_code == 503 and "shutting down" in refused.text, refused.text
    assert refused.headers.get("retry-after"), "a load balancer may try another replica"
    later = await submit(other, "fleet-drain-later", "local:dt")
    assert_once([e for _, e in await asyncio.wait_for(mine_stream, 30)], "succeeded")
    assert_once([e for _, e in await asyncio.wait_for(own_viewer, 30)], "succeeded")
    assert_once([e for _, e in await read_all(fleet, other, later)], "succeeded")
    assert fleet.owner(later) is other, "the run queued during the drain ran elsewhere"
    assert fleet.owner(mine) is drained
    assert await asyncio.to_thread(drained.process.wait, 30) in (0, -signal.SIGTERM)
    assert time.monotonic() - signalled < 15
    held.cancel()
    assert_once([e for _, e in await read_all(fleet, other, long_run)], "succeeded")
