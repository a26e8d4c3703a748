"""The fake Slack (tests/fakes/slack.py) against the real slack-sdk and slack-bolt.

Why: the Slack front end's tests trust this fake, so it is driven here by the same
code that will talk to it in the service: the real ``AsyncWebClient`` (with and
without ``AsyncRateLimitErrorRetryHandler``), the real ``AsyncWebhookClient`` behind
Bolt's ``respond()``, the real ``SignatureVerifier``, Bolt's own request parsing, and
finally a real ``AsyncApp`` mounted in Starlette receiving signed requests.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.request.payload_utils import (
    is_block_actions,
    is_event,
    is_slash_command,
    to_action,
)
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.slack import FakeSlack, SlackSigner, app_mention_event, send
from tests.tls import TLS

TOKEN = "xoxb-test-token"
SECRET = "signing-secret"
BUTTON = {
    "type": "actions",
    "block_id": "controls",
    "elements": [
        {
            "type": "button",
            "action_id": "cancel_run",
            "text": {"type": "plain_text", "text": "Cancel"},
            "value": "run-1",
            "style": "danger",
        }
    ],
}


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(token=TOKEN, team_id="T0001", bot_user_id="U0BOT") as fake:
        yield fake


@pytest.fixture
def client(slack: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=TOKEN, base_url=slack.api_url)


# -- Web API ---------------------------------------------------------------------
async def test_progress_flow_is_reflected_in_state(slack: FakeSlack, client: AsyncWebClient):
    assert slack.api_url.startswith("http://127.0.0.1:") and slack.api_url.endswith("/api/")

    auth = await client.auth_test()
    assert (auth["user_id"], auth["team_id"], auth["bot_id"]) == ("U0BOT", "T0001", "B0BOT")
    assert auth["url"].startswith("https://")

    root = await client.chat_postMessage(
        channel="C1", text="Working…", blocks=[section("*Working…*"), BUTTON]
    )
    assert root["ok"] and root["channel"] == "C1"
    assert root["message"]["ts"] == root["ts"] and root["message"]["user"] == "U0BOT"
    assert root["message"]["blocks"][1]["elements"][0]["action_id"] == "cancel_run"

    reply = await client.chat_postMessage(channel="C1", thread_ts=root["ts"], text="cloned")
    assert reply["message"]["thread_ts"] == root["ts"]
    assert float(reply["ts"]) > float(root["ts"])

    updated = await client.chat_update(
        channel="C1", ts=root["ts"], text="Tests running", blocks=[section("*Tests running*")]
    )
    assert updated["ts"] == root["ts"] and updated["text"] == "Tests running"

    final = await client.chat_postMessage(
        channel="C1",
        thread_ts=root["ts"],
        text="PR opened: https://github.com/acme/widgets/pull/1",
        reply_broadcast=True,
        unfurl_links=False,
    )
    eph = await client.chat_postEphemeral(channel="C1", user="U1", text="only you")
    assert eph["message_ts"]
    await client.reactions_add(channel="C1", timestamp=root["ts"], name="white_check_mark")
    link = await client.chat_getPermalink(channel="C1", message_ts=final["ts"])
    assert link["permalink"].endswith(f"?thread_ts={root['ts']}&cid=C1")
    info = await client.conversations_info(channel="C1")
    assert info["channel"]["id"] == "C1" and info["channel"]["is_member"] is True

    messages = slack.messages("C1")
    assert [m["ts"] for m in messages] == [root["ts"], reply["ts"], final["ts"]]
    first, second, third = messages
    assert first["text"] == "Tests running" and first["updated"] == 1
    assert first["blocks"] == [section("*Tests running*")] and first["thread_ts"] is None
    assert second["thread_ts"] == root["ts"] and second["reply_broadcast"] is False
    assert third["reply_broadcast"] is True and "pull/1" in third["text"]
    assert all(m["user"] == "U0BOT" for m in messages)
    assert slack.thread("C1", root["ts"]) == [second, third]
    assert slack.ephemerals == [
        {
            "channel": "C1",
            "user": "U1",
            "text": "only you",
            "blocks": None,
            "thread_ts": None,
            "via": "api",
            "message_ts": eph["message_ts"],
        }
    ]
    assert slack.reactions == [
        {"channel": "C1", "timestamp": root["ts"], "name": "white_check_mark"}
    ]

    # Slack: chat.update with text but without blocks removes the blocks.
    await client.chat_update(channel="C1", ts=root["ts"], text="Done")
    assert slack.messages("C1")[0]["blocks"] is None
    assert slack.messages("C1")[0]["updated"] == 2

    with pytest.raises(SlackApiError) as err:
        await client.reactions_add(channel="C1", timestamp=root["ts"], name="white_check_mark")
    assert err.value.response["error"] == "already_reacted"
    with pytest.raises(SlackApiError) as err:
        await client.chat_update(channel="C1", ts="1600000000.000001", text="x")
    assert err.value.response["error"] == "message_not_found"
    assert err.value.response.status_code == 200

    calls = slack.calls
    assert [c["method"] for c in calls][:3] == ["auth.test", "chat.postMessage", "chat.postMessage"]
    assert all(c["headers"]["authorization"] == f"Bearer {TOKEN}" for c in calls)
    assert len(slack.calls_to("chat.update")) == 3  # incl. the message_not_found one
    assert calls[0]["time"] <= calls[1]["time"] <= calls[-1]["time"]
    assert slack.calls_to("chat.postMessage")[2]["args"]["reply_broadcast"] is True


async def test_request_encoding_of_the_real_client(slack: FakeSlack, client: AsyncWebClient):
    """What AsyncWebClient 3.47 sends: JSON for json= methods, query string for params= ones."""
    root = await client.chat_postMessage(channel="C1", text="hi", blocks=[section("hi")])
    await client.reactions_add(channel="C1", timestamp=root["ts"], name="eyes")
    await client.auth_test()
    await client.chat_getPermalink(channel="C1", message_ts=root["ts"])
    post, react, auth, link = slack.calls
    assert post["http_method"] == "POST" and post["body_format"] == "json"
    assert post["headers"]["content-type"] == "application/json;charset=utf-8"
    assert post["args"]["blocks"] == [section("hi")] and post["query"] == {}
    # params= methods: empty form-typed POST, every argument in the query string.
    assert react["http_method"] == "POST" and react["body_format"] == "none"
    assert react["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert react["query"] == {"channel": "C1", "timestamp": root["ts"], "name": "eyes"}
    assert auth["body_format"] == "none" and auth["args"] == {}
    assert link["http_method"] == "GET" and link["query"]["message_ts"] == root["ts"]

    # A per-team client (as Bolt builds per request) adds team_id; the fake ignores it.
    team_client = AsyncWebClient(token=TOKEN, base_url=slack.api_url, team_id="T0001")
    await team_client.chat_postMessage(channel="C1", text="again")
    assert slack.calls[-1]["args"]["team_id"] == "T0001"

    # Form-encoded bodies (other clients, or a `token` field instead of the header).
    async with httpx.AsyncClient(verify=TLS) as http:
        res = await http.post(
            slack.api_url + "chat.postMessage",
            data={"token": TOKEN, "channel": "C2", "text": "form", "reply_broadcast": "true"},
        )
    assert res.headers["content-type"].startswith("application/json")
    assert res.json()["ok"] is True
    assert slack.messages("C2")[0]["text"] == "form"
    assert slack.calls[-1]["body_format"] == "form"


async def test_not_in_channel_and_missing_channel(slack: FakeSlack, client: AsyncWebClient):
    slack.not_in_channel.add("C_PRIVATE")
    slack.missing_channels.add("C_GONE")
    for call in (
        client.chat_postMessage(channel="C_PRIVATE", text="hi"),
        client.reactions_add(channel="C_PRIVATE", timestamp="1700000000.000100", name="eyes"),
    ):
        with pytest.raises(SlackApiError) as err:
            await call
        assert err.value.response["error"] == "not_in_channel"
        assert err.value.response.status_code == 200
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel="C_GONE", text="hi")
    assert err.value.response["error"] == "channel_not_found"
    assert slack.messages("C_PRIVATE") == [] and slack.reactions == []
    info = await client.conversations_info(channel="C_PRIVATE")
    assert info["channel"]["is_member"] is False


async def test_rate_limit_is_retried_by_the_retry_handler(slack: FakeSlack):
    retrying = AsyncWebClient(
        token=TOKEN,
        base_url=slack.api_url,
        retry_handlers=[AsyncConnectionErrorRetryHandler(), AsyncRateLimitErrorRetryHandler()],
    )
    slack.fail("chat.postMessage", "ratelimited", retry_after=1)
    started = time.monotonic()
    res = await retrying.chat_postMessage(channel="C1", text="after the wait")
    elapsed = time.monotonic() - started
    assert res["ok"]
    # The handler sleeps Retry-After + random.random() (0-1 s jitter).
    assert 1.0 <= elapsed < 3.0
    first, second = slack.calls_to("chat.postMessage")
    assert (first["status"], second["status"]) == (429, 200)
    assert first["response"] == {"ok": False, "error": "ratelimited"}
    assert second["time"] - first["time"] >= 1.0
    assert [m["text"] for m in slack.messages("C1")] == ["after the wait"]


async def test_rate_limit_without_handler_raises_429(slack: FakeSlack, client: AsyncWebClient):
    slack.fail("chat.postMessage", "ratelimited", retry_after=7, times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as err:
            await client.chat_postMessage(channel="C1", text="hi")
        assert err.value.response.status_code == 429
        assert err.value.response["error"] == "ratelimited"
        assert err.value.response.headers["Retry-After"] == "7"
    assert (await client.chat_postMessage(channel="C1", text="hi"))["ok"]
    assert [c["status"] for c in slack.calls] == [429, 429, 200]
    assert len(slack.messages("C1")) == 1


async def test_injected_errors_and_outage(slack: FakeSlack, client: AsyncWebClient):
    slack.fail("chat.update", "cant_update_message")
    root = await client.chat_postMessage(channel="C1", text="hi")
    with pytest.raises(SlackApiError) as err:
        await client.chat_update(channel="C1", ts=root["ts"], text="x")
    assert err.value.response.status_code == 200
    assert err.value.response["error"] == "cant_update_message"
    assert (await client.chat_update(channel="C1", ts=root["ts"], text="x"))["ok"]

    slack.fail("chat.postMessage", "internal_error", status=500)
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel="C1", text="hi")
    assert err.value.response.status_code == 500
    assert err.value.response["error"] == "internal_error"

    slack.down = True
    for call in (client.auth_test(), client.chat_postMessage(channel="C1", text="hi")):
        with pytest.raises(SlackApiError) as err:
            await call
        assert err.value.response.status_code == 503
        assert err.value.response.data == {}  # an HTML page, not JSON
    slack.down = False
    assert (await client.auth_test())["ok"]
    assert [m["text"] for m in slack.messages("C1")] == ["x"]
    assert [c["status"] for c in slack.calls_to("auth.test")] == [503, 200]


async def test_auth_and_unknown_method(slack: FakeSlack):
    bad = AsyncWebClient(token="xoxb-wrong", base_url=slack.api_url)
    with pytest.raises(SlackApiError) as err:
        await bad.chat_postMessage(channel="C1", text="hi")
    assert err.value.response["error"] == "invalid_auth"
    assert err.value.response.status_code == 200
    anonymous = AsyncWebClient(base_url=slack.api_url)
    with pytest.raises(SlackApiError) as err:
        await anonymous.auth_test()
    assert err.value.response["error"] == "not_authed"  # Slack's answer to a missing token
    good = AsyncWebClient(token=TOKEN, base_url=slack.api_url)
    with pytest.raises(SlackApiError) as err:
        await good.api_call("chat.nonsense", json={"channel": "C1"})
    assert err.value.response["error"] == "unknown_method"
    assert slack.messages("C1") == []


async def test_response_url(slack: FakeSlack, client: AsyncWebClient):
    root = await client.chat_postMessage(channel="C1", text="root", blocks=[BUTTON])
    command_url = slack.response_url("C1", "U1")
    assert command_url.startswith(slack.url + "/response/")
    hook = AsyncWebhookClient(command_url)
    res = await hook.send(text="queued", response_type="ephemeral")
    assert (res.status_code, res.body) == (200, "ok")
    res = await hook.send(text="everyone sees this", response_type="in_channel")
    assert res.status_code == 200

    action_url = slack.response_url("C1", "U2", message_ts=root["ts"])
    await AsyncRespond(response_url=action_url)(text="Cancelled", replace_original=True)
    await AsyncRespond(response_url=action_url)(text="cancel ok", replace_original=False)

    assert [(e["user"], e["text"], e["via"]) for e in slack.ephemerals] == [
        ("U1", "queued", "response_url"),
        ("U2", "cancel ok", "response_url"),
    ]
    first, second = slack.messages("C1")
    assert (first["text"], first["blocks"], first["updated"]) == ("Cancelled", None, 1)
    assert (second["text"], second["user"]) == ("everyone sees this", "U0BOT")
    assert [r["payload"]["text"] for r in slack.responses] == [
        "queued",
        "everyone sees this",
        "Cancelled",
        "cancel ok",
    ]

    await AsyncRespond(response_url=action_url)(delete_original=True)
    assert [m["text"] for m in slack.messages("C1")] == ["everyone sees this"]
    unknown = await AsyncWebhookClient(slack.url + "/response/nope").send(text="x")
    assert unknown.status_code == 404


async def test_wait_for(slack: FakeSlack, client: AsyncWebClient):
    with pytest.raises(TimeoutError):
        await slack.wait_for("chat.postMessage", timeout=0.05)
    await client.chat_postMessage(channel="C1", text="a")
    assert len(await slack.wait_for("chat.postMessage", count=1)) == 1


# -- signed requests -------------------------------------------------------------
def test_signer_headers_verify_with_the_sdk():
    signer = SlackSigner(SECRET)
    body = signer.slash_command_body(text="https://github.com/acme/widgets add tests")
    headers = signer.headers(body)
    assert headers["X-Slack-Signature"].startswith("v0=")
    assert abs(int(headers["X-Slack-Request-Timestamp"]) - time.time()) < 5
    assert SignatureVerifier(SECRET).is_valid_request(body, headers)
    assert SignatureVerifier(SECRET).is_valid_request(body.decode(), headers)
    assert not SignatureVerifier("another-secret").is_valid_request(body, headers)
    assert not SignatureVerifier(SECRET).is_valid_request(body + b"x", headers)
    stale = signer.headers(body, timestamp=int(time.time()) - 301)
    assert not SignatureVerifier(SECRET).is_valid_request(body, stale)
    future = signer.headers(body, timestamp=int(time.time()) + 301)
    assert not SignatureVerifier(SECRET).is_valid_request(body, future)
    recent = signer.headers(body, timestamp=int(time.time()) - 250)
    assert SignatureVerifier(SECRET).is_valid_request(body, recent)


def bolt_request(body: bytes, content_type: str) -> AsyncBoltRequest:
    return AsyncBoltRequest(body=body.decode(), headers={"content-type": content_type})


def test_slash_command_body_parses_like_slacks():
    signer = SlackSigner(SECRET)
    body = signer.slash_command_body(
        text="https://github.com/acme/widgets add a signup test",
        user_id="U1",
        user_name="ada",
        channel_id="C1",
        response_url="http://127.0.0.1:1/response/x",
        trigger_id="123.456.abc",
    )
    fields = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    assert fields["command"] == "/backspace"
    assert fields["text"] == "https://github.com/acme/widgets add a signup test"
    assert fields["trigger_id"] == "123.456.abc"
    assert set(fields) >= {"token", "team_domain", "channel_name", "api_app_id"}
    req = bolt_request(body, "application/x-www-form-urlencoded")
    assert is_slash_command(req.body)
    assert req.body["command"] == "/backspace"
    ctx = req.context
    assert (ctx.team_id, ctx.user_id, ctx.channel_id) == ("T0001", "U1", "C1")
    assert ctx.response_url == "http://127.0.0.1:1/response/x"
    # Without a response_url the body points at a host that can never resolve.
    default = parse_qs(signer.slash_command_body().decode())["response_url"][0]
    assert ".invalid/" in default


def test_bolt_drops_a_slash_command_whose_text_contains_payload():
    """Bolt 1.30 quirk (parse_body): a form body containing "payload" anywhere is read as
    an interactivity payload, so such a slash command parses as {} and matches nothing."""
    body = SlackSigner(SECRET).slash_command_body(text="fix the payload parser")
    assert bolt_request(body, "application/x-www-form-urlencoded").body == {}


def test_block_action_body_parses_like_slacks():
    signer = SlackSigner(SECRET)
    body = signer.block_action_body(
        action_id="cancel_run",
        value="run-42",
        user_id="U2",
        channel_id="C9",
        message_ts="1700000000.000300",
        response_url="http://127.0.0.1:1/response/y",
    )
    assert body.startswith(b"payload=")
    req = bolt_request(body, "application/x-www-form-urlencoded")
    payload = req.body
    assert is_block_actions(payload)
    assert payload["type"] == "block_actions"
    assert payload["user"]["id"] == "U2" and payload["team"]["id"] == "T0001"
    assert payload["channel"]["id"] == "C9"
    assert payload["container"]["message_ts"] == payload["message"]["ts"] == "1700000000.000300"
    action = to_action(payload)
    assert action is not None
    assert (action["action_id"], action["value"], action["type"]) == (
        "cancel_run",
        "run-42",
        "button",
    )
    ctx = req.context
    assert (ctx.team_id, ctx.user_id, ctx.channel_id) == ("T0001", "U2", "C9")
    assert ctx.response_url == "http://127.0.0.1:1/response/y"


def test_event_and_url_verification_bodies_parse_like_slacks():
    signer = SlackSigner(SECRET)
    event = app_mention_event("<@U0BOT> https://github.com/acme/widgets fix", user="U3")
    req = bolt_request(signer.event_body(event, event_id="Ev42"), "application/json")
    assert is_event(req.body) and req.body["type"] == "event_callback"
    assert req.body["event_id"] == "Ev42" and req.body["event"]["type"] == "app_mention"
    ctx = req.context
    assert (ctx.team_id, ctx.user_id, ctx.channel_id) == ("T0001", "U3", "C1")
    verification = bolt_request(signer.url_verification_body("xyz"), "application/json")
    assert verification.body == {
        "token": "fake-verification-token",
        "challenge": "xyz",
        "type": "url_verification",
    }


# -- a real Bolt app behind Starlette --------------------------------------------
@pytest.fixture
async def bolt(
    slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
    for name in (
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "SLACK_APP_TOKEN",
        "SLACK_CLIENT_ID",
        "SLACK_CLIENT_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    seen: dict[str, Any] = {}
    app = AsyncApp(
        client=AsyncWebClient(token=TOKEN, base_url=slack.api_url), signing_secret=SECRET
    )

    @app.command("/backspace")
    async def command(
        ack: AsyncAck,
        command: dict[str, Any],
        client: AsyncWebClient,
        respond: AsyncRespond,
        context: AsyncBoltContext,
    ) -> None:
        await ack(response_type="ephemeral", text=f"Queued: {command['text']}")
        seen["command"] = (context.team_id, context.user_id, context.channel_id)
        await client.chat_postMessage(channel=command["channel_id"], text="root", blocks=[BUTTON])
        await respond(text="started")

    @app.action("cancel_run")
    async def cancel(
        ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
    ) -> None:
        await ack()
        seen["action"] = (
            context.user_id,
            context.channel_id,
            body["actions"][0]["value"],
            body["container"]["message_ts"],
        )
        await respond(text="Cancelled", replace_original=True)

    @app.event("app_mention")
    async def mention(event: dict[str, Any], client: AsyncWebClient, body: dict[str, Any]) -> None:
        seen.setdefault("events", []).append(body["event_id"])
        await client.reactions_add(channel=event["channel"], timestamp=event["ts"], name="eyes")

    handler = AsyncSlackRequestHandler(app)

    async def endpoint(request: Request) -> Response:
        return await handler.handle(request)

    web = Starlette(routes=[Route("/slack/events", endpoint, methods=["POST"])])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web), base_url="http://testserver"
    ) as http:
        yield http, seen


async def test_real_bolt_app_accepts_the_signed_requests(
    slack: FakeSlack, bolt: tuple[httpx.AsyncClient, dict[str, Any]]
):
    http, seen = bolt
    signer = SlackSigner(SECRET)
    url = "http://testserver/slack/events"

    body = signer.slash_command_body(
        text="https://github.com/acme/widgets add tests",
        response_url=slack.response_url("C1", "U1"),
    )
    res = await send(http, url, body, signer, content_type="application/x-www-form-urlencoded")
    assert res.status_code == 200
    assert res.json() == {
        "text": "Queued: https://github.com/acme/widgets add tests",
        "response_type": "ephemeral",
    }
    await slack.wait_until(lambda: len(slack.ephemerals) == 1)
    assert seen["command"] == ("T0001", "U1", "C1")
    assert len(slack.calls_to("auth.test")) == 1  # Bolt's lazy single-team authorization
    root = slack.messages("C1")[0]

    body = signer.block_action_body(
        value="run-1",
        message_ts=root["ts"],
        response_url=slack.response_url("C1", "U1", message_ts=root["ts"]),
    )
    res = await send(http, url, body, signer, content_type="application/x-www-form-urlencoded")
    assert res.status_code == 200
    await slack.wait_until(lambda: slack.messages("C1")[0]["text"] == "Cancelled")
    assert seen["action"] == ("U1", "C1", "run-1", root["ts"])

    event = app_mention_event("<@U0BOT> hi", ts="1700000999.000100")
    body = signer.event_body(event, event_id="Ev7")
    assert (await send(http, url, body, signer)).status_code == 200
    retry = await send(http, url, body, signer, content_type="application/json", retry_num=1)
    assert retry.status_code == 200
    await slack.wait_for("reactions.add", count=2)
    assert seen["events"] == ["Ev7", "Ev7"]  # Bolt does not dedupe retries by itself

    res = await send(http, url, signer.url_verification_body("chal-1"), signer)
    assert (res.status_code, res.json()) == (200, {"challenge": "chal-1"})

    stale = await send(http, url, body, signer, timestamp=int(time.time()) - 301)
    wrong = await send(http, url, body, SlackSigner("not-the-secret"))
    assert (stale.status_code, wrong.status_code) == (401, 401)
    assert [e["text"] for e in slack.ephemerals] == ["started"]
