"""The API contract, checked with property-based tests against a live server.

schemathesis loads the OpenAPI document the server itself serves at /openapi.json and, for every
operation, Hypothesis generates requests (valid ones and invalid ones) that go to a real server:
real uvicorn, real SQLite, real git, real bubblewrap, the loopback fake model, REQUIRE_AUTH on
and the run rate limits kept (low). Every response must be no 5xx, a documented status with the
documented content type, body and headers, and a 401 without the key where the document says
a key is needed. Event streams must end, and every event in them must be a documented Event.

Valid requests really start runs: half of the generated /api/code bodies name the local
repository `local:widgets`, where the fake model's default scenario finishes at once, and half
of the generated run and pull request ids are real ones (a finished run that opened a pull
request), so the 200s are reached, not only the 404s and 422s.

schemathesis' pytest integration (`schemathesis.pytest.from_fixture`) reads `Node._nodeid`,
which pytest 9.2 no longer has, so this test drives schemathesis' Python API in a loop: one
Hypothesis test per operation and generation mode, each bounded by `max_examples`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from backspace.http.openapi import MAX_SEQ
from tests.conftest import ServerFactory, make_repo
from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.slack import FakeSlack, SlackSigner
from tests.helpers import base_env
from tests.scenarios import EDIT_SIGNUP, finish
from tests.server import Server
from tests.test_openapi import _nullable
from tests.tls import TLS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

KEY = "schemathesis-api-key-0123456789abcdef"
MAX_EXAMPLES = 50
"""Per operation and generation mode (Hypothesis' `max_examples`)."""
TIMEOUT = 30.0
"""Seconds a response (a whole event stream too) may take; a stream still open then is a failure."""


@dataclass
class Live:
    server: Server
    run_id: str
    pr_id: str


def wait_finished(server: Server, run_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {KEY}"}
    while time.monotonic() < deadline:
        run: dict[str, Any] = httpx.get(
            f"{server.url}/api/runs/{run_id}", headers=headers, verify=TLS
        ).json()
        if run["status"] not in ("queued", "running"):
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


@pytest.fixture
def live(repos: Path, fake_model: FakeAnthropic, server_factory: ServerFactory) -> Live:
    """A server with auth and low run limits, and one finished run that opened a pull request."""
    make_repo(repos, "widgets")
    fake_model.scenarios["noop"] = [finish()]
    fake_model.scenarios["seed-edit"] = [Reply([EDIT_SIGNUP]), finish()]
    fake_model.default = "noop"  # any other prompt: the agent finishes at once, no change
    env = base_env(
        repos,
        fake_model,
        REQUIRE_AUTH="true",
        API_KEY=KEY,
        BACKSPACE_RUNS_BURST="10",  # two operations start runs: /api/code and the follow-ups
        BACKSPACE_RUNS_PER_MINUTE="5",
    )
    server = server_factory(env)
    response = httpx.post(
        f"{server.url}/api/code",
        json={"repo_url": "local:widgets", "prompt": "seed-edit: validate the name"},
        headers={"Authorization": f"Bearer {KEY}", "Accept": "application/json"},
        verify=TLS,
    )
    assert response.status_code == 202, response.text
    run = wait_finished(server, response.json()["id"])
    assert run["status"] == "succeeded", run
    return Live(server, run["id"], run["pr_url"].rsplit("/", 1)[-1])


AnyCase = Case[Any]
Operation = APIOperation[Any, Any, Any, Any]


def operations_of(schema: Any) -> list[Operation]:
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    return operations


def negative_at(case: AnyCase, location: ParameterLocation) -> bool:
    return case.meta is not None and case.meta.is_negative_at(location)


def vary(live: Live) -> Any:
    """A `flatmap_case` hook: maybe use the real ids, the real repository, Accept: JSON."""

    def flatmap_case(ctx: Any, case: AnyCase) -> st.SearchStrategy[AnyCase]:
        def apply(flags: tuple[bool, bool]) -> AnyCase:
            real, json_wanted = flags
            # Never make a deliberately invalid part valid: the case would still count as invalid.
            params = case.path_parameters
            if real and params and not negative_at(case, ParameterLocation.PATH):
                if "run_id" in params:
                    params["run_id"] = live.run_id
                if "pr_id" in params:
                    params["pr_id"] = int(live.pr_id)
            if case.operation.path == "/api/code":
                body = case.body
                if (
                    real
                    and isinstance(body, dict)
                    and not negative_at(case, ParameterLocation.BODY)
                ):
                    body["repo_url"] = "local:widgets"
            starts_runs = case.operation.path in ("/api/code", "/api/runs/{run_id}/followups")
            if json_wanted and starts_runs:
                case.headers["Accept"] = "application/json"
            return case

        return st.tuples(st.booleans(), st.booleans()).map(apply)

    return flatmap_case


def event_stream_check(event_schema: dict[str, Any]) -> Any:
    """A check: an event stream ends (with `complete`), and each of its events is an Event
    (OpenAPI's `nullable` read as JSON Schema says it: a `network_blocked` command may be null)."""
    # Checked and compiled once: `jsonschema.validate` checks the schema against its
    # metaschema and builds a validator on every call (tens of ms of CPU, per event).
    validator_class = jsonschema.validators.validator_for(_nullable(event_schema))
    validator_class.check_schema(_nullable(event_schema))
    validator = validator_class(_nullable(event_schema))

    def event_streams_end_with_complete(
        ctx: CheckContext, response: Response, case: AnyCase
    ) -> bool | None:
        if not response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
            return None
        assert not response.stream_cut_short, (
            f"the event stream was still open after {TIMEOUT} s (it must end after `complete`)"
        )
        events: list[dict[str, Any]] = []
        for block in response.text.split("\n\n"):
            fields = dict(
                line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
            )
            if "data" in fields:
                event = json.loads(fields["data"])
                validator.validate(event)
                assert fields.get("id") == str(event["seq"]), f"id {fields.get('id')} for {event}"
                events.append(event)
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(set(seqs)), f"the seqs are not increasing: {seqs}"
        assert events and events[-1]["type"] == "complete", "the stream ended before `complete`"
        assert [e["type"] for e in events].count("complete") == 1
        return True

    return event_streams_end_with_complete


def load_schema(live: Live) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "auth": {"openapi": {"bearer": {"bearer": KEY}}},
            "max-stream-events": 10_000,  # read streams to their end (or TIMEOUT)
        }
    )
    schema = schemathesis.openapi.from_url(f"{live.server.url}/openapi.json", config=config)
    schema.hook("flatmap_case")(vary(live))
    return schema


