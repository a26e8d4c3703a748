"""Time to first event: from sending POST /api/code to reading the run's `start` event.

The real server runs as a subprocess on a free port; the client is httpx reading the SSE bytes.
Runs are cheap (the scripted model finishes at once) and keep running in the background, so
the server is busy while it answers, as it would be.

    uv run python -m bench.first_event [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import print_table, small_repo, summary
from tests.fakes.anthropic import FakeAnthropic, Reply, ToolCall
from tests.server import start_server
from tests.sse import frames

SCENARIO = [Reply([ToolCall("finish", {"title": "Nothing to do", "body": "No change needed."})])]


async def measure(url: str, requests: int) -> list[float]:
    times = []
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(requests):
            started = time.perf_counter()
            body = {"repo_url": "local:widgets", "prompt": f"first-event-bench {i}"}
            async with client.stream("POST", f"{url}/api/code", json=body) as response:
                assert response.status_code == 200, (response.status_code, await response.aread())
                async for frame in frames(response):
                    if frame.data:
                        assert frame.json["type"] == "start"
                        times.append(time.perf_counter() - started)
                        break
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="backspace-bench-") as tmp,
        FakeAnthropic(scenarios={"first-event-bench": SCENARIO}) as fake,
    ):
        work = Path(tmp)
        small_repo(work / "repos")
        env = {
            "ANTHROPIC_API_KEY": "bench-key",
            "ANTHROPIC_BASE_URL": fake.url,
            "BACKSPACE_LOCAL_REPOS": str(work / "repos"),
            # the benchmark starts runs far faster than a client may: lift the rate limit
            "BACKSPACE_RUNS_PER_MINUTE": "1000000",
            "BACKSPACE_RUNS_BURST": "100000",
        }
        server = start_server(work / "server", env)
        try:
            asyncio.run(measure(server.url, 5))  # warm up
            result = summary(asyncio.run(measure(server.url, args.requests)))
        finally:
            server.stop()
    ms = {k: v * 1000 for k, v in result.items() if k != "n"}
    print_table(
        "time to first event (POST /api/code -> `start`)",
        [
            (
                str(int(result["n"])),
                f"{ms['p50']:.2f}",
                f"{ms['p90']:.2f}",
                f"{ms['p99']:.2f}",
                f"{ms['mean']:.2f}",
            )
        ],
        ("requests", "p50 ms", "p90 ms", "p99 ms", "mean ms"),
    )
    return {"p50_ms": ms["p50"], "p99_ms": ms["p99"]}


if __name__ == "__main__":
    main(sys.argv[1:])
