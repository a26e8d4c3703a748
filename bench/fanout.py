"""SSE fan-out: V viewers follow one run's live events over real HTTP.

The real server runs as a subprocess (local bubblewrap sandbox, the scripted model in its own
process); V httpx streaming clients in this process open GET /api/runs/{id}/events on loopback.
The run's first model turn waits until every viewer is connected; then ~13 turns, 100 ms apart,
each store a few events. Delivery latency = client receive time - the event's `timestamp` (set
when the event is stored; ISO with milliseconds, so figures are up to 1 ms pessimistic). Only
events stored after every viewer was connected count (the replayed past is not "live").

    uv run python -m bench.fanout [--viewers N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from bench.common import print_table, small_repo, summary
from bench.model_server import start_model
from tests.server import start_server


def raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def stamp(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def watch(url: str, viewers: int, connect_timeout: float) -> tuple[list[float], int, float]:
    """Create a run, connect the viewers, read every event; (latencies, events, connect time)."""
    limits = httpx.Limits(max_connections=viewers + 10, max_keepalive_connections=viewers + 10)
    timeout = httpx.Timeout(120, connect=60, pool=60)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        created = await client.post(
            f"{url}/api/code",
            json={"repo_url": "local:widgets", "prompt": "fanout-bench"},
            headers={"Accept": "application/json"},
        )
        assert created.status_code == 202, created.text
        run_id = created.json()["id"]
        connected = 0
        all_connected = asyncio.Event()
        received: list[list[tuple[float, str]]] = [[] for _ in range(viewers)]

        async def viewer(index: int) -> None:
            nonlocal connected
            got = received[index]
            async with client.stream("GET", f"{url}/api/runs/{run_id}/events") as response:
                assert response.status_code == 200
                connected += 1
                if connected == viewers:
                    all_connected.set()
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        got.append((time.time(), line))
                        if '"type":"complete"' in line:
                            return

        started = time.perf_counter()
        tasks = [asyncio.create_task(viewer(i)) for i in range(viewers)]
        await asyncio.wait_for(all_connected.wait(), connect_timeout)
        ready_at = time.time()
        connect_s = time.perf_counter() - started
        await asyncio.gather(*tasks)
    latencies = []
    live_events: set[int] = set()
    for got in received:
        for at, line in got:
            event = json.loads(line[5:])
            stored = stamp(event["timestamp"])
            if stored >= ready_at:
                latencies.append(at - stored)
                live_events.add(event["seq"])
    return latencies, len(live_events), connect_s


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--wait", type=float, default=None, help="seconds before the run starts")
    args = parser.parse_args(argv)
    wait = args.wait if args.wait is not None else max(1.0, args.viewers / 200)
    raise_open_files(args.viewers * 2 + 256)
    model = start_model({"BENCH_FANOUT_WAIT": str(wait)})
    try:
        with tempfile.TemporaryDirectory(prefix="backspace-bench-") as tmp:
            work = Path(tmp)
            small_repo(work / "repos")
            env = {
                "ANTHROPIC_API_KEY": "bench-key",
                "ANTHROPIC_BASE_URL": model.url,
                "BACKSPACE_LOCAL_REPOS": str(work / "repos"),
                "BACKSPACE_RUNS_PER_MINUTE": "1000000",  # no rate limit in a benchmark
                "BACKSPACE_RUNS_BURST": "100000",
            }
            server = start_server(work / "server", env)
            try:
                latencies, events, connect_s = asyncio.run(watch(server.url, args.viewers, wait))
            finally:
                server.stop()
    finally:
        model.stop()
    if not latencies:
        raise RuntimeError("no live event was received: the viewers connected too late")
    result = summary(latencies)
    ms = {k: v * 1000 for k, v in result.items() if k != "n"}
    print_table(
        f"SSE fan-out ({args.viewers} viewers of one run, real HTTP)",
        [
            (
                str(args.viewers),
                str(events),
                str(int(result["n"])),
                f"{connect_s:.2f}",
                f"{ms['p50']:.1f}",
                f"{ms['p90']:.1f}",
                f"{ms['p99']:.1f}",
                f"{max(latencies) * 1000:.1f}",
            )
        ],
        (
            "viewers",
            "live events",
            "deliveries",
            "connect s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
        ),
    )
    return {
        "viewers": args.viewers,
        "events": events,
        "p50_ms": ms["p50"],
        "p99_ms": ms["p99"],
        "max_ms": max(latencies) * 1000,
    }


if __name__ == "__main__":
    main(sys.argv[1:])
