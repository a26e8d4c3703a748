"""The hand-kept OpenAPI document names every route the server has, with its methods."""

from __future__ import annotations

from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
from starlette.routing import Mount, Route

from backspace.app import create_app
from backspace.config import load_settings
from backspace.http.openapi import document


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