def known_cases(live: Live) -> dict[str, list[dict[str, Any]]]:
    """Requests every run sends first (Hypothesis' explicit examples), by operation: the answers
    that random data reaches only by luck (a run that starts, both ways; a stream read whole and
    one that has nothing left), and the requests that once made the server fail."""
    auth = {"Authorization": f"Bearer {KEY}"}
    run = {"run_id": live.run_id}
    body = {"repo_url": "local:widgets", "prompt": "reject empty names"}
    pr_cases: list[dict[str, Any]] = [
        {"path_parameters": {"pr_id": pr_id}, "headers": auth}
        for pr_id in (live.pr_id, "\u00b2", "\u0661", 2**64)
    ]
    return {
        "POST /api/code": [
            {"body": body, "headers": auth},
            {"body": body, "headers": {**auth, "Accept": "application/json"}},
        ],
        "GET /api/runs": [{"query": {"limit": "\u00b2"}, "headers": auth}],
        "GET /api/runs/{run_id}/events": [
            {"path_parameters": run, "headers": auth},
            {"path_parameters": run, "query": {"after": 3}, "headers": auth},
            {"path_parameters": run, "query": {"after": MAX_SEQ}, "headers": auth},
            {"path_parameters": run, "query": {"after": MAX_SEQ + 1}, "headers": auth},
            {"path_parameters": run, "headers": {**auth, "Last-Event-ID": "\u00b2"}},
        ],
        "POST /api/runs/{run_id}/cancel": [{"path_parameters": run, "headers": auth}],
        "POST /api/runs/{run_id}/followups": [
            {"path_parameters": run, "body": {"prompt": "also strip it"}, "headers": auth},
            {
                "path_parameters": run,
                "body": {"prompt": "and trim it", "mode": "steer"},
                "headers": {**auth, "Accept": "application/json"},
            },
        ],
        "GET /api/prs/{pr_id}": pr_cases,
        "GET /prs/{pr_id}": pr_cases,
    }


def fuzz(
    operation: Operation,
    mode: GenerationMode,
    examples: list[dict[str, Any]],
    checks: list[Any],
    seen: Counter[tuple[str, int]],
    requests: Counter[str],
) -> None:
    """Send MAX_EXAMPLES generated requests (after `examples`) and check every response."""

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case: AnyCase) -> None:
        response = case.call(timeout=TIMEOUT)
        seen[(operation.label, response.status_code)] += 1
        requests[mode.value if case.meta else "known"] += 1
        case.validate_response(response, checks=checks)

    for values in examples:
        one = example(case=operation.Case(**values))(one)
    one()


