"""A server told to stop (SIGTERM) leaves its queue alone: the queued runs stay queued for the
next server (or another replica of a fleet), and run there. Before the queue moved into the
store, a stopping server failed them ("interrupted").

The signal also tells the runner to claim nothing more at once (http/drain.py), before uvicorn's
own graceful wait for open connections; this test does not time that window: sse-starlette ends
event streams as soon as uvicorn is told to exit, so the wait is short here.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import uuid
from pathlib import Path

import httpx

from tests.conftest import ServerFactory, make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, ToolCall
from tests.helpers import base_env, wait_for_process, wait_status
from tests.scenarios import EDIT_SIGNUP, finish


async def test_a_stopping_server_leaves_its_queued_runs_for_the_next_one(
    repos: Path, fake_model: FakeAnthropic, server_factory: ServerFactory
) -> None:
    make_repo(repos, "widgets")
    marker = f"drain-{uuid.uuid4().hex[:12]}"
    fake_model.scenarios["drain-first"] = [
        Reply([ToolCall("bash", {"command": f"sleep 2; echo {marker}"})]),
        finish(),
    ]
    fake_model.scenarios["drain-second"] = [Reply([EDIT_SIGNUP]), finish()]
    env = base_env(repos, fake_model, MAX_CONCURRENT_RUNS="1", BACKSPACE_SHUTDOWN_GRACE="20")
    server = server_factory(env, name="drain")
    async with httpx.AsyncClient(timeout=30) as client:
        json_please = {"Accept": "application/json"}
        first = (
            await client.post(
                f"{server.url}/api/code",
                json={"repo_url": "local:widgets", "prompt": "drain-first"},
                headers=json_please,
            )
        ).json()
        await wait_for_process(marker)
        second = (
            await client.post(
                f"{server.url}/api/code",
                json={"repo_url": "local:widgets", "prompt": "drain-second"},
                headers=json_please,
            )
        ).json()
        # A viewer's open stream (of the queued run) keeps uvicorn waiting before the app's
        # shutdown, up to 5 s: meanwhile the first run ends and frees the only slot.
        async with client.stream("GET", f"{server.url}/api/runs/{second['id']}/events") as viewer:
            assert viewer.status_code == 200
            stopped = asyncio.get_running_loop().run_in_executor(None, server.stop, signal.SIGTERM)
            await asyncio.wait_for(stopped, 40)
    database = sqlite3.connect(server.db_path)
    try:
        statuses = dict(database.execute("SELECT id, status FROM runs").fetchall())
    finally:
        database.close()
    assert statuses[first["id"]] == "no_changes"  # it had its grace (and changed nothing)
    assert statuses[second["id"]] == "queued", "a stopping server started a queued run"

    restarted = server_factory(env, name="drain")
    final = await wait_status(restarted, second["id"], timeout=60)
    assert final["status"] == "succeeded", final["error"]
