"""The OpenAPI document names every route the server has, with its methods; its Run is the store's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from starlette.routing import Mount, Route

from backspace.app import create_app
from backspace.config import load_settings
from backspace.http.openapi import RUN_LINKS, document
from backspace.http.schemas import FollowUpRequest
from backspace.orchestrator.events import RunStatus, Stage
from backspace.orchestrator.store import PullRequestRecord, Run, RunError


def test_every_route_is_in_the_document(tmp_path: Path) -> None:
    app = create_app(load_settings(BACKSPACE_DB=str(tmp_path / "x.db")))
    paths = document("http://127.0.0.1:8000")["paths"]
    for route in app.routes:
        if isinstance(route, Mount):
            assert route.path == "/static", f"an unexpected mount {route.path}"
            continue
        assert isinstance(route, Route)
        assert route.path in paths, f"{route.path} is missing from the OpenAPI document"
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in paths[route.path], f"{method} {route.path} is missing"
    routed = {r.path for r in app.routes if isinstance(r, Route)}
    assert set(paths) == routed, "the document describes routes that do not exist"


def test_the_document_is_valid_openapi_3_0_shapes() -> None:
    doc = document("http://example")
    assert doc["openapi"].startswith("3.0")
    schemas = doc["components"]["schemas"]
    # Each schema is itself a valid JSON Schema (OpenAPI's `nullable` aside).
    for schema in schemas.values():
        jsonschema.Draft7Validator.check_schema(schema)
    run = {
        "id": "r",
        "status": "queued",
        "stage": "queued",
        "repo_url": "x",
        "prompt": "p",
        "created_at": "t",
    }
    jsonschema.validate(run, schemas["Run"])


def test_the_run_schema_is_the_run_the_api_shows() -> None:
    """The Run component is generated from the store's `Run`: each field shown, and the links."""
    run = Run(
        id="r",
        status=RunStatus.QUEUED,
        stage=Stage.QUEUED,
        repo_url="x",
        prompt="p",
        created_at="t",
    )
    schema = document("http://example")["components"]["schemas"]["Run"]
    assert list(schema["properties"]) == [*run.to_json(), *RUN_LINKS]
    assert schema["properties"]["status"]["enum"] == [str(s) for s in RunStatus]
    failed = replace(run, error=RunError(code="c", message="m"), finished_at="t2")
    for shown in (run, failed):
        jsonschema.validate({**shown.to_json(), **dict.fromkeys(RUN_LINKS, "u")}, _nullable(schema))


def _nullable(schema: Any) -> Any:
    """OpenAPI 3.0's `nullable` as JSON Schema says it, for `jsonschema`."""
    if isinstance(schema, list):
        return [_nullable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: _nullable(value) for key, value in schema.items() if key != "nullable"}
    return {"anyOf": [converted, {"type": "null"}]} if schema.get("nullable") else converted


