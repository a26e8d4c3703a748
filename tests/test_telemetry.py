"""Telemetry: one trace per run (in memory, and over OTLP/HTTP from a real server), one span per
SSE stream, Prometheus metrics that move with runs, and no secret in any of it."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from backspace.app import build_service
from backspace.config import load_settings
from backspace.orchestrator.run import RunRequest
from backspace.runtime import watch_children_with_pidfds
from backspace.telemetry import Metrics, Telemetry, Tracing
from tests.conftest import make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply, ToolCall
from tests.helpers import base_env, shared_rig
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import free_port
from tests.tls import TLS

MODEL_KEY = "sk-ant-api03-test-key-0123456789"  # base_env's
GITHUB_TOKEN = "ghp_telemetrySecret0123456789abcdefABCDEF"
API_KEY = "telemetry-api-key-0123456789"
SECRETS = (MODEL_KEY, GITHUB_TOKEN, API_KEY)
STAGES = {"queue.wait", "sandbox.create", "git.clone", "setup", "agent", "git.push", "pr.create"}


def steps(commands: int = 1) -> list[Reply]:
    """`commands` bash calls, an edit, finish: a run that opens a PR."""
    bash = [Reply([ToolCall("bash", {"command": f"echo step-{i}"})]) for i in range(commands)]
    return [*bash, Reply([EDIT_SIGNUP]), finish()]


# --- in memory: the spans of a run --------------------------------------------------------------
async def test_one_trace_per_run_with_its_stages_and_the_sdks_model_spans_inside(
    tmp_path: Path,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    repos = tmp_path / "repos"
    make_repo(repos, "widgets")
    keys = [f"trace-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with FakeAnthropic(scenarios={key: steps() for key in keys}) as fake:
        settings = load_settings(
            ANTHROPIC_API_KEY=MODEL_KEY,
            ANTHROPIC_BASE_URL=fake.url,
            GITHUB_TOKEN=GITHUB_TOKEN,
            BACKSPACE_LOCAL_REPOS=str(repos),
            BACKSPACE_DB=str(tmp_path / "b.db"),
            BACKSPACE_SANDBOX="local",
        )
        metrics = Metrics(settings.model)
        service = build_service(settings, Telemetry(Tracing(provider), metrics))
        service.sandboxes.check()
        watch_children_with_pidfds()
        await service.runner.start()
        ref = service.parse_repo("local:widgets")
        run_ids = []
        try:
            for key in keys:
                run = await service.runner.submit(
                    RunRequest(repo_url="local:widgets", repo=ref, prompt=f"fix it {key}")
                )
                run_ids.append(run.id)
                async for event in service.hub.subscribe(run.id):
                    if event.type == "complete":
                        assert event.data["status"] == "succeeded", event.data
        finally:
            await service.aclose()
    spans: list[Any] = list(exporter.get_finished_spans())
    roots = [s for s in spans if s.name == "run"]
    assert sorted(str(s.attributes["backspace.run.id"]) for s in roots) == sorted(run_ids)
    assert len({s.context.trace_id for s in roots}) == 2, "one trace per run"
    for root in roots:
        assert root.parent is None
        assert root.attributes["backspace.repo"] == "widgets"
        assert root.attributes["backspace.run.source"] == "api"
        assert root.attributes["backspace.attempt"] == 1
        mine = [s for s in spans if s.context.trace_id == root.context.trace_id]
        names = {s.name for s in mine}
        assert names >= STAGES, STAGES - names
        assert {"agent.turn", "execute_tool bash", "execute_tool finish"} <= names
        by_id = {s.context.span_id: s for s in mine}
        model_calls = [s for s in mine if s.attributes.get("gen_ai.provider.name") == "anthropic"]
        assert len(model_calls) == 3  # three turns: bash, edit, finish
        for call in model_calls:
            assert call.attributes["gen_ai.operation.name"] == "chat"
            assert call.attributes["gen_ai.usage.output_tokens"] == 20
            turn = by_id[call.parent.span_id]
            assert turn.name == "agent.turn"
            assert by_id[turn.parent.span_id].name == "agent"
        tool = next(s for s in mine if s.name == "execute_tool bash")
        assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
        assert tool.attributes["gen_ai.tool.name"] == "bash"
        wait = next(s for s in mine if s.name == "queue.wait")
        assert wait.start_time == root.start_time  # from the moment the run was queued
    _no_secret(json.dumps([_span_dict(s) for s in spans], default=str))
    # The same runs moved the metrics (the one observer).
    registry = metrics.registry
    assert registry.get_sample_value("backspace_runs_started_total", {"source": "api"}) == 2
    finished = {"status": "succeeded", "source": "api"}
    assert registry.get_sample_value("backspace_runs_finished_total", finished) == 2
    tokens = {"model": settings.model, "type": "output"}
    assert registry.get_sample_value("backspace_model_tokens_total", tokens) == 2 * 3 * 20
    assert registry.get_sample_value("backspace_sandbox_create_seconds_count", {"backend": "local"})


def _span_dict(span: Any) -> dict[str, Any]:
    return {
        "name": span.name,
        "attributes": dict(span.attributes or {}),
        "events": [dict(e.attributes or {}) for e in span.events],
        "resource": dict(span.resource.attributes),
    }


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# --- a loopback OTLP/HTTP collector and a real server -------------------------------------------
class Collector(ThreadingHTTPServer):
    """POST /v1/traces: decodes ExportTraceServiceRequest (gzip or not), keeps every span."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CollectorHandler)
        self.spans: list[dict[str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def take(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.spans)


class _CollectorHandler(BaseHTTPRequestHandler):
    server: Collector

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    found.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "links": [link.trace_id.hex() for link in span.links],
                            "resource": resource,
                            "scope": scope.scope.name,
                        }
                    )
        with self.server.lock:
            self.server.spans.extend(found)
            self.server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def traced(collector: Collector) -> Iterator[Any]:
    """A real `backspace serve`: OTLP to the collector, auth on, /metrics on the API's port."""

    def env(repos: Path, model: FakeAnthropic) -> dict[str, str]:
        return base_env(
            repos,
            model,
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
            OTEL_SERVICE_NAME="backspace-under-test",
            OTEL_EXPORTER_OTLP_HEADERS="x-tenant=team-a",
            OTEL_BSP_SCHEDULE_DELAY="50",
            GITHUB_TOKEN=GITHUB_TOKEN,
            REQUIRE_AUTH="true",
            API_KEY=API_KEY,
        )

    with shared_rig("telemetry", env) as rig:
        yield rig


AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def _post_run(rig: Any, key: str, commands: int = 1) -> str:
    rig.model.scenarios[key] = steps(commands)
    make_repo(rig.repos, key)
    async with httpx.AsyncClient(verify=TLS) as client:
        answer = await client.post(
            f"{rig.server.url}/api/code",
            json={"repo_url": f"local:{key}", "prompt": f"please {key}"},
            headers={**AUTH, "Accept": "application/json"},
        )
    assert answer.status_code == 202, answer.text
    run_id: str = answer.json()["id"]
    return run_id


async def _wait_run(rig: Any, run_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(verify=TLS, headers=AUTH) as client:
        for _ in range(600):
            run: dict[str, Any] = (await client.get(f"{rig.server.url}/api/runs/{run_id}")).json()
            if run["status"] not in ("queued", "running"):
                return run
            await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


async def _spans_of_run(collector: Collector, run_id: str, names: set[str]) -> list[dict[str, Any]]:
    """The spans of the run's trace, once those named have arrived."""
    for _ in range(200):
        spans = collector.take()
        root = next((s for s in spans if s["attributes"].get("backspace.run.id") == run_id), None)
        if root is not None:
            mine = [s for s in spans if s["trace_id"] == root["trace_id"]]
            if names <= {s["name"] for s in mine}:
                return mine
        await asyncio.sleep(0.05)
    raise AssertionError(f"the collector never got the spans {names} of run {run_id}")


async def test_a_real_server_exports_the_run_trace_over_otlp_linked_to_its_request(
    traced: Any, collector: Collector
) -> None:
    run_id = await _post_run(traced, f"otlp-{uuid.uuid4().hex[:8]}")
    assert (await _wait_run(traced, run_id))["status"] == "succeeded"
    mine = await _spans_of_run(collector, run_id, STAGES | {"run", "agent.turn"})
    root = next(s for s in mine if s["name"] == "run")
    assert root["parent"] == ""
    assert root["resource"]["service.name"] == "backspace-under-test"  # OTEL_SERVICE_NAME
    assert any(h.get("x-tenant") == "team-a" for h in collector.headers_seen)  # ..._HEADERS
    model_calls = [s for s in mine if s["attributes"].get("gen_ai.provider.name") == "anthropic"]
    assert len(model_calls) == 3
    # Linked, not parented, to the POST that submitted it: that request's trace is another.
    posts = [
        s
        for s in collector.take()
        if s["attributes"].get("http.method", s["attributes"].get("http.request.method")) == "POST"
        and s["trace_id"] in root["links"]
    ]
    assert len(posts) == 1 and posts[0]["trace_id"] != root["trace_id"]
    _no_secret(json.dumps(collector.take()))


async def test_an_sse_stream_of_many_events_is_one_server_span(
    traced: Any, collector: Collector
) -> None:
    run_id = await _post_run(traced, f"sse-{uuid.uuid4().hex[:8]}", commands=12)
    chunks = 0
    body = b""
    async with (
        httpx.AsyncClient(verify=TLS, timeout=30) as client,
        client.stream(
            "GET", f"{traced.server.url}/api/runs/{run_id}/events", headers=AUTH
        ) as stream,
    ):
        async for chunk in stream.aiter_bytes():
            chunks += 1
            body += chunk
    events = body.count(b"\ndata: ")
    assert events > 40 and b'"type":"complete"' in body
    path = f"/api/runs/{run_id}/events"
    for _ in range(100):
        streams = [
            s
            for s in collector.take()
            if path in str(s["attributes"].get("url.path", s["attributes"].get("http.target")))
        ]
        if streams:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # anything more would have come in the same export
    streams = [
        s
        for s in collector.take()
        if path in str(s["attributes"].get("url.path", s["attributes"].get("http.target", "")))
        or ("http send" in s["name"] or "http receive" in s["name"])
    ]
    assert len(streams) == 1, [s["name"] for s in streams]


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_need_the_api_key_parse_and_move_with_runs(traced: Any) -> None:
    url = f"{traced.server.url}/metrics"
    async with httpx.AsyncClient(verify=TLS) as client:
        refused = await client.get(url)
        assert refused.status_code == 401
        assert (await client.get(url, headers={"Authorization": "Bearer wrong"})).status_code == 401
        before = _metrics((await client.get(url, headers=AUTH)).text)
        run_id = await _post_run(traced, f"metrics-{uuid.uuid4().hex[:8]}")
        assert (await _wait_run(traced, run_id))["status"] == "succeeded"
        answer = await client.get(url, headers=AUTH)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    after = _metrics(answer.text)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("backspace_runs_started_total", source="api") == 1
    assert moved("backspace_runs_finished_total", status="succeeded", source="api") == 1
    assert moved("backspace_events_appended_total", type="complete") == 1
    assert moved_any(before, after, "backspace_model_tokens_total", type="output") == 3 * 20
    assert moved("backspace_run_duration_seconds_count", status="succeeded") == 1
    assert moved("backspace_queue_wait_seconds_count") == 1
    assert moved("backspace_stage_duration_seconds_count", stage="agent") == 1
    assert ("backspace_runs", (("status", "queued"),)) in after
    assert ("backspace_sse_viewers", ()) in after
    _no_secret(answer.text)
    assert run_id not in answer.text  # no run id as a label


def moved_any(
    before: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    after: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    name: str,
    **labels: str,
) -> float:
    """The increase of every series of `name` with these labels, whatever its other labels."""
    total = 0.0
    for key, value in after.items():
        if key[0] == name and set(labels.items()) <= set(key[1]):
            total += value - before.get(key, 0)
    return total


# --- a separate metrics port --------------------------------------------------------------------
def test_metrics_are_served_on_their_own_port_when_set(tmp_path: Path) -> None:
    port = free_port()

    def env(repos: Path, model: FakeAnthropic) -> dict[str, str]:
        return base_env(
            repos, model, BACKSPACE_METRICS_PORT=str(port), REQUIRE_AUTH="true", API_KEY=API_KEY
        )

    with shared_rig("metrics-port", env) as rig:
        main = httpx.get(f"{rig.server.url}/metrics", headers=AUTH, verify=TLS)
        assert main.status_code == 404  # not on the API's port: the load balancer never shows it
        alone = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(alone, verify=TLS).status_code == 401
        answer = httpx.get(alone, headers=AUTH, verify=TLS)
        assert answer.status_code == 200
        names = {f.name for f in text_string_to_metric_families(answer.text)}
        assert {"backspace_runs_started", "backspace_events_appended", "backspace_runs"} <= names
        run = asyncio.run(_post_and_wait(rig))
        assert run["status"] == "succeeded"
        after = _metrics(httpx.get(alone, headers=AUTH, verify=TLS).text)
        assert (
            after[("backspace_runs_finished_total", (("source", "api"), ("status", "succeeded")))]
            == 1
        )


async def _post_and_wait(rig: Any) -> dict[str, Any]:
    run_id = await _post_run(rig, f"port-{uuid.uuid4().hex[:8]}")
    return await _wait_run(rig, run_id)


def test_tracing_is_off_without_an_endpoint_and_imports_no_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from backspace.telemetry import Tracing;"
        "t = Tracing.from_environment({});"
        "assert t.provider is None and not t.on;"
        "print('opentelemetry.sdk.trace' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
    assert Tracing.from_environment({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x"}).on
    assert not Tracing.from_environment(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}
    ).on
