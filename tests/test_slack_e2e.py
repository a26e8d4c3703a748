"""Slack end to end: real signed requests to the real server, Bolt's real AsyncApp, slack_sdk's
real AsyncWebClient posting to the recording fake Slack Web API."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ServerFactory, git, make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, Text, ToolCall
from tests.fakes.slack import FakeSlack, SlackSigner, send
from tests.helpers import Shared, shared_rig
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import ROOT, Server, start_server
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SECRET = "slack-signing-secret-0123456789"
BOT_TOKEN = "xoxb-test-token"
CHANNEL = "C0CHANNEL"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def module_slack() -> Iterator[FakeSlack]:
    with FakeSlack(token=BOT_TOKEN, team_id="T0001", bot_user_id="U0BOT") as fake:
        yield fake


@pytest.fixture
def slack(module_slack: FakeSlack) -> FakeSlack:
    """The module's fake Slack, as if new: what an earlier test recorded or broke is forgotten
    (each test waits for its runs' last Slack call before it ends)."""
    module_slack.reset()
    module_slack.down = False
    module_slack.not_in_channel.clear()
    module_slack.missing_channels.clear()
    return module_slack


@pytest.fixture(scope="module")
def shared(module_slack: FakeSlack) -> Iterator[Shared]:
    """One server for the tests that need no fresh process (the fake Slack is reset per test)."""
    with shared_rig(
        "slack-e2e",
        lambda repos, model: env_for(repos, model, module_slack, SLACK_ADMIN_USERS="U0ADMIN"),
    ) as rig:
        yield rig


@pytest.fixture
def signer() -> SlackSigner:
    return SlackSigner(SECRET)


def env_for(repos: Path, model: FakeAnthropic, slack: FakeSlack, **extra: str) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": "sk-ant-api03-slack-e2e-0001",
        "ANTHROPIC_BASE_URL": model.url,
        "BACKSPACE_LOCAL_REPOS": str(repos),
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.api_url,
        "SLACK_STATUS_INTERVAL": "0.3",
        "SLACK_POST_INTERVAL": "0.25",
        **extra,
    }


async def slash(
    server: Server,
    signer: SlackSigner,
    slack: FakeSlack,
    text: str,
    *,
    user: str = "U1",
    channel: str = CHANNEL,
    **kwargs: Any,
) -> httpx.Response:
    body = signer.slash_command_body(
        text=text, user_id=user, channel_id=channel, response_url=slack.response_url(channel, user)
    )
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        return await send(
            client, f"{server.url}/slack/events", body, signer, content_type=FORM, **kwargs
        )


