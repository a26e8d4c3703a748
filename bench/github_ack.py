"""GitHub ack: N signed webhook deliveries (a writer's `@backspace ...` comment on an issue)
sent to the real server, one every `--interval` seconds (0: all at once); time from each delivery leaving the fake GitHub to its 👀
reaction arriving there.

The real server runs as a subprocess with the webhook configured (PyGithub's real client on
loopback to the fake GitHub). Every comment starts a run (the scripted model's immediate
finish, its `slack-bench` scenario), so the server is busy while it acknowledges.

    uv run python -m bench.github_ack [--deliveries N] [--interval SECONDS]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.common import print_table, summary
from bench.model_server import start_model
from tests.fakes.github import FakeGitHub
from tests.server import start_server

TOKEN = "ghp_BENCHTOKEN0123456789abcdefghijklmnopq"
SECRET = "github-webhook-bench-secret"
REPO = "acme/widgets"


def burst(
    github: FakeGitHub, issue: int, count: int, tag: str, interval: float = 0.0
) -> list[float]:
    """Comment `count` times, one every `interval` seconds (0: all at once), each delivered as
    it is made; the seconds from each delivery's start to the 👀 the fake recorded for it."""

    def one(i: int) -> tuple[int, float]:
        time.sleep(i * interval)
        comment = github.comment(REPO, issue, f"@backspace slack-bench {tag} {i}", user="alice")
        sent = next(
            d
            for d in reversed(list(github.deliveries))
            if d.payload["comment"]["id"] == comment["id"]
        )
        assert sent.status == 202, sent.response
        return comment["id"], sent.sent_at

    with ThreadPoolExecutor(max_workers=count) as pool:
        sent = dict(pool.map(one, range(count)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reacted = {r["id"]: r["at"] for r in list(github.reactions) if r["id"] in sent}
        if len(reacted) == len(sent):
            return [reacted[i] - sent[i] for i in sent]
        time.sleep(0.05)
    raise RuntimeError(f"only {len(reacted)} of {count} deliveries got their reaction in 60 s")


def wait_until_idle(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = httpx.get(f"{url}/api/runs", params={"limit": 200}, timeout=10).json()["runs"]
        if all(run["status"] not in ("queued", "running") for run in runs):
            return
        time.sleep(0.1)
    raise RuntimeError("the runs did not finish")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=50)
    parser.add_argument(
        "--interval", type=float, default=0.1, help="seconds between deliveries (0: all at once)"
    )
    args = parser.parse_args(argv)
    model = start_model()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="backspace-bench-") as tmp,
            FakeGitHub(token=TOKEN, login="backspace-bot") as github,
        ):
            github.create_repo(REPO, files={"app.py": "def signup(name):\n    return name\n"})
            github.set_permission(REPO, "alice", "write")
            issue = github.create_issue(REPO, "Signup accepts empty names", "Fix it.", user="zed")
            env = {
                "ANTHROPIC_API_KEY": "bench-key",
                "ANTHROPIC_BASE_URL": model.url,
                "GITHUB_TOKEN": TOKEN,
                "GITHUB_API_URL": github.api_url,
                "GITHUB_WEB_HOST": "github.com",
                "GITHUB_WEBHOOK_SECRET": SECRET,
                "BACKSPACE_RUNS_PER_MINUTE": "1000000",
                "BACKSPACE_RUNS_BURST": "100000",
            }
            server = start_server(Path(tmp) / "server", env)
            try:
                github.webhook(f"{server.url}/github/webhook", SECRET)
                burst(github, issue, 3, "warm")  # the first ones import PyGithub, learn /user
                wait_until_idle(server.url)
                before = len(github.deliveries)
                result = summary(burst(github, issue, args.deliveries, "go", args.interval))
                answers = summary([d.elapsed for d in github.deliveries[before:]])
                print(
                    f"delivery answered: p50 {answers['p50'] * 1000:.1f} ms, p99 {answers['p99'] * 1000:.1f} ms"
                )
                wait_until_idle(server.url)
            finally:
                server.stop()
    finally:
        model.stop()
    ms = {k: v * 1000 for k, v in result.items() if k != "n"}
    print_table(
        f"GitHub ack ({args.deliveries} webhook deliveries, "
        + (f"one every {args.interval:g} s" if args.interval else "at once")
        + ", to their 👀 reaction)",
        [
            (
                str(int(result["n"])),
                f"{ms['p50']:.1f}",
                f"{ms['p90']:.1f}",
                f"{ms['p99']:.1f}",
                f"{ms['mean']:.1f}",
            )
        ],
        ("deliveries", "p50 ms", "p90 ms", "p99 ms", "mean ms"),
    )
    return {"p50_ms": ms["p50"], "p99_ms": ms["p99"]}


if __name__ == "__main__":
    main(sys.argv[1:])
