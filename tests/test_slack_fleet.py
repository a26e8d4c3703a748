"""Slack and rate limits in a fleet: real `backspace serve` replicas on ONE real PostgreSQL, real
signed Slack requests, slack_sdk's real client posting to the recording fake Slack.

- A replica killed (SIGKILL) while it reports a run: another replica adopts the reporting, keeps
  editing the SAME status message, posts in the same thread, and the final message comes once.
- The per-channel pacing (SLACK_POST_INTERVAL) holds for posts from two replicas together.
- The API's rate limit (BACKSPACE_RUNS_BURST) holds for requests spread over two replicas.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, Text, ToolCall
from tests.fakes.slack import FakeSlack, SlackSigner, send
from tests.helpers import base_env, stop_and_remove, workdir
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import Server, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

SECRET = "slack-signing-secret-fleet-0123456789"
BOT_TOKEN = "xoxb-fleet-token"
FORM = "application/x-www-form-urlencoded"
LEASE = 2.0  # BACKSPACE_LEASE_SECONDS: a dead replica's runs and Slack threads move this soon
POST_INTERVAL = 0.5  # SLACK_POST_INTERVAL
BURST = 3  # BACKSPACE_RUNS_BURST


@dataclass
class Fleet:
    slack: FakeSlack
    model: FakeAnthropic
    repos: Path
    servers: list[Server]
    env: dict[str, str]
    signer: SlackSigner


@pytest.fixture(scope="module")
def fleet(postgres_url: str) -> Iterator[Fleet]:
    """Two replicas (A, B) on one database, one fake Slack and one fake model."""
    repos = workdir("slack-fleet-repos")
    roots: list[tuple[Server, Path]] = []
    with (
        FakeSlack(token=BOT_TOKEN, team_id="T0001", bot_user_id="U0BOT") as slack,
        FakeAnthropic(scenarios={}) as model,
    ):
        env = base_env(
            repos,
            model,
            BACKSPACE_DATABASE_URL=postgres_url,
            BACKSPACE_LEASE_SECONDS=str(LEASE),
            SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_SIGNING_SECRET=SECRET,
            SLACK_API_URL=slack.api_url,
            SLACK_STATUS_INTERVAL="0.3",
            SLACK_POST_INTERVAL=str(POST_INTERVAL),
            BACKSPACE_RUNS_PER_MINUTE="1",
            BACKSPACE_RUNS_BURST=str(BURST),
        )
        try:
            for name in ("a", "b"):
                root = workdir(f"slack-fleet-{name}")
                roots.append((start_server(root / "server", env), root))
            yield Fleet(slack, model, repos, [s for s, _ in roots], env, SlackSigner(SECRET))
        finally:
            for server, root in roots:
                stop_and_remove(server, root)
            shutil.rmtree(repos, ignore_errors=True)


async def slash(fleet: Fleet, server: Server, text: str, channel: str) -> httpx.Response:
    body = fleet.signer.slash_command_body(
        text=text,
        user_id="U1",
        channel_id=channel,
        response_url=fleet.slack.response_url(channel, "U1"),
    )
    async with httpx.AsyncClient(timeout=10) as client:
        return await send(
            client, f"{server.url}/slack/events", body, fleet.signer, content_type=FORM
        )


async def ended_runs(
    server: Server, repo: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            runs = (await client.get(f"{server.url}/api/runs")).json()["runs"]
            mine = [r for r in runs if r["repo_url"] == repo]
            if len(mine) >= count and all(r["status"] not in ("queued", "running") for r in mine):
                return mine
            await asyncio.sleep(0.1)
    raise AssertionError(f"the runs on {repo} did not end in {timeout} s")


async def wait_for(predicate: Any, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        await asyncio.sleep(0.05)


def posts_in(slack: FakeSlack, channel: str) -> list[dict[str, Any]]:
    return [c for c in slack.calls_to("chat.postMessage") if c["args"].get("channel") == channel]


def finals_in(slack: FakeSlack, channel: str) -> list[dict[str, Any]]:
    return [
        c
        for c in posts_in(slack, channel)
        if c["args"].get("reply_broadcast") in (True, "true", "1")
    ]


async def test_the_api_rate_limit_holds_across_replicas(fleet: Fleet) -> None:
    """BACKSPACE_RUNS_BURST runs from one client, whichever replicas its requests reach: each
    replica counting alone would let the client start BURST runs on EACH of them."""
    make_repo(fleet.repos, "limited")
    fleet.model.scenarios["fleet-limit"] = [finish()]
    answers: list[int] = []
    async with httpx.AsyncClient(timeout=10) as client:
        for server in fleet.servers * 4:  # A, B, A, B, ...: eight requests, burst 3
            response = await client.post(
                f"{server.url}/api/code",
                json={"repo_url": "local:limited", "prompt": "fleet-limit: add a check"},
                headers={"Accept": "application/json"},
            )
            answers.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) > 0
    assert answers.count(202) == BURST, answers
    assert answers.count(429) == 8 - BURST, answers
    await ended_runs(fleet.servers[0], "local:limited", BURST)


async def test_the_per_channel_pacing_holds_across_replicas(fleet: Fleet) -> None:
    """Two runs reported in one channel by two replicas: their posts together keep
    SLACK_POST_INTERVAL apart (each replica pacing alone would post side by side)."""
    channel = "C0PACED"
    make_repo(fleet.repos, "paced")
    fleet.model.scenarios["fleet-paced"] = [
        Reply([Text("Step one."), ToolCall("bash", {"command": "echo one"})]),
        Reply([Text("Step two."), EDIT_SIGNUP]),
        finish(),
    ]
    replies = await asyncio.gather(
        *(
            slash(fleet, server, f"local:paced fleet-paced: change {n}", channel)
            for n, server in enumerate(fleet.servers)
        )
    )
    assert all("Started run" in r.json()["text"] for r in replies), [r.text for r in replies]
    await ended_runs(fleet.servers[0], "local:paced", 2)
    await wait_for(lambda: len(finals_in(fleet.slack, channel)) == 2, what="two final replies")
    times = sorted(p["time"] for p in posts_in(fleet.slack, channel))
    assert len(times) >= 6
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= POST_INTERVAL * 0.8, f"posts {min(gaps):.3f} s apart"


async def test_a_killed_replicas_slack_thread_is_carried_on_by_another(fleet: Fleet) -> None:
    """A slash command to a replica that is then killed mid-run: the run finishes elsewhere or is
    reaped, and a surviving replica edits the same status message and posts the final reply
    once, in the same thread."""
    channel = "C0FAILOVER"
    make_repo(fleet.repos, "failover")
    fleet.model.scenarios["fleet-failover"] = [
        Reply([Text("Looking at the signup code."), ToolCall("bash", {"command": "sleep 3"})]),
        Reply([EDIT_SIGNUP]),
        finish(),
    ]
    root = workdir("slack-fleet-doomed")
    doomed = start_server(root / "server", fleet.env)
    try:
        reply = await slash(fleet, doomed, "local:failover fleet-failover: validate", channel)
        assert "Started run" in reply.json()["text"]
        await wait_for(
            lambda: any(
                "Looking at the signup code." in str(p["args"].get("text"))
                for p in posts_in(fleet.slack, channel)
            ),
            what="the agent's first words in the thread",
        )
        status = posts_in(fleet.slack, channel)[0]
        status_ts = status["response"]["ts"]
        assert not status["args"].get("thread_ts"), "the first post is the status message"
        os.killpg(doomed.process.pid, signal.SIGKILL)
        assert doomed.process.wait(10) == -signal.SIGKILL
        killed = len(fleet.slack.calls)

        (run,) = await ended_runs(fleet.servers[0], "local:failover", 1)
        interrupted = (run["error"] or {}).get("code") == "interrupted"
        assert run["status"] == "succeeded" or interrupted, run
        await wait_for(
            lambda: len(finals_in(fleet.slack, channel)) >= 1,
            timeout=LEASE * 5 + 10,
            what="the final reply from a surviving replica",
        )
        await asyncio.sleep(LEASE * 2)  # a second final reply would have come by now
        (final,) = finals_in(fleet.slack, channel)
        assert final["args"]["thread_ts"] == status_ts
        # Succeeded on another replica: its PR; reaped: the reaper's words (its error message).
        expected = (
            run["pr_url"] if run["status"] == "succeeded" else "the worker running this run stopped"
        )
        assert expected in str(final["args"]["text"]), final["args"]["text"]

        after = fleet.slack.calls[killed:]
        posted = [
            c
            for c in after
            if c["method"] == "chat.postMessage" and c["args"].get("channel") == channel
        ]
        assert posted and all(p["args"].get("thread_ts") == status_ts for p in posted), (
            "no second status message: every later post is in the first one's thread"
        )
        updates = [
            c for c in after if c["method"] == "chat.update" and c["args"].get("channel") == channel
        ]
        assert updates and all(u["args"]["ts"] == status_ts for u in updates)
        last = json.dumps(updates[-1]["args"]["blocks"])
        assert "backspace_cancel" not in last, "the status message shows the end, no button"
    finally:
        stop_and_remove(doomed, root)
