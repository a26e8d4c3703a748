"""Slack follow-ups, end to end: a mention in a run's thread continues the run's family (a new
run with `parent_id`, a second commit on the same branch, the same pull request), over HTTP and
over Socket Mode; thread chatter without a mention does nothing; a thread of another channel is
not that run's thread. One real server takes both (a signing secret and an app-level token)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import git, make_repo
from tests.fakes.anthropic import Reply, ToolCall
from tests.fakes.slack import FakeSlack, SlackSigner, app_mention_event, send
from tests.fakes.slack_socket import FakeSocketMode
from tests.helpers import Shared, shared_rig, wait_for_process
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import Server
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SECRET = "slack-signing-secret-followups-0123"
BOT_TOKEN = "xoxb-followups-bot-token"
APP_TOKEN = "xapp-1-A1-followups-app-token-0123"
CHANNEL = "C0FOLLOW"
FORM = "application/x-www-form-urlencoded"
EDIT_AGAIN = ToolCall(
    "str_replace_based_edit_tool",
    {
        "command": "str_replace",
        "path": "app.py",
        "old_str": "    return name\n",
        "new_str": "    if not name.strip():\n        raise ValueError('blank name')\n    return name\n",
    },
)


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
        "slack-followups",
        lambda repos, model: {
            "ANTHROPIC_API_KEY": "sk-ant-api03-slack-followups-0001",
            "ANTHROPIC_BASE_URL": model.url,
            "BACKSPACE_LOCAL_REPOS": str(repos),
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_API_URL": module_slack.api_url,
            "SLACK_ALLOWED_USERS": "U1,U2",
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
def signer() -> SlackSigner:
    return SlackSigner(SECRET)


async def runs_on(server: Server, repo: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(verify=TLS) as client:
        runs: list[dict[str, Any]] = (await client.get(f"{server.url}/api/runs")).json()["runs"]
    return [run for run in runs if run["repo_url"] == repo]


async def ended(server: Server, repo: str, count: int = 1, timeout: float = 60) -> list[Any]:
    """The runs on `repo`, oldest first, once `count` of them ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = await runs_on(server, repo)
        if len(runs) >= count and all(r["status"] not in ("queued", "running") for r in runs):
            return sorted(runs, key=lambda r: r["created_at"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"the runs on {repo} did not end")


def broadcasts(slack: FakeSlack, channel: str = CHANNEL) -> list[dict[str, Any]]:
    return [
        c
        for c in slack.calls_to("chat.postMessage")
        if c["args"].get("reply_broadcast") in (True, "true", "1")
        and c["args"].get("channel") == channel
    ]


async def post(server: Server, signer: SlackSigner, body: bytes, form: bool = False) -> int:
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        response = await send(
            client,
            f"{server.url}/slack/events",
            body,
            signer,
            content_type=FORM if form else "application/json",
        )
    return response.status_code


async def first_run(
    shared: Shared, slack: FakeSlack, signer: SlackSigner, repo: str, key: str
) -> tuple[dict[str, Any], str]:
    """A run started by a slash command, ended; and its thread (the status message's ts)."""
    shared.model.scenarios[key] = [Reply([EDIT_SIGNUP]), finish()]
    body = signer.slash_command_body(
        text=f"local:{repo} {key} validate names",
        channel_id=CHANNEL,
        response_url=slack.response_url(CHANNEL, "U1"),
    )
    assert await post(shared.server, signer, body, form=True) == 200
    (run,) = await ended(shared.server, f"local:{repo}")
    assert run["status"] == "succeeded", run
    await slack.wait_until(lambda: len(broadcasts(slack)) == 1, timeout=20)
    status = next(c for c in slack.calls_to("chat.postMessage") if c["args"].get("blocks"))
    return run, str(status["response"]["ts"])


async def check_family(
    shared: Shared, slack: FakeSlack, repo: str, first: dict[str, Any], thread: str
) -> None:
    origin = shared.repos / repo
    first_run_, second = await ended(shared.server, f"local:{repo}", count=2)
    assert first_run_["id"] == first["id"]
    assert second["parent_id"] == first["id"] and second["family_id"] == first["id"]
    assert second["status"] == "succeeded", second
    assert second["pr_url"] == first["pr_url"] and second["branch"] == first["branch"]
    commits = git(origin, "rev-list", "--count", f"main..{first['branch']}").strip()
    assert commits == "2", "a second commit on the same branch"
    assert "blank name" in git(origin, "show", f"{first['branch']}:app.py")
    await slack.wait_until(lambda: len(broadcasts(slack)) == 2, timeout=20)
    posts = slack.calls_to("chat.postMessage")
    start = next(i for i, c in enumerate(posts) if second["id"] in str(c["args"].get("blocks")))
    posts_after = posts[start:]  # from the follow-up's status message on
    assert all(p["args"].get("thread_ts") == thread for p in posts_after), "all in the thread"
    final = broadcasts(slack)[-1]["args"]
    assert final["thread_ts"] == thread and first["pr_url"] in final["text"]
    assert "updated" in final["text"]


async def test_a_thread_mention_continues_the_family_on_the_same_pull_request(
    shared: Shared, slack: FakeSlack, signer: SlackSigner
) -> None:
    repo = "fu-http"
    make_repo(shared.repos, repo)
    shared.model.scenarios["fu-http-again"] = [Reply([EDIT_AGAIN]), finish("Reject blank names")]
    first, thread = await first_run(shared, slack, signer, repo, "fu-http-first")
    event = app_mention_event(
        "<@U0BOT> fu-http-again also reject blank names", channel=CHANNEL, thread_ts=thread
    )
    started = time.monotonic()
    assert await post(shared.server, signer, signer.event_body(event, "Ev-fu-http-1")) == 200
    await slack.wait_until(lambda: len(slack.reactions) == 1, timeout=5)
    assert time.monotonic() - started < 1.0, "acknowledged with a reaction within a second"
    assert slack.reactions[0]["timestamp"] == event["ts"]
    await check_family(shared, slack, repo, first, thread)


async def test_the_same_over_socket_mode(
    shared: Shared, slack: FakeSlack, signer: SlackSigner, module_socket: FakeSocketMode
) -> None:
    repo = "fu-socket"
    make_repo(shared.repos, repo)
    shared.model.scenarios["fu-socket-again"] = [Reply([EDIT_AGAIN]), finish("Reject blanks")]
    await module_socket.wait_connected()
    first, thread = await first_run(shared, slack, signer, repo, "fu-socket-first")
    event = app_mention_event(
        "<@U0BOT> fu-socket-again also reject blank names", channel=CHANNEL, thread_ts=thread
    )
    envelope = module_socket.send(
        "events_api", module_socket.event_payload(event, "Ev-fu-socket-1")
    )
    ack = await module_socket.wait_ack(envelope, timeout=5)
    assert ack["time"] - module_socket.envelope(envelope).sent[0] < 3
    await check_family(shared, slack, repo, first, thread)


async def test_thread_messages_without_a_mention_and_other_channels_threads_start_nothing(
    shared: Shared, slack: FakeSlack, signer: SlackSigner
) -> None:
    repo = "fu-quiet"
    make_repo(shared.repos, repo)
    first, thread = await first_run(shared, slack, signer, repo, "fu-quiet-first")
    slack.reset()
    chatter = {
        "type": "message", "user": "U2", "text": "fu-quiet-first nice, also reject blanks?",
        "channel": CHANNEL, "ts": f"{time.time():.6f}", "thread_ts": thread,
        "channel_type": "channel",
    }  # fmt: skip
    assert await post(shared.server, signer, signer.event_body(chatter, "Ev-fu-quiet-1")) == 200
    # The same thread ts in another channel is not this run's thread: a new request there
    # (which names no repository, so it is answered with how to ask).
    elsewhere = app_mention_event(
        "<@U0BOT> fu-quiet-first also reject blanks", channel="C0ELSEWHERE", thread_ts=thread
    )
    assert await post(shared.server, signer, signer.event_body(elsewhere, "Ev-fu-quiet-2")) == 200
    # Someone not allowed, in the run's own thread.
    stranger = app_mention_event(
        "<@U0BOT> fu-quiet-first also reject blanks", user="U9", channel=CHANNEL, thread_ts=thread
    )
    assert await post(shared.server, signer, signer.event_body(stranger, "Ev-fu-quiet-3")) == 200
    await slack.wait_until(lambda: len(slack.ephemerals) == 1, timeout=5)
    assert "not on the list" in slack.ephemerals[0]["text"]
    await slack.wait_until(lambda: len(slack.calls_to("chat.postMessage")) == 1, timeout=5)
    await asyncio.sleep(1.0)
    (reply,) = slack.calls_to("chat.postMessage")
    assert reply["args"]["channel"] == "C0ELSEWHERE" and "not a repository" in reply["args"]["text"]
    assert slack.messages(CHANNEL) == [] and slack.reactions == []
    runs = await runs_on(shared.server, f"local:{repo}")
    assert [r["id"] for r in runs] == [first["id"]], "no run started"


async def test_status_shows_families(shared: Shared, slack: FakeSlack, signer: SlackSigner) -> None:
    repo = "fu-status"
    make_repo(shared.repos, repo)
    shared.model.scenarios["fu-status-again"] = [Reply([EDIT_AGAIN]), finish("Reject blanks")]
    first, thread = await first_run(shared, slack, signer, repo, "fu-status-first")
    event = app_mention_event("<@U0BOT> fu-status-again and blanks", channel=CHANNEL,
                              thread_ts=thread)  # fmt: skip
    assert await post(shared.server, signer, signer.event_body(event, "Ev-fu-status-1")) == 200
    _, second = await ended(shared.server, f"local:{repo}", count=2)
    body = signer.slash_command_body(text="status", channel_id=CHANNEL)
    async with httpx.AsyncClient(verify=TLS, timeout=10) as client:
        response = await send(client, f"{shared.server.url}/slack/events", body, signer,
                              content_type=FORM)  # fmt: skip
    text = response.json()["text"]
    lines = text.splitlines()
    parent_line = next(i for i, line in enumerate(lines) if first["id"][:8] in line)
    child = lines[parent_line + 1]
    assert second["id"][:8] in child and "↳" in child and "follow-up" in child, text
    await slack.wait_until(lambda: len(broadcasts(slack)) == 2, timeout=20)


async def test_steer_in_the_thread_reaches_the_running_agent(
    shared: Shared, slack: FakeSlack, signer: SlackSigner
) -> None:
    repo = "fu-steer"
    make_repo(shared.repos, repo)
    marker = f"fu-steer-sleep-{time.monotonic_ns()}"
    key = "fu-steer-first"
    shared.model.scenarios[key] = [
        Reply([ToolCall("bash", {"command": f"sleep 2; echo {marker}"})]),
        Reply([EDIT_SIGNUP]),
        finish(),
    ]
    body = signer.slash_command_body(
        text=f"local:{repo} {key} validate names",
        channel_id=CHANNEL,
        response_url=slack.response_url(CHANNEL, "U1"),
    )
    assert await post(shared.server, signer, body, form=True) == 200
    await wait_for_process(marker)
    status = next(c for c in slack.calls_to("chat.postMessage") if c["args"].get("blocks"))
    thread = str(status["response"]["ts"])
    event = app_mention_event(
        "<@U0BOT> steer: reject whitespace-only names too", channel=CHANNEL, thread_ts=thread
    )
    assert await post(shared.server, signer, signer.event_body(event, "Ev-fu-steer-1")) == 200
    (run,) = await ended(shared.server, f"local:{repo}")
    assert run["status"] == "succeeded", run
    # No second run: the words went into the running one, at its next model turn.
    second_turn = shared.model.requests_for(key)[1]["messages"][-1]["content"]
    texts = [b.get("text", "") for b in second_turn if b.get("type") == "text"]
    assert any("reject whitespace-only names too" in t for t in texts), texts
    await slack.wait_until(
        lambda: any(
            "Delivered" in str(c["args"].get("text")) and c["args"].get("thread_ts") == thread
            for c in slack.calls_to("chat.postMessage")
        ),
        timeout=10,
    )
