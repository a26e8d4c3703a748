"""Validate JSON bodies against GitHub's own OpenAPI description.

Why: a fake GitHub is only useful if it answers like GitHub; a hand-written fake
drifts silently. The npm package ``@octokit/openapi`` (pinned in
``package.json``, installed by ``scripts/bootstrap``) carries
``generated/api.github.com.json``; this module finds the operation for a
(method, concrete path), takes the schema GitHub documents for the status code,
and validates a body with ``jsonschema``. OpenAPI 3.0 specifics are converted
on load: ``nullable: true`` becomes a JSON-schema ``null`` alternative and
``#/components/...`` references resolve through a ``referencing`` registry.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import jsonschema  # type: ignore[import-untyped]
from referencing import Registry
from referencing.jsonschema import DRAFT4

__all__ = [
    "SPEC_PATH",
    "OperationNotFound",
    "find_operation",
    "load_spec",
    "request_errors",
    "response_schema",
    "spec_available",
    "validate_response",
    "validation_errors",
    "webhook_errors",
]

SPEC_PATH = (
    Path(__file__).resolve().parents[2]
    / "node_modules"
    / "@octokit"
    / "openapi"
    / "generated"
    / "api.github.com.json"
)
_BASE_URI = "urn:github-openapi"
_PREFIXES = ("/api/v3",)
_SLASHED_PARAMS = frozenset({"{branch}", "{ref}", "{path}", "{basehead}"})
"""Parameters whose values may contain slashes (``heads/feature/x``, ``dir/file.py``)."""


class OperationNotFound(LookupError):
    """No documented operation (or no documented response) for a request."""


def spec_available() -> bool:
    return SPEC_PATH.is_file()


@functools.cache
def load_spec() -> dict[str, Any]:
    """The raw OpenAPI document (loaded once per process)."""
    if not spec_available():
        raise FileNotFoundError(
            f"{SPEC_PATH} is missing: run `npm ci` (or scripts/bootstrap) at the repository root"
        )
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return spec


def _convert(node: Any) -> Any:
    """OpenAPI 3.0 schema → JSON schema: ``nullable`` and absolute ``$ref``s."""
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _convert(value) for key, value in node.items()}
    ref = out.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        out["$ref"] = _BASE_URI + ref
    if out.pop("nullable", False) is True:
        if "$ref" in out:  # siblings of $ref are ignored in draft 4: wrap instead
            return {"anyOf": [{"$ref": out.pop("$ref")}, {"type": "null"}], **out}
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        elif kind is None:
            return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _registry() -> Registry[Any]:
    document = {"components": {"schemas": _convert(load_spec()["components"]["schemas"])}}
    registry: Registry[Any] = Registry().with_resource(_BASE_URI, DRAFT4.create_resource(document))
    return registry


@functools.cache
def _templates() -> list[tuple[str, re.Pattern[str], re.Pattern[str], int]]:
    """(template, strict regex, regex where slash-carrying parameters span slashes, literals)."""
    out = []
    for template in load_spec()["paths"]:
        parts = re.split(r"(\{[^}]+\})", template)
        params = [i for i, part in enumerate(parts) if part.startswith("{")]
        strict = "".join("[^/]+" if i in params else re.escape(p) for i, p in enumerate(parts))
        greedy = "".join(
            (".+" if p in _SLASHED_PARAMS else "[^/]+") if i in params else re.escape(p)
            for i, p in enumerate(parts)
        )
        literal = sum(len(p) for i, p in enumerate(parts) if i not in params)
        out.append((template, re.compile(f"^{strict}$"), re.compile(f"^{greedy}$"), literal))
    return out


def _normalise(path: str) -> str:
    path = urlsplit(path).path
    for prefix in _PREFIXES:
        if path.startswith(prefix + "/"):
            path = path[len(prefix) :]
    return "/".join(unquote(part) for part in path.split("/"))


def find_operation(method: str, path: str) -> tuple[str, dict[str, Any]]:
    """(path template, operation) for a concrete request path (``/api/v3`` optional).

    Parameters match one segment first; only when nothing matches may ``{branch}``,
    ``{ref}``, ``{path}`` and ``{basehead}`` span slashes (``heads/feature/x``).
    The most specific template (most literal characters) wins.
    """
    verb = method.lower()
    concrete = _normalise(path)
    paths = load_spec()["paths"]
    for pass_index in (1, 2):
        hits = [
            (literal, template)
            for template, strict, greedy, literal in _templates()
            if (strict if pass_index == 1 else greedy).match(concrete) and verb in paths[template]
        ]
        if hits:
            template = max(hits)[1]
            return template, paths[template][verb]
    raise OperationNotFound(f"no documented operation for {method.upper()} {concrete}")


def response_schema(method: str, path: str, status: int) -> dict[str, Any] | None:
    """The converted JSON schema GitHub documents for this response, None if it has no body.

    Raises :class:`OperationNotFound` if the status code is not documented at all.
    """
    template, operation = find_operation(method, path)
    responses = load_spec()["components"]["responses"]
    response = operation["responses"].get(str(status)) or operation["responses"].get("default")
    if response is None:
        documented = ", ".join(operation["responses"])
        raise OperationNotFound(
            f"{method.upper()} {template} does not document status {status} (only {documented})"
        )
    if "$ref" in response:
        response = responses[response["$ref"].rsplit("/", 1)[1]]
    content = response.get("content", {})
    media = content.get("application/json") or next(
        (value for key, value in content.items() if key.endswith("json")), None
    )
    if media is None or "schema" not in media:
        return None
    converted: dict[str, Any] = _convert(media["schema"])
    return converted


def validation_errors(method: str, path: str, status: int, body: Any) -> list[str]:
    """Every schema violation of ``body`` as readable lines (empty when valid)."""
    schema = response_schema(method, path, status)
    if schema is None:
        return [] if body in (None, "", b"") else ["the response has no documented body"]
    validator = jsonschema.Draft4Validator(schema, registry=_registry())
    lines = []
    for error in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        lines.append(f"{where}: {error.message[:300]}")
    return lines


def validate_response(method: str, path: str, status: int, body: Any) -> None:
    """Raise AssertionError listing every violation of GitHub's documented schema."""
    errors = validation_errors(method, path, status, body)
    if errors:
        template, operation = find_operation(method, path)
        head = f"{method.upper()} {path} -> {status} ({operation.get('operationId')}, {template})"
        raise AssertionError(head + " does not match GitHub's schema:\n  " + "\n  ".join(errors))


