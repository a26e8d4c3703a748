"""Runs written into a store as a worker would have left them, for tests that start from a
database with history (a web page's views, a full disk)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from backspace.orchestrator.events import RunStatus, Stage
from backspace.orchestrator.store import Fence, NewEvent, Run, RunEnd, RunStore

REQUEST = {"repo_url": "local:x", "repo": {"host": "local", "name": "x", "location": "/x"}}


async def start(store: RunStore, run: Run, first: tuple[str, dict[str, Any]]) -> Fence:
    """Submit `run` (its first event), and claim it: the fence to write the rest with."""
    queued = replace(run, status=RunStatus.QUEUED, stage=Stage.QUEUED, family_id=run.id)
    await store.submit(queued, REQUEST, NewEvent(*first))
    claim = await store.claim("recorder", 600, among=[run.id])
    assert claim is not None, f"run {run.id} could not be claimed"
    return claim.fence


async def record(store: RunStore, run: Run, events: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """A finished run: submitted, claimed, its events, then its end (status, PR) as in `run`."""
    fence = await start(store, run, events[0])
    await store.append(fence, [NewEvent(type_, data) for type_, data in events[1:]])
    end = RunEnd(status=run.status, duration_ms=run.duration_ms or 0, pr_url=run.pr_url)
    await store.finish(fence, end, [])
