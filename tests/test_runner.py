"""The runner against a real SQLite store whose disk fills up mid-run."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from backspace.orchestrator.events import EventType, RunStatus
from backspace.orchestrator.githosts.base import RepoRef
from backspace.orchestrator.hub import EventHub
from backspace.orchestrator.redact import Redactor
from backspace.orchestrator.run import Outcome, RunContext, RunRequest
from backspace.orchestrator.runner import Runner, RunnerLimits
from backspace.orchestrator.store import SqliteStore


class FillTheDisk:
    """A pipeline whose run fills the database's disk (rows of ever smaller text, until not
    even one character fits), then emits: its event cannot be stored."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    async def run(self, ctx: RunContext) -> Outcome:
        ctx.emit(EventType.AI_MESSAGE, {"message": "this is stored"})
        await asyncio.sleep(0.05)
        size, seq = 60_000, 1_000_000  # beside the run's own events, as a chatty run's would be
        while size >= 1:
            try:
                self.db.execute(
                    "INSERT INTO events VALUES (?, ?, 'filler', '', ?)",
                    (ctx.run_id, seq, "x" * size),
                )
                seq += 1
            except sqlite3.Error:
                size //= 10
        ctx.emit(EventType.AI_MESSAGE, {"message": "this cannot be stored"})
        await asyncio.sleep(10)  # the runner stops the run when the store refuses its event
        return Outcome(RunStatus.SUCCEEDED)


async def test_when_the_store_is_full_live_viewers_still_get_the_end(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "full.db", max_bytes=256 * 1024)
    hub = EventHub(store)
    runner = Runner(
        store,
        hub,
        FillTheDisk(store._db),
        redactor=Redactor(),
        limits=RunnerLimits(),
        public_url="http://x",
    )
    await runner.start()
    run = await runner.submit(RunRequest("local:x", RepoRef("local", "x", "/x"), "fill it"))
    seen = await asyncio.wait_for(asyncio.ensure_future(_all(hub, run.id)), timeout=5)
    end = seen[-1]
    assert end.type == EventType.COMPLETE and end.data["status"] == "failed"
    assert end.data["recorded"] is False and "could not record" in end.data["message"]
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert [e.type for e in seen][:2] == [EventType.START, EventType.AI_MESSAGE]
    assert await store.ping() and runner.active_count() == 0
    await runner.shutdown()


async def _all(hub: EventHub, run_id: str) -> list:  # type: ignore[type-arg]
    return [event async for event in hub.subscribe(run_id)]
