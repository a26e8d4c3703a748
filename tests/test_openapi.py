"""The OpenAPI document names every route the server has, with its methods; its Run is the store's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from starlette.routing import Mount, Route

from backspace.app import create_app
from backspace.config import load_settings
from backspace.http.openapi import RUN_LINKS, document
from backspace.orchestrator.events import RunStatus, Stage
from backspace.orchestrator.store import Run, RunError


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
