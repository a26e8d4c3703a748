"""Slack over Socket Mode, end to end: the real server started with SLACK_APP_TOKEN and no signing
secret connects with slack_bolt's real AsyncSocketModeHandler (slack_sdk's aiohttp client) to the
loopback fake of Slack's Socket Mode WebSocket, and posts with the real AsyncWebClient to the
recording fake Web API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, make_repo
from tests.fakes.anthropic import Reply, ToolCall
from tests.fakes.slack import FakeSlack, app_mention_event
from tests.fakes.slack_socket import FakeSocketMode
from tests.helpers import Shared, shared_rig
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import Server
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BOT_TOKEN = "xoxb-socket-bot-token"
APP_TOKEN = "xapp-1-A1-socket-app-token-0123456789"
CHANNEL = "C0SOCKET"
ACK_WITHIN = 3.0


@pytest.fixture(scope="module")
def module_slack() -> Iterator[FakeSlack]:
    with FakeSlack(token=BOT_TOKEN, app_token=APP_TOKEN) as fake:
        yield fake


@pytest.fixture(scope="module")
def module_socket(module_slack: FakeSlack) -> Iterator[FakeSocketMode]:
    with FakeSocketMode(module_slack) as socket:
        yield socket


@pytest.fixture(scope="module")
def shared(module_slack: FakeSlack, module_socket: FakeSocketMode) -> Iterator[Shared]:
    with shared_rig(
        "slack-socket",
        lambda repos, model: {
            "ANTHROPIC_API_KEY": "sk-ant-api03-slack-socket-0001",
            "ANTHROPIC_BASE_URL": model.url,
            "BACKSPACE_LOCAL_REPOS": str(repos),
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_API_URL": module_slack.api_url,
            "SLACK_STATUS_INTERVAL": "0.3",
            "SLACK_POST_INTERVAL": "0.1",
        },
    ) as rig:
        yield rig


@pytest.fixture
def slack(module_slack: FakeSlack) -> FakeSlack:
    module_slack.reset()
    return module_slack


@pytest.fixture
async def socket(module_socket: FakeSocketMode, shared: Shared) -> FakeSocketMode:
    """The module's Socket Mode fake, with the server connected to it."""
    module_socket.ack_timeout = 3.0
    module_socket.lose_acks = 0
    await module_socket.wait_connected()
    return module_socket


