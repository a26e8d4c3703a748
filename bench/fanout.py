"""SSE fan-out: V viewers follow one run's live events over real HTTP.

The real server runs as a subprocess (local bubblewrap sandbox, the scripted model in its own
process); V bare-socket HTTP/1.1 clients in this process open GET /api/runs/{id}/events on loopback.
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
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
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


async def create_run(url: str) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        created = await client.post(
            f"{url}/api/code",
            json={"repo_url": "local:widgets", "prompt": "fanout-bench"},
            headers={"Accept": "application/json"},
        )
    assert created.status_code == 202, created.text
    run_id: str = created.json()["id"]
    return run_id


@dataclass
class Received:
    reads: list[tuple[float, int]]  # (arrival time, bytes received so far)
    data: bytearray
    writer: asyncio.StreamWriter

    def frames(self) -> list[tuple[float, bytes]]:
        """(arrival time, JSON) of every `data:` line: when the read that completed it came."""
        frames: list[tuple[float, bytes]] = []
        position, read_index = 0, 0
        while (start := self.data.find(b"data: ", position)) >= 0:
            end = self.data.index(b"\n", start)
            while self.reads[read_index][1] < end:
                read_index += 1
            frames.append((self.reads[read_index][0], bytes(self.data[start + 6 : end])))
            position = end
        return frames


async def view(url: str, run_id: str, connected: asyncio.Queue[None]) -> Received:
    """One viewer on a bare socket, reading until `complete`.

    A thousand viewers share this process's one core, so a viewer only reads and takes the
    time: the frames are taken apart, and the sockets closed, once every viewer has the end.
    Otherwise the first viewers' parsing and closing would delay the last ones' reads.
    """
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET /api/runs/{run_id}/events HTTP/1.1\r\nHost: {host}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    connected.put_nowait(None)
    received = Received([], bytearray(), writer)
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        received.data += chunk
        received.reads.append((time.time(), len(received.data)))
        if b'"type":"complete"' in received.data[-len(chunk) - 32 :]:
            break
    return received


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Watched:
    latencies: list[float]
    events: int
    connect_s: float
    server_cpu_s: float  # the server's CPU time while the live events went out


async def watch(url: str, pid: int, viewers: int, connect_timeout: float) -> Watched:
    """Create a run, connect the viewers, read every event."""
    run_id = await create_run(url)
    connected: asyncio.Queue[None] = asyncio.Queue()
    started = time.perf_counter()
    tasks = [asyncio.create_task(view(url, run_id, connected)) for _ in range(viewers)]
    async with asyncio.timeout(connect_timeout):
        for _ in range(viewers):
            await connected.get()
    ready_at = time.time()
    cpu_before = cpu_seconds(pid)
    connect_s = time.perf_counter() - started
    viewers_received = await asyncio.gather(*tasks)
    server_cpu = cpu_seconds(pid) - cpu_before
    for one in viewers_received:
        one.writer.close()
    received = [one.frames() for one in viewers_received]
    latencies = []
    live_events: set[int] = set()
    for got in received:
        seqs = [json.loads(line)["seq"] for _, line in got]
        assert seqs == list(range(1, len(seqs) + 1)), "a viewer missed or repeated an event"
        for at, line in got:
            event = json.loads(line)
            stored = stamp(event["timestamp"])
            if stored >= ready_at:
                latencies.append(at - stored)
                live_events.add(event["seq"])
    return Watched(latencies, len(live_events), connect_s, server_cpu)


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
                watched = asyncio.run(watch(server.url, server.process.pid, args.viewers, wait))
            finally:
                server.stop()
    finally:
        model.stop()
    latencies = watched.latencies
    if not latencies:
        raise RuntimeError("no live event was received: the viewers connected too late")
    result = summary(latencies)
    ms = {k: v * 1000 for k, v in result.items() if k != "n"}
    cpu_us = watched.server_cpu_s / len(latencies) * 1e6
    print_table(
        f"SSE fan-out ({args.viewers} viewers of one run, real HTTP)",
        [
            (
                str(args.viewers),
                str(watched.events),
                str(int(result["n"])),
                f"{watched.connect_s:.2f}",
                f"{ms['p50']:.1f}",
                f"{ms['p90']:.1f}",
                f"{ms['p99']:.1f}",
                f"{max(latencies) * 1000:.1f}",
                f"{cpu_us:.0f}",
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
            "server CPU us/delivery",
        ),
    )
    return {
        "viewers": args.viewers,
        "events": watched.events,
        "p50_ms": ms["p50"],
        "p99_ms": ms["p99"],
        "max_ms": max(latencies) * 1000,
        "server_cpu_us_per_delivery": cpu_us,
    }


if __name__ == "__main__":
    main(sys.argv[1:])
