"""The runner against a real SQLite store whose disk fills up mid-run."""

from __future__ import annotations

from pathlib import Path

from backspace.orchestrator.events import EventType, RunStatus
from backspace.orchestrator.githosts.base import RepoRef
from backspace.orchestrator.hub import EventHub
from backspace.orchestrator.redact import Redactor
from backspace.orchestrator.run import Outcome, RunContext, RunRequest
from backspace.orchestrator.runner import Runner, RunnerLimits
from backspace.orchestrator.store import Store, StoreError


class FillTheDisk:
    """A pipeline that writes ever smaller events until not even a tiny one fits."""

    async def run(self, ctx: RunContext) -> Outcome:
        size = 60_000
        while size >= 1:
            try:
                ctx.emit(EventType.TOOL_BASH, {"command": "yes", "output": "x" * size})
            except StoreError:
                size //= 10
        ctx.emit(EventType.AI_MESSAGE, {"message": "this cannot be stored either"})
        return Outcome(RunStatus.SUCCEEDED)


async def test_when_the_store_is_full_live_viewers_still_get_the_end(tmp_path: Path) -> None:
    store = Store(tmp_path / "full.db", max_bytes=256 * 1024)
    hub = EventHub(store)
    runner = Runner(
        store, hub, FillTheDisk(), redactor=Redactor(), limits=RunnerLimits(), public_url="http://x"
    )
    run = runner.submit(RunRequest("local:x", RepoRef("local", "x", "/x"), "fill it"))
    seen = [event async for event in hub.subscribe(run.id)]
    end = seen[-1]
    assert end.type == EventType.COMPLETE and end.data["status"] == "failed"
    assert end.data["recorded"] is False and "could not record" in end.data["message"]
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert store.ping() and runner.active_count() == 0
    await runner.shutdown()
