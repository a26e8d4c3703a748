"""An orphaned run reaped after its replica dies: SIGKILL of the owner → `complete` elsewhere.

Two real replicas on one PostgreSQL (bench/fleet_rig.py), `BACKSPACE_LEASE_SECONDS` 5 and the
default poll. Each round: a run whose command sleeps long is claimed by one replica; a viewer on
the other replica follows it; the owner is SIGKILLed; the time until the viewer receives the
run's `complete` (status failed, error `interrupted`) is measured. The killed replica is started
again (a new process) for the next round. Target: ≤ lease + 5 s.

    uv run python -m bench.fleet_reap [--rounds N] [--lease S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import time

import httpx

from bench.common import print_table
from bench.fleet_rig import Rig, bash, finish, fleet, submit, unique
from tests.sse import frames


async def one_round(rig: Rig, lease: float) -> float:
    prompt = unique("reap")
    rig.model.scenarios[prompt] = [bash("sleep 300"), finish()]
    run_id = await submit(rig.alive()[0], prompt)
    owner = await rig.running(run_id)
    viewer = rig.alive(owner)[0]
    await asyncio.sleep(1.0)  # the command runs; a heartbeat or two renewed the lease
    killed = 0.0
    async with (
        httpx.AsyncClient(timeout=lease + 60) as client,
        client.stream("GET", f"{viewer.url}/api/runs/{run_id}/events") as answer,
    ):
        async for frame in frames(answer):
            if not frame.data:
                continue
            if not killed:  # the viewer is connected: kill the owner now
                os.killpg(owner.process.pid, signal.SIGKILL)
                killed = time.monotonic()
                owner.process.wait()
            event = frame.json
            if event["type"] == "complete":
                elapsed = time.monotonic() - killed
                if event["status"] != "failed":
                    raise RuntimeError(f"the orphan ended {event['status']}, not failed")
                break
    rig.replicas.remove(owner)
    rig.start(f"again-{unique('r')}")
    return elapsed


async def measure(rounds: int, lease: float) -> list[float]:
    with fleet(BACKSPACE_LEASE_SECONDS=str(lease), MAX_CONCURRENT_RUNS="2") as rig:
        rig.start("A", "B")
        return [await one_round(rig, lease) for _ in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lease", type=float, default=5.0)
    args = parser.parse_args()
    times = asyncio.run(measure(args.rounds, args.lease))
    rows: list[tuple[str, ...]] = [
        (
            f"SIGKILL of the owner → complete (interrupted) on another replica, lease "
            f"{args.lease:g} s, {len(times)} rounds",
            f"min {min(times):.2f} s, median {statistics.median(times):.2f} s, "
            f"max {max(times):.2f} s",
            f"≤ {args.lease + 5:g} s",
        )
    ]
    print_table("An orphaned run reaped (PostgreSQL fleet)", rows, ("what", "measured", "target"))


if __name__ == "__main__":
    main()
