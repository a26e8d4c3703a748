"""Crash and restart: the server killed with SIGKILL mid-run, then started again on its database.

Real uvicorn, real bubblewrap, real git and SQLite; the scripted fake model over loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
import uuid
from pathlib import Path

import httpx
import pytest

from backspace.orchestrator.sandboxes.local import default_root
from tests.conftest import ServerFactory, git, make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, Text, ToolCall
from tests.helpers import assert_clean, base_env, processes_running, sandbox_processes
from tests.scenarios import EDIT_SIGNUP, finish
from tests.sse import Frame, collect, events_of, frames, post_run
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

# The command's line is unique to this session: another pytest session may run this same test.
CRASH_MARK = f"after-the-crash-{uuid.uuid4().hex[:12]}"
HANG = f"echo before-the-crash; sleep 124; echo {CRASH_MARK}"


async def raw_events(client: httpx.AsyncClient, url: str) -> bytes:
    """The whole SSE body of a finished run's event stream, as bytes."""
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        return await response.aread()


def pairs(got: list[Frame]) -> list[tuple[str | None, str]]:
    return [(f.id, f.data) for f in got if f.data]


async def test_sigkill_mid_run_then_restart_keeps_history_fails_the_run_and_resumes_streams(
    repos: Path, fake_model: FakeAnthropic, server_factory: ServerFactory
) -> None:
    origin = make_repo(repos, "widgets")
    fake_model.scenarios["crash-finished"] = [Reply([Text("Editing."), EDIT_SIGNUP]), finish()]
    fake_model.scenarios["crash-hanging"] = [Reply([ToolCall("bash", {"command": HANG})]), finish()]
    env = base_env(repos, fake_model)
    server = server_factory(env, name="crash")
    root = default_root(server.db_path)

    # 1. One run finishes; its events, its record and its pull request are remembered.
    finished = await post_run(server.url, {"repo_url": "local:widgets", "prompt": "crash-finished"})
    assert finished[-1]["type"] == "complete" and finished[-1]["status"] == "succeeded"
    done_id = finished[0]["run_id"]
    pr_url = finished[-1]["pr_url"]
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        done_bytes = await raw_events(client, f"{server.url}/api/runs/{done_id}/events")
        done_run = (await client.get(f"{server.url}/api/runs/{done_id}")).json()
        done_pr = (await client.get(pr_url.replace("/prs/", "/api/prs/"))).json()

        # 2. A second run hangs in a command; a viewer reads its events up to the command's
        # first output line and is still connected when the server is killed.
        hanging = await client.post(
            f"{server.url}/api/code",
            json={"repo_url": "local:widgets", "prompt": "crash-hanging"},
            headers={"Accept": "application/json"},
        )
        assert hanging.status_code == 202
        run_id = hanging.json()["id"]
        head: list[Frame] = []
        dropped: str | None = None
        async with client.stream("GET", f"{server.url}/api/runs/{run_id}/events") as response:
            assert response.status_code == 200
            stream = frames(response)
            async for frame in stream:
                head.append(frame)
                if frame.data and "before-the-crash" in frame.json.get("output", ""):
                    break
            deadline = time.monotonic() + 20
            while not processes_running(CRASH_MARK):
                assert time.monotonic() < deadline, "the command never started"
                await asyncio.sleep(0.05)
            sandbox_dir = root / run_id
            assert sandbox_dir.is_dir() and sandbox_processes(root)

            # 3. SIGKILL the server's whole process group: no shutdown code runs.
            os.killpg(server.process.pid, signal.SIGKILL)
            assert server.process.wait(10) == -signal.SIGKILL
            try:
                async for frame in stream:
                    head.append(frame)
            except httpx.HTTPError as exc:  # the connection died with the server
                dropped = type(exc).__name__
            else:
                dropped = "closed"
    last_id = int(head[-1].id or 0)
    assert [e["seq"] for e in events_of(head)] == list(range(1, last_id + 1))
    assert events_of(head)[-1]["type"] == "output" and dropped is not None

    # The crash left the sandbox directory and the run "running" on disk. The sandboxed command
    # died with the server: bubblewrap runs with --die-with-parent (PR_SET_PDEATHSIG), and the
    # command is its PID namespace's child, so it goes too. (It is not in the server's process
    # group: each command runs in a session of its own, so it can be killed as a tree.)
    assert sandbox_dir.is_dir(), "the crash left the sandbox on disk"
    killed_at = time.monotonic()
    deadline = killed_at + 10
    while sandbox_processes(root) or processes_running(CRASH_MARK):
        assert time.monotonic() < deadline, "sandbox processes outlived the server"
        await asyncio.sleep(0.05)
    gone_after = time.monotonic() - killed_at
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as db:
        (status,) = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        (stored,) = db.execute("SELECT max(seq) FROM events WHERE run_id = ?", (run_id,)).fetchone()
    db.close()
    assert status == "running" and stored == last_id

    # 4. Restart on the same database.
    restarted = server_factory(env, name="crash")
    assert default_root(restarted.db_path) == root
    async with httpx.AsyncClient(verify=TLS, timeout=30) as client:
        # The finished run is intact: the same bytes, the same record, the same pull request.
        assert await raw_events(client, f"{restarted.url}/api/runs/{done_id}/events") == done_bytes
        record = (await client.get(f"{restarted.url}/api/runs/{done_id}")).json()
        links = (
            "url",
            "events_url",
            "cancel_url",
            "followups_url",
        )  # built from this server's (new) address
        assert {k: v for k, v in record.items() if k not in links} == {
            k: v for k, v in done_run.items() if k not in links
        }
        assert record["status"] == "succeeded" and record["pr_url"] == pr_url
        again_pr = await client.get(
            pr_url.replace(server.url, restarted.url).replace("/prs/", "/api/prs/")
        )
        assert again_pr.status_code == 200 and again_pr.json() == done_pr

        # The viewer reconnects with Last-Event-ID: exactly the rest, then the end.
        _, rest = await asyncio.wait_for(
            collect(
                client,
                "GET",
                f"{restarted.url}/api/runs/{run_id}/events",
                headers={"Last-Event-ID": str(last_id)},
            ),
            15,
        )
        _, whole = await asyncio.wait_for(
            collect(client, "GET", f"{restarted.url}/api/runs/{run_id}/events"), 15
        )
        run = (await client.get(f"{restarted.url}/api/runs/{run_id}")).json()
    tail = events_of(rest)
    assert [e["seq"] for e in tail] == list(range(last_id + 1, last_id + 1 + len(tail)))
    assert [e["type"] for e in tail] == ["error", "complete"]
    assert tail[0]["code"] == "interrupted" and tail[0]["retryable"] is True
    assert tail[1]["status"] == "failed"
    assert pairs(head) + pairs(rest) == pairs(whole), "no gap, no duplicate across the crash"
    assert run["status"] == "failed" and run["error"]["code"] == "interrupted"
    print(
        f"\n[crash] viewer had events 1..{last_id} (connection: {dropped}); sandbox processes "
        f"gone {gone_after * 1000:.0f} ms after SIGKILL; after restart: {len(tail)} more events "
        f"({tail[0]['type']} {tail[0]['code']}, {tail[1]['type']} {tail[1]['status']}); the "
        f"finished run's {len(done_bytes)} bytes of events unchanged"
    )

    # The sandbox the crash left behind was deleted at start, before the server answered.
    assert not sandbox_dir.exists()
    assert "deleted 1 sandboxes left by a previous process" in restarted.logs()
    assert_clean(restarted)

    # The restarted server works: a new run succeeds and pushes its own branch.
    after = await post_run(restarted.url, {"repo_url": "local:widgets", "prompt": "crash-finished"})
    assert after[-1]["status"] == "succeeded" and after[-1]["pr_url"] != done_run["pr_url"]
    branches = git(origin, "for-each-ref", "--format=%(refname)", "refs/heads/backspace/").split()
    assert len(branches) == 2
    assert_clean(restarted)
