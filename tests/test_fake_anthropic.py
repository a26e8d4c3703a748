"""The scripted Anthropic fake must satisfy the real SDK, or end-to-end tests prove nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.fakes.anthropic import (
    CutStream,
    Fail,
    FakeAnthropic,
    Hang,
    MidStreamError,
    Reply,
    Text,
    ToolCall,
)
from tests.tls import TLS

MODEL = "claude-sonnet-4-6"
TOOL_INPUT: dict[str, Any] = {
    "command": "ls -la /work && echo 'done' | tee \"out.txt\"",
    "nested": {"a": [1, 2, 3], "unicode": "héllo ✓"},
}
BASH_TOOL: list[Any] = [{"type": "bash_20250124", "name": "bash"}]

if TYPE_CHECKING:
    # The SDK is imported by the tests that run (about 1.2 s of CPU): every pytest-xdist worker
    # imports this module to collect it, and most of them run none of its tests.
    import anthropic
    from anthropic import AsyncAnthropic
    from anthropic.types import MessageParam, UserMessageParam


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key="test-key") as f:
        yield f


def client_for(fake: FakeAnthropic, **kwargs: Any) -> AsyncAnthropic:
    from anthropic import AsyncAnthropic

    opts: dict[str, Any] = {"max_retries": 0}
    opts.update(kwargs)
    return AsyncAnthropic(api_key="test-key", base_url=fake.url, **opts)


def user(text: str) -> UserMessageParam:
    return {"role": "user", "content": text}


async def stream_final(
    client: AsyncAnthropic, messages: list[MessageParam]
) -> anthropic.types.Message:
    async with client.messages.stream(
        model=MODEL, max_tokens=1024, messages=messages, tools=BASH_TOOL
    ) as stream:
        return await stream.get_final_message()


async def test_stream_text_and_tool_call(fake: FakeAnthropic) -> None:
    fake.scenarios["fix the bug"] = [
        Reply([Text("I'll look at the repository first."), ToolCall("bash", TOOL_INPUT)])
    ]
    client = client_for(fake)
    events: list[str] = []
    async with client.messages.stream(
        model=MODEL,
        max_tokens=1024,
        system=[{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
        messages=[user("please fix the bug")],
        tools=BASH_TOOL,
    ) as stream:
        async for event in stream:
            events.append(event.type)
        message = await stream.get_final_message()
        assert stream.request_id is not None and stream.request_id.startswith("req_")

    assert message.stop_reason == "tool_use"
    assert message.model == MODEL
    text, tool = message.content
    assert text.type == "text" and text.text == "I'll look at the repository first."
    assert tool.type == "tool_use"
    assert tool.name == "bash" and tool.input == TOOL_INPUT
    assert tool.id.startswith("toolu_")
    assert message.usage.input_tokens == 100
    assert message.usage.output_tokens == 20
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0
    # several input_json fragments were streamed and the helper events were produced
    assert events.count("input_json") > 3
    assert "text" in events and "content_block_stop" in events and "message_stop" in events


async def test_non_streaming_with_strict_validation(fake: FakeAnthropic) -> None:
    fake.scenarios["strict"] = [
        Reply(
            [Text("hello"), ToolCall("bash", {"command": "pwd"}, id="toolu_fixed")],
            usage={"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 5},
        )
    ]
    for strict in (False, True):
        client = client_for(fake, _strict_response_validation=strict)
        message = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=[user("strict please")], tools=BASH_TOOL
        )
        assert message.stop_reason == "tool_use"
        assert [b.type for b in message.content] == ["text", "tool_use"]
        tool = message.content[1]
        assert tool.type == "tool_use" and tool.id == "toolu_fixed"
        assert tool.input == {"command": "pwd"}
        assert message.usage.input_tokens == 7
        assert message.usage.cache_read_input_tokens == 5
        assert message.usage.cache_creation_input_tokens == 0


async def test_turn_progression_and_no_more_turns(fake: FakeAnthropic) -> None:
    fake.scenarios["two-step"] = [
        Reply([ToolCall("bash", {"command": "ls"}, id="toolu_1")]),
        Reply([Text("all done")]),
    ]
    client = client_for(fake)
    history: list[MessageParam] = [user("a two-step task")]
    first = await stream_final(client, history)
    assert first.stop_reason == "tool_use"
    history += [
        first.to_param(),
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a b"}],
        },
    ]
    second = await stream_final(client, history)
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text == "all done"

    history += [second.to_param(), user("and now?")]
    third = await stream_final(client, history)
    assert third.stop_reason == "end_turn"
    assert third.content[0].type == "text" and "no more turns" in third.content[0].text

    bodies = fake.requests_for("two-step")
    assert len(bodies) == 3
    assert bodies[1]["messages"][-1]["content"][0]["tool_use_id"] == "toolu_1"
    assert bodies[1]["messages"][1]["content"][0]["input"] == {"command": "ls"}


async def test_scenario_selection_default_and_responder() -> None:
    import anthropic

    seen: list[dict[str, Any]] = []

    def responder(body: dict[str, Any]) -> Reply:
        seen.append(body)
        return Reply([Text("from responder")])

    scenarios = {"alpha": [Reply([Text("A")])], "beta": [Reply([Text("B")])]}
    with FakeAnthropic(scenarios, responder=responder) as fake:
        client = client_for(fake)
        # list-of-blocks content: text blocks are concatenated for matching
        block_msg: UserMessageParam = {
            "role": "user",
            "content": [{"type": "text", "text": "run beta now"}],
        }
        b = await client.messages.create(model=MODEL, max_tokens=64, messages=[block_msg])
        a = await client.messages.create(model=MODEL, max_tokens=64, messages=[user("alpha!")])
        r = await client.messages.create(model=MODEL, max_tokens=64, messages=[user("gamma")])
        assert [m.content[0].text for m in (a, b, r) if m.content[0].type == "text"] == [
            "A",
            "B",
            "from responder",
        ]
        assert len(seen) == 1 and seen[0]["messages"][0]["content"] == "gamma"

    with FakeAnthropic(scenarios, default="beta") as fake:
        m = await client_for(fake).messages.create(
            model=MODEL, max_tokens=64, messages=[user("unmatched")]
        )
        assert m.content[0].type == "text" and m.content[0].text == "B"

    with FakeAnthropic(scenarios) as fake:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client_for(fake).messages.create(
                model=MODEL, max_tokens=64, messages=[user("unmatched")]
            )
        assert info.value.type == "invalid_request_error"
        assert "no scenario matches" in str(info.value.api_message)


async def test_concurrent_scenarios(fake: FakeAnthropic) -> None:
    n = 30
    for i in range(n):
        fake.scenarios[f"job-{i:03d}"] = [
            Reply([Text(f"answer {i} " * 5), ToolCall("bash", {"i": i})], delay=0.05)
        ]
    client = client_for(fake)
    started = time.monotonic()
    results = await asyncio.gather(
        *(stream_final(client, [user(f"please do job-{i:03d}")]) for i in range(n))
    )
    assert time.monotonic() - started < 2.0  # served in parallel, not one by one
    for i, message in enumerate(results):
        assert message.content[0].type == "text"
        assert message.content[0].text == f"answer {i} " * 5
        assert message.content[1].type == "tool_use" and message.content[1].input == {"i": i}


async def test_http_errors_map_to_sdk_classes(fake: FakeAnthropic) -> None:
    import anthropic

    fake.scenarios["overloaded"] = [Fail(529)]
    fake.scenarios["ratelimited"] = [Fail(429, retry_after_ms=250)]
    client = client_for(fake)
    with pytest.raises(anthropic.OverloadedError) as over:
        await stream_final(client, [user("overloaded")])
    assert over.value.type == "overloaded_error"
    assert over.value.request_id is not None and over.value.request_id.startswith("req_")

    with pytest.raises(anthropic.RateLimitError) as rate:
        await client.messages.create(model=MODEL, max_tokens=64, messages=[user("ratelimited")])
    assert rate.value.status_code == 429
    assert rate.value.type == "rate_limit_error"
    assert rate.value.response.headers["retry-after-ms"] == "250"
    body = rate.value.body
    assert isinstance(body, dict) and body["type"] == "error"


async def test_fail_times_then_success(fake: FakeAnthropic) -> None:
    import anthropic

    fake.scenarios["flaky"] = [[Fail(500, times=2), Reply([Text("finally")])]]
    client = client_for(fake)
    for _ in range(2):
        with pytest.raises(anthropic.InternalServerError):
            await stream_final(client, [user("flaky")])
    message = await stream_final(client, [user("flaky")])
    assert message.content[0].type == "text" and message.content[0].text == "finally"
    assert fake.attempts("flaky", 0) == 3


async def test_sdk_retries_through_fail(fake: FakeAnthropic) -> None:
    fake.scenarios["retry me"] = [[Fail(529, times=2), Reply([Text("ok")])]]
    client = client_for(fake, max_retries=2)
    started = time.monotonic()
    message = await stream_final(client, [user("retry me")])
    assert time.monotonic() - started < 1.0  # retry-after-ms: 1 overrides the SDK backoff
    assert message.content[0].type == "text" and message.content[0].text == "ok"
    retry_counts = [r["headers"].get("x-stainless-retry-count") for r in fake.requests]
    assert retry_counts == ["0", "1", "2"]


async def test_mid_stream_error(fake: FakeAnthropic) -> None:
    import anthropic

    fake.scenarios["midstream"] = [[MidStreamError(), Reply([Text("recovered")])]]
    client = client_for(fake)
    with pytest.raises(anthropic.APIStatusError) as info:
        await stream_final(client, [user("midstream")])
    assert info.value.type == "overloaded_error"
    assert info.value.status_code == 200
    message = await stream_final(client, [user("midstream")])
    assert message.content[0].type == "text" and message.content[0].text == "recovered"


async def test_cut_stream_looks_like_success_without_stop_reason(fake: FakeAnthropic) -> None:
    fake.scenarios["cut"] = [[CutStream(), Reply([Text("whole")])]]
    client = client_for(fake)
    message = await stream_final(client, [user("cut")])
    assert message.stop_reason is None
    assert message.content[0].type == "text" and message.content[0].text
    again = await stream_final(client, [user("cut")])
    assert again.stop_reason == "end_turn"


async def test_hang_triggers_client_timeout_and_stop_does_not_block() -> None:
    import anthropic

    fake = FakeAnthropic({"hang": [Hang(30)]}).start()
    try:
        client = client_for(fake, timeout=0.5)  # a float: the SDK rejects httpx.Timeout
        with pytest.raises(anthropic.APITimeoutError):
            await stream_final(client, [user("hang")])
    finally:
        started = time.monotonic()
        fake.stop()
        assert time.monotonic() - started < 2.0


async def test_auth_recording_and_other_endpoints(fake: FakeAnthropic) -> None:
    import anthropic
    from anthropic import AsyncAnthropic

    fake.scenarios["rec"] = [Reply([Text("hi")])]
    bad = AsyncAnthropic(api_key="wrong-key", base_url=fake.url, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        await bad.messages.create(model=MODEL, max_tokens=64, messages=[user("rec")])
    assert info.value.type == "authentication_error"

    client = client_for(fake)
    await client.messages.create(
        model=MODEL, max_tokens=64, messages=[user("rec")], tools=BASH_TOOL
    )
    counted = await client.messages.count_tokens(model=MODEL, messages=[user("rec")])
    assert counted.input_tokens > 0

    # x-api-key auth (what Claude Code sends) with a ?beta=true query is accepted too
    async with httpx.AsyncClient(verify=TLS, base_url=fake.url) as raw:
        ok = await raw.post(
            "/v1/messages?beta=true",
            headers={"x-api-key": "test-key", "anthropic-version": "2023-06-01"},
            json={"model": MODEL, "max_tokens": 8, "messages": [user("rec")]},
        )
        assert ok.status_code == 200 and ok.json()["content"][0]["text"] == "hi"
        missing = await raw.post("/v1/nope", headers={"x-api-key": "test-key"}, json={})
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "not_found_error"

    paths = [r["path"] for r in fake.requests]
    assert paths == [
        "/v1/messages",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/messages",
        "/v1/nope",
    ]
    sdk_request = fake.requests[1]
    assert sdk_request["headers"]["authorization"] == "Bearer test-key"
    assert "anthropic-version" in sdk_request["headers"]
    assert sdk_request["body"]["model"] == MODEL
    assert sdk_request["body"]["tools"] == BASH_TOOL
    assert len(fake.requests_for("rec")) == 3
