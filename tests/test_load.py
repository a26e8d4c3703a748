"""Load through the real server: 50 runs at once, 500 SSE viewers of one run, /health throughout.

Real uvicorn, real bubblewrap, real git, the scripted fake model over loopback; every SSE stream
is read as bytes by httpx. The figures (health latency, the server's RSS, viewers, events) are
printed so `pytest -s` shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import ssl
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, git, make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, Step, Text, ToolCall
from tests.helpers import assert_clean, base_env
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import Server
from tests.sse import Frame, collect, events_of, frames

pytestmark = [pytest.mark.e2e, pytest.mark.serial, pytest.mark.timeout(150)]

RUNS = 50
VIEWERS = 500
HEALTH_EVERY = 0.15
HEALTH_BOUND = 3.0  # seconds; generous: sandbox starts still stall the loop (up to 1.4 s seen)
RSS_GROWTH_BOUND_MB = 200
NO_RATE_LIMIT = {"BACKSPACE_RUNS_PER_MINUTE": "1000000", "BACKSPACE_RUNS_BURST": "100000"}


def rss_kb(pid: int) -> int:
    """The process's resident set (VmRSS), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process itself (not its children) has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Monitor:
    """From its own thread: GET /health every HEALTH_EVERY s (status, latency, runs) and RSS."""

    def __init__(self, server: Server) -> None:
        self.url = f"{server.url}/health"
        self.pid = server.process.pid
        self.latencies: list[float] = []
        self.at: list[float] = []
        self.own_lag = 0.0
        self.failures: list[str] = []
        self.rss: list[int] = []
        self.max_active = 0
        self.max_queued = 0
        self.cpu_start = cpu_seconds(self.pid)
        self.cpu_used = 0.0
        self.wall = 0.0
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="health-monitor", daemon=True)

    def _poll(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    answer = client.get(self.url)
                    if answer.status_code != 200:
                        self.failures.append(f"{answer.status_code}: {answer.text[:200]}")
                    else:
                        runs = answer.json()["runs"]
                        self.max_active = max(self.max_active, runs["active"])
                        self.max_queued = max(self.max_queued, runs["queued"])
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.monotonic() - started)
                self.at.append(started - self._started)
                self.rss.append(rss_kb(self.pid))
                before = time.monotonic()
                self._stop.wait(HEALTH_EVERY)
                # How late this thread itself wakes: the machine's own scheduling delay.
                self.own_lag = max(self.own_lag, time.monotonic() - before - HEALTH_EVERY)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=40)
        self.cpu_used = cpu_seconds(self.pid) - self.cpu_start
        self.wall = time.monotonic() - self._started

    def check(self, label: str) -> None:
        worst = max(self.latencies)
        worst_at = self.at[self.latencies.index(worst)]
        ordered = sorted(self.latencies)
        p50 = ordered[len(ordered) // 2]
        print(
            f"\n[{label}] /health: {len(self.latencies)} probes, all 200: {not self.failures}, "
            f"p50 {p50 * 1000:.0f} ms, max {worst * 1000:.0f} ms (at {worst_at:.1f} s; this "
            f"thread's own worst wake-up delay {self.own_lag * 1000:.0f} ms); "
            f"runs active at most {self.max_active}, queued at most {self.max_queued}; "
            f"the server process used {self.cpu_used:.1f} s CPU in {self.wall:.1f} s"
        )
        assert self.failures == []
        assert len(self.latencies) >= 5, "the monitor polled throughout"
        assert worst < HEALTH_BOUND, f"/health took {worst:.2f} s"


def pairs(got: list[Frame]) -> list[tuple[str | None, str]]:
    """An event stream as the bytes that matter: each event frame's id and data."""
    return [(f.id, f.data) for f in got if f.data]


def load_env(repos: Path, fake: FakeAnthropic, **extra: str) -> dict[str, str]:
    return base_env(repos, fake, **NO_RATE_LIMIT, **extra)


POOL = 25
"""Connections per client. httpcore's pool walks all of its connections (and for each idle one
all of them again) whenever a request starts or a response closes: one pool for 500 streams
cost this process about 18 s of CPU in the 500-viewer test (cProfile), over three times what the
server used. Several small pools open the very same connections to the server."""


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One context for every client (each would load the CA bundle: 0.15 s; never used here)."""
    return ssl.create_default_context()


def client_for(connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(120, connect=60, pool=60), limits=limits, verify=tls_context()
    )


class Clients:
    """Clients for `connections` connections at once, POOL per client, handed out in turn: as
    long as no more than `connections` requests are open, none waits for a connection."""

    def __init__(self, connections: int) -> None:
        self._all = [client_for(min(POOL, connections - at)) for at in range(0, connections, POOL)]
        self._turn = itertools.count()

    def next(self) -> httpx.AsyncClient:
        return self._all[next(self._turn) % len(self._all)]

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self._all:
            await client.aclose()


async def test_fifty_runs_at_once_each_stream_is_whole_and_its_own(
    repos: Path, fake_model: FakeAnthropic, server_factory: ServerFactory
) -> None:
    origin = make_repo(repos, "widgets")
    base_sha = git(origin, "rev-parse", "HEAD").strip()
    fake_model.scenarios["load-run"] = [Reply([Text("Adding the check."), EDIT_SIGNUP]), finish()]
    # All 50 at once: no queue, so 50 sandboxes, agents and pushes really overlap.
    server = server_factory(load_env(repos, fake_model, MAX_CONCURRENT_RUNS=str(RUNS)))
    started = time.monotonic()
    with Monitor(server) as monitor:
        async with Clients(RUNS * 2 + 10) as clients:

            async def one(index: int) -> tuple[httpx.Response, list[Frame]]:
                body = {"repo_url": "local:widgets", "prompt": f"load-run {index}: validate"}
                return await collect(clients.next(), "POST", f"{server.url}/api/code", json=body)

            results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(RUNS))), 100)
            elapsed = time.monotonic() - started
            run_ids = [events_of(got)[0]["run_id"] for _, got in results]
            replays = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        collect(clients.next(), "GET", f"{server.url}/api/runs/{r}/events")
                        for r in run_ids
                    )
                ),
                30,
            )
            client = clients.next()
            runs = [(await client.get(f"{server.url}/api/runs/{r}")).json() for r in run_ids]
            prs = [
                (await client.get(run["pr_url"].replace("/prs/", "/api/prs/"))).json()
                for run in runs
            ]
    print(f"\n[50 runs] {RUNS} runs at once (MAX_CONCURRENT_RUNS={RUNS}) took {elapsed:.1f} s")
    monitor.check("50 runs")

    assert len(set(run_ids)) == RUNS
    pr_urls = set()
    for (response, got), (_, replayed), run, record in zip(
        results, replays, runs, prs, strict=True
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = events_of(got)
        run_id = events[0]["run_id"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), run_id
        assert [f.id for f in got if f.data] == [str(e["seq"]) for e in events]
        assert {e["run_id"] for e in events} == {run_id}, "a stream carries only its own run"
        assert events[0]["type"] == "start"
        assert [e["type"] for e in events].count("complete") == 1
        assert not [e for e in events if e["type"] == "error"], events
        complete = events[-1]
        assert complete["type"] == "complete" and complete["status"] == "succeeded", complete
        stages = [e["stage"] for e in events if e["type"] == "progress"]
        assert list(dict.fromkeys(stages)) == [
            "sandbox", "cloning", "agent", "validating", "pushing", "pr"
        ]  # fmt: skip
        (pr,) = [e for e in events if e["type"] == "pr_created"]
        assert pr["files_changed"] == 1 and complete["pr_url"] == pr["pr_url"]
        pr_urls.add(pr["pr_url"])
        # The live stream is exactly what the store replays afterwards, byte for byte.
        assert pairs(replayed) == pairs(got)
        assert run["status"] == "succeeded" and run["pr_url"] == pr["pr_url"]
        assert run["branch"] == pr["branch"]
        assert record["run_id"] == run_id and record["branch"] == pr["branch"]
        assert git(origin, "rev-parse", f"{pr['branch']}^").strip() == base_sha
    assert len(pr_urls) == RUNS
    branches = git(origin, "for-each-ref", "--format=%(refname)", "refs/heads/backspace/").split()
    assert len(branches) == RUNS
    assert git(origin, "rev-parse", "main").strip() == base_sha
    assert_clean(server)


def gated_scenario(gate: threading.Event, steps: list[Step]) -> Any:
    """A responder that holds the first model turn until `gate` is set, then follows `steps`."""

    def respond(body: dict[str, Any]) -> Step:
        turn = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        if turn == 0 and not gate.wait(60):
            raise AssertionError("the gate was never opened")
        return steps[turn] if turn < len(steps) else finish()

    return respond


def chatty_steps(turns: int) -> list[Step]:
    """`turns` commands that print a line every 0.1 s for ~0.8 s, then an edit and finish."""
    steps: list[Step] = []
    for turn in range(turns):
        command = f"for i in 1 2 3 4 5 6 7 8; do echo turn-{turn}-line-$i; sleep 0.1; done"
        steps.append(Reply([Text(f"Step {turn}."), ToolCall("bash", {"command": command})]))
    steps.append(Reply([EDIT_SIGNUP]))
    steps.append(finish())
    return steps


FDS_LEFT = 5
"""Descriptors the server may hold beyond its count before the viewers came (its own work)."""


async def dropped(pid: int, fds_before: int, timeout: float = 10) -> None:
    """Wait until the server holds no more than FDS_LEFT descriptors above `fds_before` (it
    closes a finished stream's socket soon after the client does); the test asserts it after."""
    deadline = time.monotonic() + timeout
    while open_fds(pid) > fds_before + FDS_LEFT and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


class Viewer:
    """One SSE client of GET /api/runs/{id}/events, recording its frames as they come."""

    def __init__(self, name: str, after: int | None = None, joined_at: int = 0) -> None:
        self.name = name
        self.after = after
        self.joined_at = joined_at  # how many events the run had stored when this one attached
        self.got: list[Frame] = []
        self.connected = asyncio.Event()
        self.status: int | None = None

    async def follow(self, client: httpx.AsyncClient, url: str) -> None:
        headers = {"Last-Event-ID": str(self.after)} if self.after is not None else {}
        async with client.stream("GET", url, headers=headers) as response:
            self.status = response.status_code
            self.connected.set()
            async for frame in frames(response):
                self.got.append(frame)

    @property
    def seqs(self) -> list[int]:
        return [int(f.id) for f in self.got if f.data and f.id is not None]


async def test_five_hundred_viewers_of_one_run_each_get_every_event_once_in_order(
    repos: Path, server_factory: ServerFactory
) -> None:
    make_repo(repos, "widgets")
    gate = threading.Event()
    turns = 6
    with contextlib.ExitStack() as stack:
        stack.callback(gate.set)  # a failed test never leaves the fake model waiting
        fake = stack.enter_context(
            FakeAnthropic(responder=gated_scenario(gate, chatty_steps(turns)))
        )
        server = server_factory(load_env(repos, fake))
        pid = server.process.pid
        rss_before, fds_before = rss_kb(pid), open_fds(pid)
        viewers: list[Viewer] = []
        tasks: list[asyncio.Task[None]] = []
        started = time.monotonic()
        with Monitor(server) as monitor:
            async with Clients(VIEWERS + 50) as clients:
                created = await clients.next().post(
                    f"{server.url}/api/code",
                    json={"repo_url": "local:widgets", "prompt": "fan-out: print and edit"},
                    headers={"Accept": "application/json"},
                )
                assert created.status_code == 202, created.text
                run_id = created.json()["id"]
                url = f"{server.url}/api/runs/{run_id}/events"

                def attach(
                    group: str, count: int, joined_at: int, after: int | None = None
                ) -> list[Viewer]:
                    new = [Viewer(f"{group}-{i}", after, joined_at) for i in range(count)]
                    viewers.extend(new)
                    tasks.extend(asyncio.create_task(v.follow(clients.next(), url)) for v in new)
                    return new

                async def connected(group: list[Viewer]) -> None:
                    await asyncio.wait_for(asyncio.gather(*(v.connected.wait() for v in group)), 60)

                async def seen(count: int) -> int:
                    """Wait until the first viewer has `count` events; the highest seq it has."""
                    async with asyncio.timeout(60):
                        while len(viewers[0].seqs) < count:
                            await asyncio.sleep(0.02)
                    return viewers[0].seqs[-1]

                # 1. Before the agent starts: the model's first turn waits for the gate.
                early = attach("early", 200, 0)
                await connected(early)
                await seen(1)
                await asyncio.sleep(0.5)  # the run is held: nothing more is stored meanwhile
                held_at = len(viewers[0].seqs)
                gate.set()
                # 2. In the middle, in waves, while the commands print (replay, then live).
                middle: list[Viewer] = []
                for wave, at in enumerate((10, 16, 22, 28, 34)):
                    last = await seen(at)
                    middle += attach(f"middle{wave}", 50, last)
                    # 3. A few resume with Last-Event-ID, as a reconnecting EventSource does.
                    middle += attach(f"resume{wave}", 6, last, after=last - 3)
                await connected(middle)
                mid_rss = rss_kb(pid)
                await asyncio.wait_for(asyncio.gather(*tasks), 90)
                # 4. After the end: pure replay.
                late = attach("late", VIEWERS - len(viewers), -1)
                await asyncio.wait_for(asyncio.gather(*tasks), 60)
                stored_response, stored_frames = await asyncio.wait_for(
                    collect(clients.next(), "GET", url), 15
                )
            elapsed = time.monotonic() - started
            await dropped(pid, fds_before)  # the server has closed the viewers' connections
            rss_after, fds_after = rss_kb(pid), open_fds(pid)

            # Two more rounds of 500 viewers, all at once, replaying the finished run. The first
            # of them may raise the high-water mark (500 replays at once buffer more than the
            # spread-out first round did); the second, of the very same shape, must not: a leak
            # would grow with every round.
            rounds: list[tuple[int, int]] = []
            again: list[Viewer] = []
            for round_ in range(2):
                async with Clients(VIEWERS + 10) as again_clients:
                    batch = [Viewer(f"again-{round_}-{i}") for i in range(VIEWERS)]
                    await asyncio.wait_for(
                        asyncio.gather(*(v.follow(again_clients.next(), url) for v in batch)), 60
                    )
                again += batch
                await dropped(pid, fds_before)
                rounds.append((rss_kb(pid), open_fds(pid)))
            (rss_again, fds_again), (rss_third, fds_third) = rounds
        rss_peak = max([*monitor.rss, mid_rss])

    stored = pairs(stored_frames)
    n = len(stored)
    events = [f.json for f in stored_frames if f.data]
    print(
        f"\n[500 viewers] {len(viewers)} viewers ({len(early)} before the agent started, "
        f"{len(middle)} in the middle of which {sum(v.after is not None for v in middle)} with "
        f"Last-Event-ID, {len(late)} after the end); {n} events per full stream; "
        f"{sum(len(v.seqs) for v in viewers)} deliveries in {elapsed:.1f} s\n"
        f"[500 viewers] server RSS: before {rss_before / 1024:.1f} MB, peak "
        f"{rss_peak / 1024:.1f} MB, after {rss_after / 1024:.1f} MB, after a second round of "
        f"{VIEWERS} viewers {rss_again / 1024:.1f} MB, after a third {rss_third / 1024:.1f} MB; "
        f"open fds {fds_before} -> {fds_after} -> {fds_again} -> {fds_third}"
    )
    monitor.check("500 viewers")

    assert stored_response.status_code == 200
    assert [int(i or 0) for i, _ in stored] == list(range(1, n + 1))
    assert events[-1]["type"] == "complete" and events[-1]["status"] == "succeeded"
    assert sum(e["type"] == "output" for e in events) >= turns * 2, "output came while it ran"
    # The early viewers were attached while the run was held before its first model turn.
    assert 0 < held_at < 8 and events[held_at - 1]["type"] == "progress", events[:held_at]
    for viewer in [*viewers, *again]:
        first = viewer.after or 0
        assert viewer.status == 200, viewer.name
        assert pairs(viewer.got) == stored[first:], (viewer.name, viewer.seqs)
    # The middle viewers joined at different points, while events were still being stored.
    assert len({v.joined_at for v in middle}) == 5 and max(v.joined_at for v in middle) < n - 5
    assert all(v.after is not None and v.after > held_at for v in middle if "resume" in v.name)

    assert rss_peak - rss_before < RSS_GROWTH_BOUND_MB * 1024
    assert rss_after - rss_before < RSS_GROWTH_BOUND_MB * 1024
    assert rss_again - rss_before < RSS_GROWTH_BOUND_MB * 1024
    assert rss_third - rss_again < 30 * 1024, "another round of viewers leaves no growth"
    # Every viewer's connection is gone: the server holds no socket for them.
    assert max(fds_after, fds_again, fds_third) <= fds_before + FDS_LEFT
    assert_clean(server)
