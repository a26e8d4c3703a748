"""Delivery to a viewer on another replica: an event's commit → its receipt by an SSE client.

Two real replicas on one PostgreSQL (bench/fleet_rig.py). Each run's command prints a line every
20 ms (each a live `output` event, stored by its owner's sink in small batches); a viewer on the
OTHER replica reads the run's SSE stream.

When is an event committed? Its stored `timestamp` is not that moment: the owner stamps an event
when the run emits it, before its sink's batch is written (up to a flush interval earlier). So
the commit is observed directly: this process LISTENs on the store's `backspace_events` channel
itself, and PostgreSQL delivers a `run_id:last_seq` notification only when the append's
transaction commits. An event's commit time is the arrival here of the first notification whose
`last_seq` reaches its seq; its receipt is the moment the SSE client parsed its frame; both on
this process's monotonic clock. This includes the viewer's replica's own work (its listener, the
hub's read of the rows, the SSE write) and this process's; it misses the notification's trip to
our own listener (sub-millisecond on a Unix socket), so it errs on the low side by about that.
For comparison, stamp → receipt (wall clocks of one machine) is shown too. Target: p99 ≤ 50 ms.

    uv run python -m bench.fleet_delivery [--runs N] [--lines N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime

import httpx
import psycopg

from bench.common import print_table, summary
from bench.fleet_rig import Rig, bash, finish, fleet, submit, unique
from tests.sse import frames


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def one_run(rig: Rig, lines: int) -> tuple[list[float], list[float]]:
    prompt = unique("delivery")
    script = f"for i in $(seq 1 {lines}); do echo line-$i; sleep 0.02; done"
    rig.model.scenarios[prompt] = [bash(script), finish()]
    commits: dict[int, float] = {}  # seq -> when its commit was announced
    async with await psycopg.AsyncConnection.connect(rig.url, autocommit=True) as listener:
        await listener.execute("LISTEN backspace_events")
        run_id = await submit(rig.alive()[0], prompt)
        owner = await rig.running(run_id)
        viewer = rig.alive(owner)[0]
        received: dict[int, tuple[float, float]] = {}  # seq -> (monotonic, wall) at receipt
        stamps: dict[int, float] = {}

        async def listen() -> None:
            high = 0
            async for note in listener.notifies():
                arrived = time.monotonic()
                rid, _, seq = note.payload.rpartition(":")
                if rid == run_id and int(seq) > high:
                    for s in range(high + 1, int(seq) + 1):
                        commits[s] = arrived
                    high = int(seq)

        listening = asyncio.create_task(listen())
        async with (
            httpx.AsyncClient(timeout=120) as client,
            client.stream("GET", f"{viewer.url}/api/runs/{run_id}/events") as answer,
        ):
            connected = time.monotonic()
            async for frame in frames(answer):
                if not frame.data:
                    continue
                event = frame.json
                received[event["seq"]] = (time.monotonic(), time.time())
                stamps[event["seq"]] = _epoch(event["timestamp"])
                if event["type"] == "complete":
                    break
        await asyncio.sleep(0.2)
        listening.cancel()
    # Only events committed after the viewer was connected: the ones before, it read from the
    # store when it connected.
    live = [seq for seq in received if commits.get(seq, 0.0) > connected]
    after_commit = [received[seq][0] - commits[seq] for seq in live]
    after_stamp = [received[seq][1] - stamps[seq] for seq in live]
    return after_commit, after_stamp


async def measure(runs: int, lines: int) -> tuple[list[float], list[float]]:
    with fleet(MAX_CONCURRENT_RUNS="1") as rig:
        rig.start("A", "B")
        commit, stamp = [], []
        for _ in range(runs):
            c, s = await one_run(rig, lines)
            commit += c
            stamp += s
        return commit, stamp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--lines", type=int, default=100)
    args = parser.parse_args()
    commit, stamp = asyncio.run(measure(args.runs, args.lines))
    c, s = summary([x * 1000 for x in commit]), summary([x * 1000 for x in stamp])
    rows: list[tuple[str, ...]] = [
        (
            f"commit (NOTIFY seen here) → SSE receipt on the other replica, {c['n']:.0f} events",
            f"p50 {c['p50']:.1f} ms, p90 {c['p90']:.1f} ms, p99 {c['p99']:.1f} ms",
            "p99 ≤ 50 ms",
        ),
        (
            "the event's stamp (before its commit) → SSE receipt",
            f"p50 {s['p50']:.1f} ms, p90 {s['p90']:.1f} ms, p99 {s['p99']:.1f} ms",
            "",
        ),
    ]
    print_table("Delivery across replicas (PostgreSQL fleet)", rows, ("what", "measured", "target"))


if __name__ == "__main__":
    main()
