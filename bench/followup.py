"""Follow-ups: how soon a follow-up's sandbox is ready on the branch's head, against a first run.

Through the real pipeline in-process (the local git host, the local sandbox, the scripted model
in its own process making a 3-file change) on a generated repository. Each round opens a new
family with a first run on the base, then continues it with a follow-up; both are timed from
submission to their first `agent` progress event (the sandbox is ready: cloned, set up, indexed).
The first round's first run finds no payload of the base (cold); later first runs find it cached
(warm), as on a busy server; every follow-up starts from a new branch head, so its payload is
always made afresh.

    uv run python -m bench.followup [--rounds 5] [--files 3000] [--commits 200]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from backspace.orchestrator.run import RunRequest
from backspace.orchestrator.service import Service
from bench.clone import generated_repo, local_host_repos, warm_service
from bench.common import print_table, summary
from bench.model_server import start_model

TRACE = __import__("os").environ.get("BENCH_TRACE") == "1"


async def _to_agent(services: Service, run_id: str, started: float) -> float:
    """Seconds from `started` to the run's first `agent` progress; waits for it to succeed."""
    ready = None
    async for event in services.hub.subscribe(run_id):
        if TRACE and event.type in ("progress", "Tool: Bash"):
            print(
                f"{time.perf_counter() - started:6.3f} {event.data.get('message') or event.data.get('command')}"
            )
        if ready is None and event.type == "progress" and event.data.get("stage") == "agent":
            ready = time.perf_counter() - started
        if event.type == "complete":
            assert event.data["status"] == "succeeded", event.data
    assert ready is not None
    return ready


async def rounds(work: Path, repos: Path, model_url: str, count: int) -> list[tuple[float, float]]:
    services = await warm_service(work, repos, model_url)
    ref = services.parse_repo("local:big.git")
    results = []
    try:
        for i in range(count):
            started = time.perf_counter()
            first = await services.runner.submit(
                RunRequest(repo_url="local:big.git", repo=ref, prompt=f"followup-bench first {i}")
            )
            first_s = await _to_agent(services, first.id, started)
            started = time.perf_counter()
            followup = await services.follow_up(first.id, f"followup-bench again {i}")
            followup_s = await _to_agent(services, followup.run.id, started)
            results.append((first_s, followup_s))
    finally:
        await services.aclose()
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="families (at least 2)")
    parser.add_argument("--files", type=int, default=3000, help="files of the generated repository")
    parser.add_argument("--commits", type=int, default=200, help="its commits of history")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="backspace-bench-followup-"))
    work.chmod(0o711)
    model = start_model()
    try:
        repo = generated_repo(work / "generated.git", args.files, args.commits)
        repos = local_host_repos(work, repo)
        results = asyncio.run(rounds(work, repos, model.url, max(2, args.rounds)))
    finally:
        model.stop()
        shutil.rmtree(work, ignore_errors=True)
    cold = results[0][0]
    warm = summary([first for first, _ in results[1:]])["p50"]
    followups = summary([followup for _, followup in results])
    figures = {
        "first_cold_s": cold,
        "first_warm_s": warm,
        "followup_p50_s": followups["p50"],
        "ratio_warm": followups["p50"] / warm,
        "ratio_cold": followups["p50"] / cold,
    }
    rows: list[tuple[str, ...]] = [
        *(
            (f"round {i + 1}: first run; follow-up", f"{a:.2f} s; {b:.2f} s")
            for i, (a, b) in enumerate(results)
        ),
        ("first run, base not cached (round 1)", f"{cold:.2f} s"),
        ("first run, base cached (p50 of later rounds)", f"{warm:.2f} s"),
        ("follow-up on the branch head (p50)", f"{followups['p50']:.2f} s"),
        ("follow-up / first run, cached base", f"{figures['ratio_warm']:.2f}x"),
        ("follow-up / first run, base not cached", f"{figures['ratio_cold']:.2f}x"),
    ]
    print_table("follow-ups: submission to a ready sandbox", rows, ("what", "measured"))
    return figures


if __name__ == "__main__":
    main()
