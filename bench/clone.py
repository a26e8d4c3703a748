"""Big repositories: the `cloning` stage, a repeated base, memory, and importing a small change.

Through the real pipeline in-process (the local git host, the local sandbox, the scripted model
in its own process making a 3-file change), against a local bare repository: a generated one
(FILES files, COMMITS commits of history) by default, or `--repo PATH` (a bare mirror such as
SQLAlchemy's). Measured per run: submission to the first `agent` progress event (first run on
a base, then a second run on the same base), the `validating` stage (commit in the sandbox,
bundle out, import on the host), and this process's peak RSS above idle during the run
(sampled every 5 ms in a thread). `git clone --depth 1 file://REPO` is timed for comparison.

    uv run python -m bench.clone [--repo PATH] [--runs 3] [--files 3000] [--commits 500]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from backspace.app import build_service
from backspace.config import load_settings
from backspace.orchestrator.run import RunRequest
from backspace.orchestrator.service import Service
from backspace.runtime import tune_garbage_collector, watch_children_with_pidfds
from bench.common import GIT_ENV, print_table, summary
from bench.model_server import start_model


def generated_repo(path: Path, files: int, commits: int) -> Path:
    """A bare repository: `files` files of about 2 KB, then `commits` commits each rewriting
    ten of them (so the history outweighs the tree), made with one `git fast-import`."""
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    stream = bytearray(b"commit refs/heads/main\ncommitter B <b@example.com> 1700000000 +0000\n")
    stream += b"data 4\nbase\n"
    for i in range(files):
        body = (f"line {i} of the base " * 100).encode()[:2000]
        stream += b"M 100644 inline src/d%03d/f%05d.txt\ndata %d\n%s\n" % (
            i % 100,
            i,
            len(body),
            body,
        )
    for c in range(commits):
        stream += b"commit refs/heads/main\ncommitter B <b@example.com> %d +0000\n" % (
            1700000001 + c
        )
        stream += b"data 7\nchange\n"
        for k in range(10):
            i = (c * 10 + k) % files
            body = (f"commit {c} rewrote {i} " * 100).encode()[:2000]
            stream += b"M 100644 inline src/d%03d/f%05d.txt\ndata %d\n%s\n" % (
                i % 100,
                i,
                len(body),
                body,
            )
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=path, env=GIT_ENV, input=bytes(stream), check=True
    )
    return path


def shallow_clone_seconds(repo: Path, work: Path) -> float:
    """The best of three `git clone --depth 1 file://REPO`."""
    best = float("inf")
    for i in range(3):
        target = work / f"shallow-{i}"
        started = time.perf_counter()
        subprocess.run(
            ["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(target)],
            env=GIT_ENV, check=True,
        )  # fmt: skip
        best = min(best, time.perf_counter() - started)
        shutil.rmtree(target)
    return best


class PeakRss:
    """This process's resident memory, sampled in a thread: the peak since `reset`."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def reset(self) -> int:
        self.peak = idle = self.now()
        return idle

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def local_host_repos(work: Path, repo: Path) -> Path:
    """The directory the local git host serves: the repository as a bare clone sharing its
    objects (no copy)."""
    repos = work / "repos"
    repos.mkdir()
    subprocess.run(
        ["git", "clone", "-q", "--bare", "--shared", str(repo), str(repos / "big.git")],
        env=GIT_ENV, check=True,
    )  # fmt: skip
    return repos


async def warm_service(work: Path, repos: Path, model_url: str) -> Service:
    """The service in-process on the local host's `repos`, one run at a time, warmed as
    `backspace serve` is at start-up: the model SDK is imported before any run, so no run (the
    first included) pays for that import in time or memory."""
    settings = load_settings(
        ANTHROPIC_API_KEY="bench-key",
        ANTHROPIC_BASE_URL=model_url,
        BACKSPACE_LOCAL_REPOS=str(repos),
        BACKSPACE_DB=str(work / "bench.db"),
        MAX_CONCURRENT_RUNS=1,
    )
    services = build_service(settings)
    await services.runner.start()
    services.sandboxes.check()
    await asyncio.to_thread(importlib.import_module, "anthropic")
    watch_children_with_pidfds()
    tune_garbage_collector()
    return services


async def pipeline_runs(
    work: Path, repos: Path, model_url: str, runs: int
) -> list[dict[str, float]]:
    services = await warm_service(work, repos, model_url)
    ref = services.parse_repo("local:big.git")
    rss = PeakRss()
    results = []
    try:
        for i in range(runs):
            idle = rss.reset()
            started = time.perf_counter()
            run = await services.runner.submit(
                RunRequest(repo_url="local:big.git", repo=ref, prompt=f"clone-bench {i}")
            )
            marks: dict[str, float] = {}
            async for event in services.hub.subscribe(run.id):
                stage = event.data.get("stage") if event.type == "progress" else None
                if isinstance(stage, str) and stage not in marks:
                    marks[stage] = time.perf_counter() - started
                if event.type == "complete":
                    assert event.data["status"] == "succeeded", event.data
            results.append(
                {
                    "agent_s": marks["agent"],
                    "cloning_s": marks["agent"] - marks["cloning"],
                    "validating_s": marks["pushing"] - marks["validating"],
                    "rss_mb": (rss.peak - idle) / (1024 * 1024),
                }
            )
    finally:
        rss.stop()
        await services.aclose()
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, help="a bare repository (default: a generated one)")
    parser.add_argument("--runs", type=int, default=3, help="runs on the same base (at least 2)")
    parser.add_argument("--files", type=int, default=3000, help="files of the generated repository")
    parser.add_argument("--commits", type=int, default=500, help="its commits of history")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="backspace-bench-clone-"))
    work.chmod(0o711)
    model = start_model()
    try:
        repo = args.repo or generated_repo(work / "generated.git", args.files, args.commits)
        shallow = shallow_clone_seconds(repo.resolve(), work)
        repos = local_host_repos(work, repo.resolve())
        results = asyncio.run(pipeline_runs(work, repos, model.url, max(2, args.runs)))
    finally:
        model.stop()
        shutil.rmtree(work, ignore_errors=True)
    first, again = results[0], results[1:]
    figures = {
        "shallow_s": shallow,
        "first_agent_s": first["agent_s"],
        "first_ratio": first["agent_s"] / shallow,
        "again_agent_s": summary([r["agent_s"] for r in again])["p50"],
        "validating_s": summary([r["validating_s"] for r in results])["p50"],
        "rss_mb": max(r["rss_mb"] for r in results),
    }
    rows: list[tuple[str, ...]] = [
        ("git clone --depth 1 file://REPO (best of 3)", f"{shallow:.2f} s"),
        *(
            (
                f"run {i + 1}: submit to `agent` (cloning stage); peak RSS above idle",
                f"{r['agent_s']:.2f} s ({r['cloning_s']:.2f} s); {r['rss_mb']:.1f} MB",
            )
            for i, r in enumerate(results)
        ),
        ("first run / shallow clone", f"{figures['first_ratio']:.2f}x"),
        ("validating stage, 3-file change (p50)", f"{figures['validating_s']:.2f} s"),
        ("peak RSS above idle, any run (max)", f"{figures['rss_mb']:.1f} MB"),
    ]
    print_table(
        f"big repositories: {repo.name if args.repo else 'generated'}", rows, ("what", "measured")
    )
    return figures


if __name__ == "__main__":
    main()
