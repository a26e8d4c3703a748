"""Concurrent runs: N runs at once against a slow model and a slow remote sandbox.

The scripted model takes 200 ms per turn (5 turns, in its own process: bench/model_server.py);
every sandbox call takes 50 ms plus the real command (bench/fake_sandbox.py). The runs are
submitted all at once to the real Runner and Pipeline (MAX_CONCURRENT_RUNS = N), with the local
git host on the host side. Measured:

- wall time of the batch against one run alone (target: at most 1.2x),
- orchestrator memory per active run: (peak RSS - RSS before) / peak active runs (<= 2 MB),
- event-loop lag: a probe sleeping 10 ms records how late it wakes up (p99 <= 20 ms).

    uv run python -m bench.concurrent [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from backspace.app import build_service
from backspace.config import load_settings
from backspace.orchestrator.pipeline import Pipeline
from backspace.orchestrator.run import RunRequest
from backspace.orchestrator.service import Service
from backspace.runtime import tune_garbage_collector, watch_children_with_pidfds
from bench.common import percentile, print_table, small_repo
from bench.fake_sandbox import FakeRemoteSandboxProvider
from bench.model_server import start_model

PROBE = 0.010
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


@dataclass
class Probe:
    """Samples event-loop lag, RSS and active runs every 10 ms until stopped."""

    services: Service
    lags: list[float] = field(default_factory=list)
    peak_rss: int = 0
    peak_active: int = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(PROBE)
            self.lags.append(max(0.0, loop.time() - before - PROBE))
            self.peak_rss = max(self.peak_rss, rss_bytes())
            self.peak_active = max(self.peak_active, self.services.runner.active_count())


def cpu_seconds() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


async def one_batch(services: Service, count: int, tag: str) -> tuple[float, list[float]]:
    """Submit `count` runs at once; wait for all; return wall time and each run's duration."""
    ref = services.parse_repo("local:widgets")

    async def follow(run_id: str, started: float) -> float:
        async for event in services.hub.subscribe(run_id):
            if event.type == "complete":
                assert event.data["status"] == "succeeded", event.data
        return time.perf_counter() - started

    started = time.perf_counter()
    runs = [
        await services.runner.submit(
            RunRequest(repo_url="local:widgets", repo=ref, prompt=f"concurrent-bench {tag} {i}")
        )
        for i in range(count)
    ]
    durations = await asyncio.gather(*(follow(run.id, started) for run in runs))
    return time.perf_counter() - started, list(durations)


async def measure(work: Path, model_url: str, count: int) -> dict[str, float]:
    watch_children_with_pidfds()  # as the server does at start-up
    settings = load_settings(
        ANTHROPIC_API_KEY="bench-key",
        ANTHROPIC_BASE_URL=model_url,
        BACKSPACE_LOCAL_REPOS=str(work / "repos"),
        BACKSPACE_DB=str(work / "bench.db"),
        MAX_CONCURRENT_RUNS=count,
    )
    services = build_service(settings)
    await services.runner.start()
    tune_garbage_collector()
    provider = FakeRemoteSandboxProvider(work / "sandboxes")
    pipeline = services.runner.pipeline
    assert isinstance(pipeline, Pipeline)
    pipeline.sandboxes = provider
    services.runner.janitor = provider
    services.sandboxes = provider
    try:
        singles = [(await one_batch(services, 1, f"single-{i}"))[0] for i in range(3)]
        single = percentile(singles, 50)
        probe = Probe(services)
        rss_before = rss_bytes()
        cpu_before = cpu_seconds()
        task = asyncio.create_task(probe.run())
        wall, durations = await one_batch(services, count, "batch")
        task.cancel()
        cpu_after = cpu_seconds()
    finally:
        await services.aclose()
        provider.remove()
    per_run = (probe.peak_rss - rss_before) / max(1, probe.peak_active)
    return {
        "runs": count,
        "single_s": single,
        "wall_s": wall,
        "ratio": wall / single,
        "run_p50_s": percentile(durations, 50),
        "run_p99_s": percentile(durations, 99),
        "peak_active": probe.peak_active,
        "rss_before_mb": rss_before / 2**20,
        "rss_peak_mb": probe.peak_rss / 2**20,
        "mb_per_run": per_run / 2**20,
        "lag_p50_ms": percentile(probe.lags, 50) * 1000,
        "lag_p99_ms": percentile(probe.lags, 99) * 1000,
        "lag_max_ms": max(probe.lags, default=0.0) * 1000,
        "cpu_self_s": cpu_after[0] - cpu_before[0],
        "cpu_children_s": cpu_after[1] - cpu_before[1],
        "sandbox_calls": provider.calls,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    model = start_model()
    try:
        with tempfile.TemporaryDirectory(prefix="backspace-bench-") as tmp:
            work = Path(tmp)
            small_repo(work / "repos")
            result = asyncio.run(measure(work, model.url, args.runs))
    finally:
        model.stop()
    r = result
    print_table(
        f"concurrent runs ({args.runs} at once, 5 turns x 200 ms, sandbox calls 50 ms)",
        [
            ("one run alone", f"{r['single_s']:.2f} s"),
            (f"{args.runs} runs at once (wall)", f"{r['wall_s']:.2f} s"),
            ("wall / one run", f"{r['ratio']:.2f}x"),
            ("run duration p50 / p99", f"{r['run_p50_s']:.2f} s / {r['run_p99_s']:.2f} s"),
            ("peak active runs", f"{r['peak_active']:.0f}"),
            ("RSS before -> peak", f"{r['rss_before_mb']:.1f} -> {r['rss_peak_mb']:.1f} MB"),
            ("memory per active run", f"{r['mb_per_run']:.2f} MB"),
            (
                "event-loop lag p50 / p99 / max",
                f"{r['lag_p50_ms']:.1f} / {r['lag_p99_ms']:.1f} / {r['lag_max_ms']:.1f} ms",
            ),
            (
                "CPU: orchestrator / child processes",
                f"{r['cpu_self_s']:.2f} s / {r['cpu_children_s']:.2f} s",
            ),
            ("sandbox calls (all runs)", f"{r['sandbox_calls']:.0f}"),
        ],
        ("", "measured"),
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
