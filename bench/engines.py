"""Engines: a scripted run's wall time with our loop and with Claude Code.

Through the real service in-process (the local git host, the local sandbox, the model gateway
for Claude Code) against the scripted fake model (tests/fakes/anthropic.py, in a thread, no
delay per turn). Both engines make the same change in the same small repository in three
model turns (read the file, edit it, end with a summary): what differs is the engine alone,
that is Claude Code's start-up in the sandbox, its requests through the gateway, and its own
tool handling. Timed from submission to `complete`; the first round of each engine is a warm-up.

    uv run python -m bench.engines [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import tempfile
import time
from pathlib import Path

from backspace.app import build_service
from backspace.config import load_settings
from backspace.orchestrator.run import RunRequest
from backspace.orchestrator.service import Service
from bench.common import print_table, small_repo, summary
from tests.fakes.anthropic import FakeAnthropic, Reply, Step, Text, ToolCall

APP = "/workspace/app.py"
OLD, NEW = "    return name\n", "    return name.strip()\n"
LOOP: list[Step] = [
    Reply([ToolCall("str_replace_based_edit_tool", {"command": "view", "path": "app.py"})]),
    Reply(
        [
            ToolCall(
                "str_replace_based_edit_tool",
                {"command": "str_replace", "path": "app.py", "old_str": OLD, "new_str": NEW},
            )
        ]
    ),
    Reply([ToolCall("finish", {"title": "Strip the name", "body": "Strips it."})]),
]
CLAUDE: list[Step] = [
    Reply([ToolCall("Read", {"file_path": APP})]),
    Reply([ToolCall("Edit", {"file_path": APP, "old_string": OLD, "new_string": NEW})]),
    Reply([Text("PR title: Strip the name\nPR body:\nStrips it.")]),
]


async def _complete(services: Service, run_id: str, started: float) -> float:
    async for event in services.hub.subscribe(run_id):
        if event.type == "complete":
            assert event.data["status"] == "succeeded", event.data
            return time.perf_counter() - started
    raise AssertionError("the run never completed")


async def rounds(work: Path, model_url: str, count: int) -> dict[str, list[float]]:
    settings = load_settings(
        ANTHROPIC_API_KEY="bench-key",
        ANTHROPIC_BASE_URL=model_url,
        BACKSPACE_LOCAL_REPOS=str(work / "repos"),
        BACKSPACE_DB=str(work / "bench.db"),
        BACKSPACE_SANDBOX="local",
        MAX_CONCURRENT_RUNS=1,
    )
    services = build_service(settings)
    await services.runner.start()
    services.sandboxes.check()
    await asyncio.to_thread(importlib.import_module, "anthropic")
    ref = services.parse_repo("local:widgets")
    times: dict[str, list[float]] = {"backspace": [], "claude-code": []}
    try:
        for i in range(count + 1):
            for engine in times:
                started = time.perf_counter()
                run = await services.runner.submit(
                    RunRequest(
                        repo_url="local:widgets",
                        repo=ref,
                        prompt=f"engines-bench-{engine} {i}",
                        engine=engine,
                    )
                )
                seconds = await _complete(services, run.id, started)
                if i > 0:  # the first round warms the caches (base payload, page cache)
                    times[engine].append(seconds)
    finally:
        await services.aclose()
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per engine")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="backspace-bench-engines-"))
    work.chmod(0o711)
    scenarios = {"engines-bench-backspace": LOOP, "engines-bench-claude-code": CLAUDE}
    try:
        small_repo(work / "repos", "widgets")
        with FakeAnthropic(scenarios=scenarios, api_key="bench-key") as model:
            times = asyncio.run(rounds(work, model.url, max(1, args.rounds)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loop, claude = summary(times["backspace"]), summary(times["claude-code"])
    figures = {
        "backspace_p50_s": loop["p50"],
        "claude_code_p50_s": claude["p50"],
        "ratio": claude["p50"] / loop["p50"],
    }
    rows: list[tuple[str, ...]] = [
        (name, f"{s['p50']:.2f} s", f"{s['p90']:.2f} s", f"{int(s['n'])}")
        for name, s in (("backspace (our loop)", loop), ("claude-code (Claude Code)", claude))
    ]
    rows.append(("claude-code / backspace (p50)", f"{figures['ratio']:.2f}x", "", ""))
    print_table(
        "engines: a scripted 3-turn run, submission to complete",
        rows,
        ("engine", "p50", "p90", "runs"),
    )
    return figures


if __name__ == "__main__":
    main()
