"""The run store: append a run's events one by one, then replay the whole run.

A SqliteStore on a temp file (SQLite, WAL, as the server uses it); events shaped like a real run's
(progress, AI messages, bash tool results with a little output).

    uv run python -m bench.store [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from backspace.orchestrator.events import RunStatus, Stage, now_iso
from backspace.orchestrator.store import NewEvent, Run, SqliteStore
from bench.common import print_table

RUN_ID = "0" * 32


def event_data(i: int) -> tuple[str, dict[str, Any]]:
    kind = i % 3
    if kind == 0:
        return "progress", {"stage": "agent", "message": f"Turn {i}", "percentage": 40}
    if kind == 1:
        return "AI Message", {"message": f"Looking at the file, step {i}. " * 3}
    return "Tool: Bash", {
        "call_id": f"toolu_{i:08d}",
        "command": "cat app.py",
        "output": "def signup(name):\n    return name\n" * 4,
        "exit_code": 0,
        "duration_ms": 12,
    }


def measure(path: Path, count: int) -> dict[str, float]:
    return asyncio.run(_measure(path, count))


async def _measure(path: Path, count: int) -> dict[str, float]:
    store = SqliteStore(path)
    try:
        now = now_iso()
        run = Run(
            id=RUN_ID,
            family_id=RUN_ID,
            created_at=now,
            updated_at=now,
            status=RunStatus.QUEUED,
            stage=Stage.QUEUED,
            repo_url="local:widgets",
            prompt="store bench",
            source="bench",
        )
        await store.submit(run, {"repo": {}}, NewEvent("start", {}))
        claim = await store.claim("bench", 600)
        assert claim is not None
        payloads = [NewEvent(*event_data(i)) for i in range(count - 1)]
        started = time.perf_counter()
        for event in payloads:  # one transaction each: a run's events as an idle run emits them
            await store.append(claim.fence, [event])
        append = time.perf_counter() - started
        replays = []
        for _ in range(5):
            started = time.perf_counter()
            events = await store.events_after(RUN_ID, 0)
            replays.append(time.perf_counter() - started)
            assert len(events) == count and events[-1].seq == count
    finally:
        store.close()
    return {
        "events": count,
        "append_per_s": (count - 1) / append,
        "append_us": append / (count - 1) * 1e6,
        "replay_ms": sorted(replays)[len(replays) // 2] * 1000,
        "replay_max_ms": max(replays) * 1000,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="backspace-bench-") as tmp:
        result = measure(Path(tmp) / "store.db", args.events)
    print_table(
        f"store (append and replay of a {args.events}-event run)",
        [
            (
                "append",
                f"{result['append_per_s']:,.0f} events/s",
                f"{result['append_us']:.1f} us/event",
            ),
            (
                "full replay",
                f"{result['replay_ms']:.1f} ms",
                f"median of 5 (worst {result['replay_max_ms']:.1f} ms)",
            ),
        ],
        ("", "measured", ""),
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
