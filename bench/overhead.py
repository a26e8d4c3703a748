"""Orchestration overhead: a whole backspace run against a shell script doing the same work.

The run: a small local repository, the scripted model at zero latency in its own process
(`bench/model_server.py`: one `cat`, one edit, `finish`). The script: the same git commands on the host and the same bubblewrap commands
(identical command lines, taken from the sandbox provider), in the same order, with nothing
in between. The ratio is what backspace adds on top of git and the sandbox.

    uv run python -m bench.overhead [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from backspace.app import build_service
from backspace.config import load_settings
from backspace.orchestrator.run import RunRequest
from backspace.orchestrator.sandboxes.local import LocalSandboxProvider
from backspace.runtime import tune_garbage_collector, watch_children_with_pidfds
from bench.common import print_table, small_repo, summary
from bench.model_server import start_model


async def backspace_runs(work: Path, fake_url: str, runs: int) -> list[float]:
    settings = load_settings(
        ANTHROPIC_API_KEY="bench-key",
        ANTHROPIC_BASE_URL=fake_url,
        BACKSPACE_LOCAL_REPOS=str(work / "repos"),
        BACKSPACE_DB=str(work / "bench.db"),
        MAX_CONCURRENT_RUNS=1,
    )
    services = build_service(settings)
    await services.runner.start()
    services.sandboxes.check()
    watch_children_with_pidfds()  # as the server does at start-up
    tune_garbage_collector()
    ref = services.parse_repo("local:widgets")
    times = []
    try:
        for i in range(runs):
            started = time.perf_counter()
            run = await services.runner.submit(
                RunRequest(repo_url="local:widgets", repo=ref, prompt=f"overhead-bench {i}")
            )
            async for event in services.hub.subscribe(run.id):
                if event.type == "complete":
                    assert event.data["status"] == "succeeded", event.data
            times.append(time.perf_counter() - started)
    finally:
        await services.aclose()
    return times


def shell_script(work: Path, provider: LocalSandboxProvider, index: str) -> str:
    """The same commands as one backspace run, in a plain bash script."""
    origin = work / "repos" / "widgets"
    base = provider.root / f"script-{index}"
    host = work / f"host-{index}"
    hardening = "-c core.hooksPath=/dev/null -c protocol.allow=never -c protocol.file.allow=always"
    shutil.rmtree(host, ignore_errors=True)
    host.mkdir(parents=True)  # holds the descriptor files before the script runs

    fd_files = 0

    def sandbox(command: str, *args: str) -> str:
        """The provider's own command line; the descriptors it reads (bubblewrap's options,
        passwd, group, the seccomp filter) become files the script opens at the same numbers."""
        nonlocal fd_files
        with provider._command(base, command, cwd="/workspace", args=args) as (argv, fds):
            redirects = []
            for fd in fds:
                fd_files += 1
                copy = host / f"fd-{fd_files}"
                copy.write_bytes(os.pread(fd, 1 << 24, 0))
                redirects.append(f"{fd}<{q(str(copy))}")
        return " ".join([shlex.join(argv), *redirects])

    q = shlex.quote
    write = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'
    lines = [
        "set -euo pipefail",
        f"rm -rf {q(str(base))}; mkdir -p {q(str(base))}/workspace {q(str(base))}/tmp {q(str(base))}/home",
        f"chown -R 65534:65534 {q(str(base))}" if provider._as_root else "true",
        f"git -C {q(str(origin))} symbolic-ref --short HEAD >/dev/null",
        f"base=$(git -C {q(str(origin))} rev-parse refs/heads/main)",
        f"git -C {q(str(origin))} bundle create {q(str(host))}/base.bundle refs/heads/main 2>/dev/null",
        f"{sandbox(write, '/tmp/base.bundle')} < {q(str(host))}/base.bundle",
        sandbox(
            "git init -q -b main . && git fetch -q --no-tags --update-head-ok /tmp/base.bundle "
            "refs/heads/main:refs/heads/main && git reset -q --hard && rm -f /tmp/base.bundle"
        ),
        sandbox(
            "for f in AGENTS.md CLAUDE.md README.md; do [ -f $f ] && head -c 9000 $f; done; git ls-files | head -n 300"
        )
        + " >/dev/null",
        sandbox("cat app.py") + " >/dev/null",
        sandbox('cat -- "$1"', "/workspace/app.py") + f" > {q(str(host))}/app.py",
        f"sed -i 's/    return name/    if not name:\\n        raise ValueError(\"x\")\\n    return name/' {q(str(host))}/app.py",
        f"{sandbox(write, '/workspace/app.py')} < {q(str(host))}/app.py",
        sandbox(
            'set -e; git add -A; git -c user.name=b -c user.email=b@b -c core.hooksPath=/dev/null commit -q --no-verify -m x; git bundle create --quiet /tmp/out.bundle "$1"..HEAD',
            "$base",
        ).replace("'$base'", '"$base"'),
        sandbox('head -c 52428801 -- "$1"', "/tmp/out.bundle") + f" > {q(str(host))}/out.bundle",
        f"git init -q --bare {q(str(host))}/host.git",
        f"echo $(git -C {q(str(origin))} rev-parse --path-format=absolute --git-common-dir)/objects > {q(str(host))}/host.git/objects/info/alternates",
        f'g() {{ git --git-dir {q(str(host))}/host.git {hardening} "$@"; }}',
        f"tip=$(g bundle unbundle {q(str(host))}/out.bundle | cut -d' ' -f1)",
        'g merge-base --is-ancestor "$base" "$tip"',
        'tree=$(g rev-parse "$tip^{tree}" "$base^{tree}" | head -n1)',
        'head=$(echo msg | GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@b GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@b g commit-tree "$tree" -p "$base")',
        'g diff --raw --numstat -z --no-abbrev "$base" "$head" >/dev/null; g diff "$base" "$head" >/dev/null',
        f'g push --quiet {q(str(origin))} "$head:refs/heads/script-{index}"',
        f"rm -rf {q(str(base))} {q(str(host))}",
    ]
    return "\n".join(lines) + "\n"


def script_runs(work: Path, runs: int) -> list[float]:
    provider = LocalSandboxProvider(Path(tempfile.mkdtemp(prefix="backspace-bench-")))
    provider.check()
    times = []
    for _ in range(runs):
        name = uuid.uuid4().hex[:8]
        script = work / f"run-{name}.sh"
        script.write_text(shell_script(work, provider, name))
        started = time.perf_counter()
        subprocess.run(["bash", str(script)], check=True)
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    # The model answers from its own process, as a real API would: in this one its threads
    # would take the GIL from the run being measured.
    model = start_model()
    try:
        with tempfile.TemporaryDirectory(prefix="backspace-bench-") as tmp:
            work = Path(tmp)
            small_repo(work / "repos")
            script_runs(work, 2)  # warm the page cache for both
            asyncio.run(backspace_runs(work, model.url, 2))
            script = summary(script_runs(work, args.runs))
            ours = summary(asyncio.run(backspace_runs(work, model.url, args.runs)))
    finally:
        model.stop()
    ratio = ours["p50"] / script["p50"]
    print_table(
        "orchestration overhead (whole run, zero-latency model)",
        [
            (
                "shell script",
                f"{script['p50'] * 1000:.1f}",
                f"{script['p90'] * 1000:.1f}",
                f"{script['mean'] * 1000:.1f}",
            ),
            (
                "backspace",
                f"{ours['p50'] * 1000:.1f}",
                f"{ours['p90'] * 1000:.1f}",
                f"{ours['mean'] * 1000:.1f}",
            ),
            ("ratio (p50)", f"{ratio:.2f}x", "", ""),
        ],
        ("", "p50 ms", "p90 ms", "mean ms"),
    )
    return {
        "script_p50_ms": script["p50"] * 1000,
        "backspace_p50_ms": ours["p50"] * 1000,
        "ratio": ratio,
    }


if __name__ == "__main__":
    main(sys.argv[1:])