async def wait_runs(
    server: Server, count: int, repo: str, timeout: float = 60
) -> list[dict[str, Any]]:
    """The runs on `repo` (the server is shared: each test has its own), once they ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = await _runs(server, repo)
        if len(runs) >= count and all(r["status"] not in ("queued", "running") for r in runs):
            return runs
        await asyncio.sleep(0.1)
    raise AssertionError("the runs did not finish")


async def wait_for(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


def final_replies(slack: FakeSlack, channel: str = CHANNEL) -> list[dict[str, Any]]:
    return [
        c
        for c in slack.calls_to("chat.postMessage")
        if c["args"].get("reply_broadcast") in (True, "true", "1")
        and c["args"].get("channel") == channel
    ]


async def test_a_slash_command_runs_to_a_pull_request_with_threaded_progress(
    shared: Shared, slack: FakeSlack, signer: SlackSigner
) -> None:
    origin = make_repo(shared.repos, "slash")
    fake_model = shared.model
    fake_model.scenarios["slack-e2e"] = [
        Reply([Text("Looking at the signup code."), ToolCall("bash", {"command": "cat app.py"})]),
        Reply([EDIT_SIGNUP]),
        finish(),
    ]
    server = shared.server
    started = time.monotonic()
    response = await slash(server, signer, slack, "local:slash slack-e2e: validate names")
    assert time.monotonic() - started < 1.0, "acknowledged within a second"
    assert response.status_code == 200
    ack = response.json()
    assert ack["response_type"] == "ephemeral" and "Started run" in ack["text"]
    (run,) = await wait_runs(server, 1, "local:slash")
    assert run["status"] == "succeeded" and run["source"] == "slack"
    await wait_for(lambda: len(final_replies(slack)) == 1)

    posts = slack.calls_to("chat.postMessage")
    status = posts[0]
    status_ts = status["response"]["ts"]
    assert status["args"]["channel"] == CHANNEL and not status["args"].get("thread_ts")
    blocks = json.dumps(status["args"]["blocks"])
    assert "backspace_cancel" in blocks and run["id"] in blocks and "<@U1>" in blocks
    replies = posts[1:]
    assert replies and all(p["args"]["thread_ts"] == status_ts for p in replies)
    thread_text = "\n".join(str(p["args"].get("text")) for p in replies)
    assert "Looking at the signup code." in thread_text and "edited `app.py`" in thread_text
    final = final_replies(slack)[0]["args"]
    assert run["pr_url"] in final["text"] and "files changed" in final["text"]
    updates = slack.calls_to("chat.update")
    assert updates and all(u["args"]["ts"] == status_ts for u in updates)
    last = json.dumps(updates[-1]["args"]["blocks"])
    assert run["pr_url"] in last and "backspace_cancel" not in last, "the final state, no button"
    times = [p["time"] for p in posts]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.2, "paced per channel"
    branch = run["branch"]
    assert git(origin, "diff", "--name-only", "main", branch).split() == ["app.py"]


async def test_help_channel_default_and_status(
    shared: Shared, slack: FakeSlack, signer: SlackSigner
) -> None:
    make_repo(shared.repos, "default-widgets")
    fake_model = shared.model
    fake_model.scenarios["slack-default-e2e"] = [Reply([EDIT_SIGNUP]), finish()]
    server = shared.server
    here = "C0HELP"  # a channel of its own: the server is shared, its default and status too
    help_reply = (await slash(server, signer, slack, "help", channel=here)).json()["text"]
    assert "/backspace repo" in help_reply and "status" in help_reply
    no_default = (
        await slash(server, signer, slack, "slack-default-e2e add a check", channel=here)
    ).json()["text"]
    assert "not a repository I can use" in no_default
    set_repo = (
        await slash(server, signer, slack, "repo local:default-widgets", channel=here)
    ).json()["text"]
    assert "default repository is now `default-widgets`" in set_repo
    # The word "payload" in a command once made Bolt read it as a button click.
    started = (
        await slash(
            server, signer, slack, "slack-default-e2e add a check of the payload", channel=here
        )
    ).json()["text"]
    assert "Started run" in started and "widgets" in started
    (run,) = await wait_runs(server, 1, "local:default-widgets")
    assert (
        run["status"] == "succeeded"
        and run["prompt"] == "slack-default-e2e add a check of the payload"
    )
    status = (await slash(server, signer, slack, "status", channel=here)).json()["text"]
    assert run["id"][:8] in status and "pull request" in status
    elsewhere = (await slash(server, signer, slack, "status", channel="C0OTHER")).json()["text"]
    assert "No runs in this channel yet" in elsewhere
    # Its run's last Slack call, before the next test (on the same fake) begins.
    await wait_for(lambda: len(final_replies(slack, here)) == 1)


async def test_a_mention_starts_a_run_in_its_thread_with_a_reaction(
    shared: Shared, slack: FakeSlack, signer: SlackSigner
) -> None:
    make_repo(shared.repos, "mention")
    fake_model = shared.model
    fake_model.scenarios["slack-mention-e2e"] = [Reply([EDIT_SIGNUP]), finish()]
    server = shared.server
    event = {
        "type": "app_mention", "user": "U1", "channel": CHANNEL, "ts": "1700000000.000100",
        "text": "<@U0BOT> local:mention slack-mention-e2e please validate",
    }  # fmt: skip
    body = signer.event_body(event, event_id="Ev-mention-1")
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        first = await send(
            client, f"{server.url}/slack/events", body, signer, content_type="application/json"
        )
        retry = await send(
            client,
            f"{server.url}/slack/events",
            body,
            signer,
            content_type="application/json",
            retry_num=1,
        )
    assert first.status_code == retry.status_code == 200
    (run,) = await wait_runs(server, 1, "local:mention")
    assert run["status"] == "succeeded"
    await wait_for(lambda: len(final_replies(slack)) == 1)
    assert slack.reactions[0]["name"] == "eyes" and slack.reactions[0]["timestamp"] == event["ts"]
    posts = slack.calls_to("chat.postMessage")
    assert all(p["args"]["thread_ts"] == event["ts"] for p in posts), (
        "everything in the mention's thread"
    )
    await asyncio.sleep(0.5)
    assert len(await _runs(server, "local:mention")) == 1, "the retried event started no second run"


async def _runs(server: Server, repo: str | None) -> list[dict[str, Any]]:
    """The runs on `repo`, or all of them (on a server of one test's own)."""
    async with httpx.AsyncClient(verify=TLS) as client:
        runs: list[dict[str, Any]] = (await client.get(f"{server.url}/api/runs")).json()["runs"]
        return [run for run in runs if repo is None or run["repo_url"] == repo]


async def test_only_the_requester_or_an_admin_can_cancel(
    shared: Shared, slack: FakeSlack, signer: SlackSigner
) -> None:
    make_repo(shared.repos, "cancel")
    fake_model = shared.model
    fake_model.scenarios["slack-cancel-e2e"] = [
        Reply([ToolCall("bash", {"command": "sleep 141"})]),
        finish(),
    ]
    server = shared.server
    await slash(server, signer, slack, "local:cancel slack-cancel-e2e", user="U1")
    await wait_for(lambda: len(slack.calls_to("chat.postMessage")) >= 1)
    status = slack.calls_to("chat.postMessage")[0]
    (run,) = await _runs(server, "local:cancel")

    async def click(user: str) -> httpx.Response:
        body = signer.block_action_body(
            action_id="backspace_cancel", value=run["id"], user_id=user, channel_id=CHANNEL,
            message_ts=status["response"]["ts"], response_url=slack.response_url(CHANNEL, user),
        )  # fmt: skip
        async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
            return await send(client, f"{server.url}/slack/events", body, signer, content_type=FORM)

    assert (await click("U2")).status_code == 200
    await wait_for(lambda: any("Only <@U1>" in str(e.get("text")) for e in slack.ephemerals))
    await asyncio.sleep(0.3)
    assert (await _runs(server, "local:cancel"))[0]["status"] == "running"
    assert (await click("U1")).status_code == 200
    (done,) = await wait_runs(server, 1, "local:cancel")
    assert done["status"] == "cancelled"
    await wait_for(lambda: len(final_replies(slack)) == 1)
    assert "Cancelled" in final_replies(slack)[0]["args"]["text"]


async def test_bad_signatures_and_refusals_start_nothing(
    repos: Path,
    fake_model: FakeAnthropic,
    slack: FakeSlack,
    signer: SlackSigner,
    server_factory: ServerFactory,
) -> None:
    make_repo(repos, "widgets")
    server = server_factory(
        env_for(
            repos,
            fake_model,
            slack,
            SLACK_ALLOWED_USERS="U1",
            SLACK_ALLOWED_CHANNELS=f"{CHANNEL},C0OTHER",
            ALLOWED_REPOS="widgets",
        )
    )
    wrong = SlackSigner("not-the-secret")
    assert (await slash(server, wrong, slack, "local:widgets x")).status_code == 401
    stale = await slash(server, signer, slack, "local:widgets x", timestamp=int(time.time()) - 600)
    assert stale.status_code == 401
    refused_user = (await slash(server, signer, slack, "local:widgets x", user="U9")).json()
    assert (
        refused_user["response_type"] == "ephemeral" and "not on the list" in refused_user["text"]
    )
    refused_channel = (
        await slash(server, signer, slack, "local:widgets x", channel="C0SECRET")
    ).json()
    assert "not enabled in this channel" in refused_channel["text"]
    make_repo(repos, "gadgets")
    refused_repo = (await slash(server, signer, slack, "local:gadgets x")).json()
    assert "ALLOWED_REPOS" in refused_repo["text"]
    assert await _runs(server, None) == []
    assert SECRET not in server.logs()


async def test_slack_rate_limits_and_outages_never_hurt_the_run(
    shared: Shared, slack: FakeSlack, signer: SlackSigner
) -> None:
    origin = make_repo(shared.repos, "outage")
    fake_model = shared.model
    fake_model.scenarios["slack-429-e2e"] = [Reply([EDIT_SIGNUP]), finish()]
    fake_model.scenarios["slack-down-e2e"] = [Reply([EDIT_SIGNUP]), finish()]
    server = shared.server
    slack.fail("chat.postMessage", "ratelimited", times=1, retry_after=1)
    await slash(server, signer, slack, "local:outage slack-429-e2e")
    await wait_runs(server, 1, "local:outage")
    await wait_for(lambda: len(final_replies(slack)) == 1)
    statuses = [c for c in slack.calls_to("chat.postMessage") if c["args"].get("blocks")]
    assert [c["status"] for c in statuses] == [429, 200], "posted once, after the wait"
    assert statuses[1]["time"] - statuses[0]["time"] >= 0.9
    assert len([m for m in slack.messages(CHANNEL) if m.get("blocks")]) == 1

    slack.down = True
    await slash(server, signer, slack, "local:outage slack-down-e2e")
    runs = await wait_runs(server, 2, "local:outage")
    down = next(r for r in runs if r["prompt"] == "slack-down-e2e")
    assert down["status"] == "succeeded" and down["branch"] in git(origin, "branch", "--list")


def test_the_manifests_name_every_command_scope_and_url_the_code_relies_on() -> None:
    http = yaml.safe_load((ROOT / "manifest.yml").read_text())
    socket = yaml.safe_load((ROOT / "manifest.socket.yml").read_text())
    for manifest in (http, socket):
        (command,) = manifest["features"]["slash_commands"]
        assert command["command"] == "/backspace" and command["description"]
        scopes = set(manifest["oauth_config"]["scopes"]["bot"])
        assert {"commands", "chat:write", "app_mentions:read", "reactions:write"} <= scopes
        assert manifest["settings"]["event_subscriptions"]["bot_events"] == ["app_mention"]
        assert manifest["settings"]["interactivity"]["is_enabled"] is True
        assert manifest["features"]["bot_user"]["display_name"] == "backspace"
        assert len(manifest["display_information"]["name"]) <= 35
    urls = {
        http["features"]["slash_commands"][0]["url"],
        http["settings"]["event_subscriptions"]["request_url"],
        http["settings"]["interactivity"]["request_url"],
    }
    assert len(urls) == 1 and urls.pop().endswith("/slack/events")
    assert (
        http["settings"]["socket_mode_enabled"] is False
        and socket["settings"]["socket_mode_enabled"] is True
    )
    assert "url" not in socket["features"]["slash_commands"][0]
    assert "request_url" not in socket["settings"]["interactivity"]


async def test_not_in_channel_gets_an_ephemeral_invite_me_and_the_run_goes_on(
    shared: Shared, slack: FakeSlack, signer: SlackSigner
) -> None:
    make_repo(shared.repos, "invite")
    fake_model = shared.model
    fake_model.scenarios["slack-invite-e2e"] = [Reply([EDIT_SIGNUP]), finish()]
    server = shared.server
    slack.not_in_channel.add("C0PRIVATE")
    ack = (
        await slash(server, signer, slack, "local:invite slack-invite-e2e", channel="C0PRIVATE")
    ).json()
    assert "Started run" in ack["text"]
    await wait_for(
        lambda: any("/invite @backspace" in str(e.get("text")) for e in slack.ephemerals)
    )
    (run,) = await wait_runs(server, 1, "local:invite")
    assert run["status"] == "succeeded"


async def test_a_retried_event_after_a_restart_starts_no_second_run(
    slack: FakeSlack, signer: SlackSigner, tmp_path: Path
) -> None:
    """Slack re-sends an event it thinks was missed, maybe after the server restarted: the
    store remembers the event ids, not the process."""
    repos = tmp_path / "repos"
    make_repo(repos, "restart")
    with FakeAnthropic(scenarios={"slack-restart-e2e": [Reply([EDIT_SIGNUP]), finish()]}) as model:
        env = env_for(repos, model, slack)
        event = {
            "type": "app_mention", "user": "U1", "channel": CHANNEL, "ts": "1700000000.000900",
            "text": "<@U0BOT> local:restart slack-restart-e2e please validate",
        }  # fmt: skip
        body = signer.event_body(event, event_id="Ev-restart-1")
        server = start_server(tmp_path / "server", env)
        try:
            async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
                first = await send(client, f"{server.url}/slack/events", body, signer,
                                   content_type="application/json")  # fmt: skip
            assert first.status_code == 200
            (run,) = await wait_runs(server, 1, "local:restart")
            assert run["status"] == "succeeded"
        finally:
            server.stop()
        server = start_server(tmp_path / "server", env)
        try:
            async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
                retry = await send(client, f"{server.url}/slack/events", body, signer,
                                   content_type="application/json", retry_num=1)  # fmt: skip
            assert retry.status_code == 200
            await asyncio.sleep(1.0)
            assert len(await _runs(server, "local:restart")) == 1
        finally:
            server.stop()
