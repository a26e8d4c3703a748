"""GitHub App: the extra time a run spends on App authentication against the fake GitHub.

What a run does in App mode and not in token mode, all of it: `GitHubHost.run_access` signs a
JWT (PyGithub, RS256), finds the App's installation on the repository
(`GET /repos/{o}/{r}/installation`), mints a token for that repository
(`POST /app/installations/{id}/access_tokens`) and, when the run ends, revokes it
(`DELETE /installation/token`). Timed around the whole `async with` with nothing inside, on
loopback to the fake GitHub (its JWT checks and token bookkeeping included). The first run of a
process also asks `GET /app` (the App's slug, once); reported apart. The JWT signing alone is
timed too, to show where the time goes.

    uv run python -m bench.github_app [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from backspace.orchestrator.githosts.base import RepoRef
from backspace.orchestrator.githosts.base_payload import BasePayloads
from backspace.orchestrator.githosts.github import GitHubHost
from backspace.orchestrator.githosts.github_app import GitHubApp
from backspace.orchestrator.redact import Redactor
from bench.common import print_table, summary
from tests.fakes.github import FakeGitHub

REPO = "acme/widgets"
KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "jwt_p50_ms", "get_app_once_ms")


async def measure(github: FakeGitHub, private_key: str, app_id: int, runs: int) -> dict[str, float]:
    redactor = Redactor()
    app = GitHubApp(
        app_id=app_id,
        private_key=private_key,
        api_url=github.api_url,
        web_host="github.com",
        redactor=redactor,
    )
    with tempfile.TemporaryDirectory(prefix="bench-github-app-") as root:
        host = GitHubHost(
            token=None,
            api_url=github.api_url,
            web_host="github.com",
            cache_root=Path(root) / "cache",
            redactor=redactor,
            payloads=BasePayloads(Path(root) / "payloads", 10, 1),
            app=app,
        )
        ref = RepoRef(host="github", name=REPO, location=REPO)
        started = time.perf_counter()
        await app.slug()  # GET /app: once per process
        first_app = time.perf_counter() - started
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            async with host.run_access(ref):
                pass
            times.append(time.perf_counter() - started)
        signing = []
        for _ in range(runs):
            started = time.perf_counter()
            app.jwt()
            signing.append(time.perf_counter() - started)
        await host.aclose()
    revoked = sum(1 for t in github.issued_tokens if t.revoked is not None)
    assert revoked == len(github.issued_tokens) == runs, "every token revoked"
    auth = summary([t * 1000 for t in times])
    jwt = summary([t * 1000 for t in signing])
    return {
        "runs": runs,
        "p50_ms": auth["p50"],
        "p90_ms": auth["p90"],
        "p99_ms": auth["p99"],
        "mean_ms": auth["mean"],
        "jwt_p50_ms": jwt["p50"],
        "get_app_once_ms": first_app * 1000,
    }


def main(argv: list[str]) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    with FakeGitHub(token="ghp_BENCHAPPTOKEN0123456789abcdefghijklmn") as github:
        github.create_repo(REPO, files={"README.md": "# Widgets\n"})
        app = github.create_app("backspace")
        github.install_app(app, "acme", "all")
        result = asyncio.run(measure(github, app.private_key_pem, app.id, args.runs))
    print_table(
        "GitHub App authentication per run (JWT + installation + token + revoke)",
        [
            (str(int(result["runs"])), *(f"{result[k]:.2f}" for k in KEYS)),
        ],
        ("runs", "p50 ms", "p90 ms", "p99 ms", "mean ms", "JWT signing p50 ms", "GET /app once ms"),
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