async def runs_on(server: Server, repo: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(verify=TLS) as client:
        runs: list[dict[str, Any]] = (await client.get(f"{server.url}/api/runs")).json()["runs"]
    return [run for run in runs if run["repo_url"] == repo]


async def ended(server: Server, repo: str, count: int = 1, timeout: float = 60) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = await runs_on(server, repo)
        if len(runs) >= count and all(r["status"] not in ("queued", "running") for r in runs):
            return runs
        await asyncio.sleep(0.1)
    raise AssertionError(f"the runs on {repo} did not end")


def broadcasts(slack: FakeSlack, channel: str = CHANNEL) -> list[dict[str, Any]]:
    return [
        c
        for c in slack.calls_to("chat.postMessage")
        if c["args"].get("reply_broadcast") in (True, "true", "1")
        and c["args"].get("channel") == channel
    ]


async def acked_in_time(socket: FakeSocketMode, envelope_id: str) -> dict[str, Any]:
    ack = await socket.wait_ack(envelope_id, timeout=ACK_WITHIN + 2)
    sent = socket.envelope(envelope_id).sent[0]
    assert ack["time"] - sent < ACK_WITHIN, f"acked after {ack['time'] - sent:.2f} s"
    return ack


async def test_a_slash_command_over_socket_mode_starts_a_run_reported_on_the_web_api(
    shared: Shared, slack: FakeSlack, socket: FakeSocketMode
) -> None:
    make_repo(shared.repos, "sock-slash")
    shared.model.scenarios["socket-slash-e2e"] = [Reply([EDIT_SIGNUP]), finish()]
    envelope = socket.send(
        "slash_commands",
        socket.slash_command_payload(
            text="local:sock-slash socket-slash-e2e validate names",
            channel_id=CHANNEL,
            response_url=slack.response_url(CHANNEL, "U1"),
        ),
    )
    ack = await acked_in_time(socket, envelope)
    assert ack["payload"]["response_type"] == "ephemeral"
    assert "Started run" in ack["payload"]["text"], ack
    (run,) = await ended(shared.server, "local:sock-slash")
    assert run["status"] == "succeeded" and run["source"] == "slack"
    await slack.wait_until(lambda: len(broadcasts(slack)) == 1, timeout=20)
    status = slack.calls_to("chat.postMessage")[0]
    assert status["args"]["channel"] == CHANNEL and run["id"] in str(status["args"]["blocks"])
    assert run["pr_url"] in broadcasts(slack)[0]["args"]["text"]
    assert socket.opens, "the client asked apps.connections.open for its URL"


async def test_an_app_mention_over_socket_mode_runs_in_its_thread(
    shared: Shared, slack: FakeSlack, socket: FakeSocketMode
) -> None:
    make_repo(shared.repos, "sock-mention")
    shared.model.scenarios["socket-mention-e2e"] = [Reply([EDIT_SIGNUP]), finish()]
    event = app_mention_event(
        "<@U0BOT> local:sock-mention socket-mention-e2e validate", channel=CHANNEL
    )
    envelope = socket.send("events_api", socket.event_payload(event, "Ev-sock-mention-1"))
    await acked_in_time(socket, envelope)
    (run,) = await ended(shared.server, "local:sock-mention")
    assert run["status"] == "succeeded"
    await slack.wait_until(lambda: len(broadcasts(slack)) == 1, timeout=20)
    assert slack.reactions[0]["timestamp"] == event["ts"]
    posts = slack.calls_to("chat.postMessage")
    assert posts and all(p["args"]["thread_ts"] == event["ts"] for p in posts)


async def test_a_cancel_click_and_a_plain_message_are_acked_in_time(
    shared: Shared, slack: FakeSlack, socket: FakeSocketMode
) -> None:
    make_repo(shared.repos, "sock-cancel")
    shared.model.scenarios["socket-cancel-e2e"] = [
        Reply([ToolCall("bash", {"command": "sleep 142"})]),
        finish(),
    ]
    started = socket.send(
        "slash_commands",
        socket.slash_command_payload(
            text="local:sock-cancel socket-cancel-e2e", channel_id=CHANNEL, user_id="U1"
        ),
    )
    await acked_in_time(socket, started)
    await slack.wait_for("chat.postMessage")
    status = slack.calls_to("chat.postMessage")[0]
    (run,) = await runs_on(shared.server, "local:sock-cancel")
    chatter = socket.send(
        "events_api",
        socket.event_payload(
            {"type": "message", "user": "U2", "text": "nice", "channel": CHANNEL,
             "ts": f"{time.time():.6f}", "channel_type": "channel"},
            "Ev-sock-chatter-1",
        ),
    )  # fmt: skip
    click = socket.send(
        "interactive",
        socket.block_action_payload(
            action_id="backspace_cancel", value=run["id"], user_id="U1", channel_id=CHANNEL,
            message_ts=status["response"]["ts"], response_url=slack.response_url(CHANNEL, "U1"),
        ),
    )  # fmt: skip
    await acked_in_time(socket, chatter)
    await acked_in_time(socket, click)
    (done,) = await ended(shared.server, "local:sock-cancel")
    assert done["status"] == "cancelled"
    await slack.wait_until(lambda: len(broadcasts(slack)) == 1, timeout=20)


async def test_after_a_disconnect_the_client_reconnects_and_the_next_envelope_works(
    shared: Shared, slack: FakeSlack, socket: FakeSocketMode
) -> None:
    before = len(socket.connections)
    opens = len(socket.opens)
    socket.disconnect("refresh_requested")
    await socket.wait_connected(before + 1)
    assert len(socket.opens) == opens + 1, "a fresh apps.connections.open for the new socket"
    await socket.wait_until(lambda: socket.open_connections == 1)
    envelope = socket.send("slash_commands", socket.slash_command_payload(text="help"))
    ack = await acked_in_time(socket, envelope)
    assert ack["connection"] == socket.connections[-1]["id"]
    assert "turns a sentence into a pull request" in ack["payload"]["text"]
    # A dropped socket (no disconnect message) too.
    socket.drop()
    await socket.wait_connected(before + 2, timeout=30)
    envelope = socket.send("slash_commands", socket.slash_command_payload(text="help"))
    await acked_in_time(socket, envelope)


async def test_a_redelivered_envelope_does_not_start_a_second_run(
    shared: Shared, slack: FakeSlack, socket: FakeSocketMode
) -> None:
    make_repo(shared.repos, "sock-retry")
    shared.model.scenarios["socket-retry-e2e"] = [Reply([EDIT_SIGNUP]), finish()]
    socket.ack_timeout = 0.5
    socket.lose_acks = 1  # the first ack is lost on the way: Slack delivers the event again
    event = app_mention_event(
        "<@U0BOT> local:sock-retry socket-retry-e2e validate", channel=CHANNEL
    )
    envelope = socket.send("events_api", socket.event_payload(event, "Ev-sock-retry-1"))
    await socket.wait_ack(envelope, timeout=10)
    sent = socket.envelope(envelope)
    assert sent.attempts == 2 and len([a for a in socket.acks if a.get("lost")]) >= 1
    socket.redeliver(envelope)  # and once more, as after a reconnect
    await socket.wait_until(lambda: len(socket.envelope(envelope).acks) == 2)
    (run,) = await ended(shared.server, "local:sock-retry")
    assert run["status"] == "succeeded"
    await slack.wait_until(lambda: len(broadcasts(slack)) == 1, timeout=20)
    await asyncio.sleep(0.5)
    assert len(await runs_on(shared.server, "local:sock-retry")) == 1
    assert len(slack.reactions) == 1


async def test_a_wrong_app_token_connects_nowhere_and_is_never_logged(
    tmp_path: Any, server_factory: ServerFactory, module_slack: FakeSlack
) -> None:
    wrong = "xapp-1-A1-not-the-app-token-987654321"
    repos = tmp_path / "repos"
    repos.mkdir()
    server = server_factory(
        {
            "ANTHROPIC_API_KEY": "sk-ant-api03-slack-socket-0002",
            "BACKSPACE_LOCAL_REPOS": str(repos),
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_APP_TOKEN": wrong,
            "SLACK_API_URL": module_slack.api_url,
        }
    )
    await module_slack.wait_until(
        lambda: any(
            c["response"].get("error") == "invalid_auth"
            for c in module_slack.calls_to("apps.connections.open")
        ),
        timeout=20,
    )
    async with httpx.AsyncClient(verify=TLS) as client:
        assert (await client.get(f"{server.url}/health")).status_code == 200
    assert wrong not in server.logs() and BOT_TOKEN not in server.logs()


async def test_an_envelope_nobody_listens_to_is_still_acked_so_slack_stops_resending_it(
    shared: Shared, slack: FakeSlack, socket: FakeSocketMode
) -> None:
    socket.ack_timeout = 1.0
    reaction = socket.send(
        "events_api",
        socket.event_payload(
            {"type": "reaction_added", "user": "U2", "reaction": "eyes",
             "item": {"type": "message", "channel": CHANNEL, "ts": "1700000000.000100"},
             "event_ts": f"{time.time():.6f}"},
            "Ev-sock-reaction-1",
        ),
    )  # fmt: skip
    click = socket.send(
        "interactive",
        socket.block_action_payload(
            action_id="someone_elses_button", value="x", channel_id=CHANNEL
        ),
    )
    await acked_in_time(socket, reaction)
    await acked_in_time(socket, click)
    await asyncio.sleep(1.5)
    assert socket.envelope(reaction).attempts == 1, "acked, so not delivered again"
    assert [c["method"] for c in slack.calls if c["method"] != "auth.test"] == [], "nothing posted"