def test_every_response_conforms_to_the_served_openapi_document(live: Live) -> None:
    schema = load_schema(live)
    document = schema.raw_schema
    assert document == httpx.get(f"{live.server.url}/openapi.json", verify=TLS).json()
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
        negative_data_rejection,
        ignored_auth,
        unsupported_method,
        event_stream_check(document["components"]["schemas"]["Event"]),
    ]
    known = known_cases(live)
    seen: Counter[tuple[str, int]] = Counter()
    requests: Counter[str] = Counter()
    failures: list[str] = []
    unnegatable: list[str] = []
    operations = operations_of(schema)
    assert set(known) <= {operation.label for operation in operations}
    started = time.monotonic()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            examples = known.get(operation.label, []) if mode == GenerationMode.POSITIVE else []
            try:
                fuzz(operation, mode, examples, checks, seen, requests)
            except Unsatisfiable:
                # Nothing in this operation can be made invalid (no parameters, no body).
                assert mode == GenerationMode.NEGATIVE, f"{operation.label}: no valid request"
                unnegatable.append(operation.label)
            except (Exception, FailureGroup) as exc:  # a failure, shrunk by Hypothesis; go on
                failures.append(f"{operation.label} ({mode.value}):\n{exc}")
    elapsed = time.monotonic() - started
    report = "\n".join(f"  {label} -> {status}: {n}" for (label, status), n in sorted(seen.items()))
    print(
        f"\n{len(operations)} operations, {sum(requests.values())} requests {dict(requests)} "
        f"in {elapsed:.1f} s; nothing to make invalid in {unnegatable}\n{report}"
    )
    assert not failures, "\n\n".join(failures)
    # The run reached the interesting answers, not only the rejections.
    for label, status in [
        ("POST /api/code", 200),
        ("POST /api/code", 202),
        ("POST /api/code", 422),
        ("GET /api/runs/{run_id}", 200),
        ("GET /api/runs/{run_id}", 404),
        ("GET /api/runs/{run_id}/events", 200),
        ("GET /api/runs/{run_id}/events", 204),
        ("POST /api/runs/{run_id}/cancel", 409),
        ("POST /api/runs/{run_id}/followups", 200),
        ("POST /api/runs/{run_id}/followups", 202),
        ("POST /api/runs/{run_id}/followups", 404),
        ("POST /api/runs/{run_id}/followups", 422),
        ("GET /api/prs/{pr_id}", 200),
        ("GET /prs/{pr_id}", 200),
        ("POST /slack/events", 404),
    ]:
        assert seen[(label, status)] > 0, f"no {label} answered {status}:\n{report}"
    # The requests that once failed (a 500, or a stream that never ended) answer exactly this.
    auth: dict[str, Any] = {"Authorization": f"Bearer {KEY}"}
    events = f"/api/runs/{live.run_id}/events"
    for path, headers, status in [
        (f"/api/prs/{live.pr_id}", auth, 200),
        ("/api/prs/\u00b2", auth, 404),  # "²".isdigit(), but int("²") raises
        ("/api/prs/\u0661", auth, 404),  # int("١") == 1: it was pull request 1
        (f"/prs/{2**64}", auth, 404),  # past SQLite's integers
        ("/api/runs?limit=\u00b2", auth, 422),
        (f"{events}?after={MAX_SEQ}", auth, 204),  # the run ended: nothing more will come
        (f"{events}?after={MAX_SEQ + 1}", auth, 422),
        (events, {**auth, "Last-Event-ID": "\u00b2".encode("latin-1")}, 422),
    ]:
        answer = httpx.get(f"{live.server.url}{path}", headers=headers, timeout=TIMEOUT, verify=TLS)
        assert answer.status_code == status, (path, answer.status_code, answer.text)


SLACK_SECRET = "slack-signing-secret-schemathesis"
SLACK_TOKEN = "xoxb-schemathesis-token"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(token=SLACK_TOKEN, team_id="T0001", bot_user_id="U0BOT") as fake:
        yield fake


def test_slack_events_conform_when_slack_is_configured(
    repos: Path, fake_model: FakeAnthropic, slack: FakeSlack, server_factory: ServerFactory
) -> None:
    """With Slack in HTTP mode, /slack/events answers unsigned requests 401 and signed ones as
    documented too (the other test sees its 404 when Slack is not configured)."""
    make_repo(repos, "widgets")
    server = server_factory(
        base_env(
            repos,
            fake_model,
            SLACK_BOT_TOKEN=SLACK_TOKEN,
            SLACK_SIGNING_SECRET=SLACK_SECRET,
            SLACK_API_URL=slack.api_url,
        )
    )
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json").include(
        path="/slack/events"
    )
    (operation,) = operations_of(schema)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]
    seen: Counter[tuple[str, int]] = Counter()
    requests: Counter[str] = Counter()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        fuzz(operation, mode, [], checks, seen, requests)
    assert set(seen) == {("POST /slack/events", 401)}, seen

    # Signed requests, as Slack sends them (and one it would not), checked the same way.
    signer = SlackSigner(SLACK_SECRET)
    form = "application/x-www-form-urlencoded"
    signed = [
        (signer.url_verification_body("c1"), "application/json", 200),
        (signer.slash_command_body(text="help"), form, 200),
        (b"{not json", "application/json", 400),
        (b'{"type": "weird"}', "application/json", 404),
        (b"x" * (600 * 1024), form, 413),
    ]
    for body, content_type, status in signed:
        headers = {"Content-Type": content_type, **signer.headers(body)}
        response = httpx.post(
            f"{server.url}/slack/events", content=body, headers=headers, verify=TLS
        )
        assert response.status_code == status, response.text
        case = operation.Case(body=body, headers=headers, media_type=content_type)
        case.validate_response(response, checks=checks)
        if status == 200 and content_type == "application/json":
            assert response.json() == {"challenge": "c1"}