# --- issue 16: follow-ups ------------------------------------------------------------------------
def test_the_followups_path_is_documented_like_api_code() -> None:
    doc = document("http://example")
    operation = doc["paths"]["/api/runs/{run_id}/followups"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/FollowUpRequest"}
    code = doc["paths"]["/api/code"]["post"]["responses"]
    assert set(operation["responses"]) == {*code, "404"}
    assert operation["responses"]["200"] == code["200"]  # the event stream
    assert operation["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/FollowUp"
    }


def test_the_follow_up_request_is_the_one_the_server_validates() -> None:
    """FollowUpRequest is generated from the pydantic model: what it takes, it documents."""
    schema = _nullable(document("http://example")["components"]["schemas"]["FollowUpRequest"])
    assert schema["required"] == ["prompt"] and schema["additionalProperties"] is False
    assert schema["properties"]["mode"]["enum"] == ["queue", "steer"]
    for good in ({"prompt": "x"}, {"prompt": "x", "mode": "steer", "co_author": None}):
        FollowUpRequest.model_validate(good)
        jsonschema.validate(good, schema)
    for bad in ({}, {"prompt": "x", "mode": "later"}, {"prompt": "x", "repo_url": "y"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_a_run_with_its_family_and_a_follow_up_answer_are_documented() -> None:
    schemas = document("http://example")["components"]["schemas"]
    run = Run(
        id="r2",
        status=RunStatus.RUNNING,
        stage=Stage.AGENT,
        repo_url="x",
        prompt="p",
        created_at="t",
        family_id="r1",
        parent_id="r1",
    )
    shown = {**run.to_json(), **dict.fromkeys(RUN_LINKS, "u")}
    family = {
        "id": "r1",
        "parent_id": "r1",
        "children": [],
        "runs": [
            {
                "id": i,
                "status": "succeeded",
                "prompt": "p",
                "source": "api",
                "created_at": "t",
                "pr_url": None,
            }
            for i in ("r1", "r2")
        ],
        "branch": "backspace/x",
        "pr_url": "http://example/prs/1",
    }
    resolved = _resolve(schemas)
    jsonschema.validate({**shown, "family": family}, resolved["RunWithFamily"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(shown, resolved["RunWithFamily"])  # no family
    answer = {**shown, "run_id": "r2", "steered": True, "message": "delivered"}
    jsonschema.validate(answer, resolved["FollowUp"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**shown, "run_id": "r2"}, resolved["FollowUp"])
    assert "followups_url" in RUN_LINKS


def test_the_follow_up_events_are_described() -> None:
    events = _resolve(document("http://example")["components"]["schemas"])["Event"]
    envelope = {"run_id": "r", "request_id": "r", "seq": 3, "timestamp": "t"}
    steered = {
        **envelope,
        "type": "followup_received",
        "prompt": "and strip it",
        "requester": None,
        "source": "api",
        "mode": "steer",
    }
    jsonschema.validate(steered, events)
    jsonschema.validate({**steered, "mode": "queue", "followup_run_id": "r3"}, events)
    updated = {
        **envelope,
        "type": "pr_updated",
        "pr_url": "http://example/prs/1",
        "pr_number": 1,
        "branch": "backspace/x",
        "base_sha": "a" * 40,
        "commit": "b" * 40,
        "title": "t",
        "files_changed": 1,
        "additions": 1,
        "deletions": 0,
        "draft": False,
    }
    jsonschema.validate(updated, events)
    for bad in (
        {**steered, "mode": "later"},
        {k: v for k, v in steered.items() if k != "prompt"},
        {k: v for k, v in updated.items() if k != "commit"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, events)


def test_the_pull_request_json_has_its_comments() -> None:
    doc = document("http://example")
    ok = doc["paths"]["/api/prs/{pr_id}"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PullRequest"
    }
    schema = _resolve(doc["components"]["schemas"])["PullRequest"]
    record = PullRequestRecord(
        id=1,
        run_id="r",
        repo="local:w",
        title="t",
        body="b",
        branch="backspace/x",
        base="main",
        base_sha="a",
        head_sha="b",
        files=[{"path": "app.py", "status": "modified", "additions": 1, "deletions": 0}],
        additions=1,
        deletions=0,
        diff="d",
        created_at="t",
    )
    comment = {"id": 1, "body": "pushed", "created_at": "t"}
    jsonschema.validate({**record.__dict__, "comments": [comment]}, schema)
    assert list(schema["properties"]) == [*record.__dict__, "comments"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(record.__dict__, schema)  # no comments


def _resolve(schemas: dict[str, Any]) -> dict[str, Any]:
    """Each component with its `#/components/schemas/X` references inlined, as JSON Schema."""

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return inline(schemas[node["$ref"].rsplit("/", 1)[1]])
        return {key: inline(value) for key, value in node.items()}

    return {name: _nullable(inline(schema)) for name, schema in schemas.items()}