def request_errors(method: str, path: str, body: Any) -> list[str]:
    """Every violation of a request body against the schema GitHub documents for the
    operation's JSON request body (empty when valid; a body where none is documented is one)."""
    template, operation = find_operation(method, path)
    content = operation.get("requestBody", {}).get("content", {})
    media = content.get("application/json")
    if media is None or "schema" not in media:
        return [] if body in (None, {}, b"", "") else [f"{template} documents no request body"]
    validator = jsonschema.Draft4Validator(_convert(media["schema"]), registry=_registry())
    lines = []
    for error in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        lines.append(f"{where}: {error.message[:300]}")
    return lines


def webhook_errors(schema_name: str, payload: Any) -> list[str]:
    """Every violation of a webhook payload against GitHub's documented ``webhook-*`` schema
    (e.g. ``webhook-issue-comment-created``), as readable lines (empty when valid)."""
    if schema_name not in load_spec()["components"]["schemas"]:
        raise OperationNotFound(f"GitHub documents no schema {schema_name}")
    schema = {"$ref": f"{_BASE_URI}#/components/schemas/{schema_name}"}
    validator = jsonschema.Draft4Validator(schema, registry=_registry())
    lines = []
    for error in sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        lines.append(f"{where}: {error.message[:300]}")
    return lines
