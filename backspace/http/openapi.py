"""The HTTP API's OpenAPI description, served at /openapi.json.

The paths and their prose are kept by hand beside the routes (a test checks that every route is
in it); the Run schema is generated from the `Run` the store keeps, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from backspace import __version__
from backspace.http.schemas import FollowUpRequest
from backspace.orchestrator.events import EventType
from backspace.orchestrator.store import PullRequestRecord, Run

ERROR = {"$ref": "#/components/schemas/Error"}
ANTHROPIC_ERROR = {
    "type": "object",
    "properties": {"type": {"type": "string"}, "error": {"type": "object"}},
}
MAX_SEQ = 2**63 - 1
"""The largest integer SQLite stores: the largest `after` (and pull request id) there can be."""


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "the body is not JSON",
        401: "missing or wrong API key",
        403: "a browser sent it from another site (Origin, Sec-Fetch-Site)",
        404: "not found",
        409: "the run already ended",
        413: "the body is too large",
        415: "the body is not sent as Content-Type: application/json",
        422: "a field is wrong; `errors` names it",
        429: "too many runs started; see Retry-After",
        503: "no model, no sandbox, no git host, a full store, or shutting down",
    }
    headers = {
        401: {
            "WWW-Authenticate": {
                "description": "`Bearer`",
                "required": True,
                "schema": {"type": "string"},
            }
        },
        429: {
            "Retry-After": {
                "description": "seconds until a run can be started",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    }
    responses = {str(code): _json(ERROR, text[code]) for code in codes}
    for code in codes:
        if code in headers:
            responses[str(code)]["headers"] = headers[code]
    return responses


SSE = {
    "description": "the run's events as Server-Sent Events (`id: <seq>`, `data: <json Event>`), "
    "then the stream ends after the `complete` event; `: ping` comments during silences",
    "content": {
        "text/event-stream": {
            # Before OpenAPI 3.2 (`itemSchema`), a stream's schema describes one event.
            "schema": {
                "type": "object",
                "required": ["id", "data"],
                "properties": {
                    "id": {"type": "string", "pattern": "^[1-9][0-9]*$", "description": "seq"},
                    "data": {
                        "type": "string",
                        "description": "an Event (components/schemas/Event) as JSON",
                    },
                },
            }
        }
    },
}
HTML = {"description": "an HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
PR_ID = {
    "name": "pr_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_SEQ},
}
SECURED: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
RUN_LINKS = ("url", "events_url", "cancel_url", "followups_url")
"""What the API adds to a run's fields (`routes._run_json`): where it, its events, its
cancellation and its follow-ups are."""


EVENT_FIELDS = {
    "run_id": {"type": "string"},
    "request_id": {"type": "string"},
    "seq": {"type": "integer", "minimum": 1},
    "timestamp": {"type": "string"},
}
EVENT_REQUIRED = ["type", "run_id", "request_id", "seq", "timestamp"]
PHASE = {"type": "string", "enum": ["setup", "agent", "verify"]}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
COMMAND = {"type": "string", "nullable": True, "description": "the command that tried, if known"}
NULLABLE_STRING = {"type": "string", "nullable": True}
COUNT = {"type": "integer", "minimum": 0}
BLOCKED_ATTEMPT: dict[str, Any] = {
    "type": "object",
    "required": ["host", "port", "phase", "command"],
    "properties": {"host": {"type": "string"}, "port": PORT, "phase": PHASE, "command": COMMAND},
}
TYPED_EVENTS: dict[str, dict[str, Any]] = {
    EventType.NETWORK_BLOCKED: {
        "description": "the egress proxy refused a sandbox's connection",
        "required": ["host", "port", "phase", "command", "reason", "hint"],
        "properties": {
            **BLOCKED_ATTEMPT["properties"],
            "reason": {"type": "string"},
            "hint": {"type": "string", "description": "what to add to .backspace.toml"},
        },
    },
    EventType.VERIFICATION: {
        "description": "the receipt of backspace's own run of the [verify] commands",
        "required": ["passed", "draft", "environment", "tree", "commands", "blocked"],
        "properties": {
            "passed": {"type": "boolean"},
            "draft": {"type": "boolean", "description": "the pull request opens as a draft"},
            "environment": {"type": "string", "description": "`cached <key>` or `fresh`"},
            "tree": {"type": "string", "description": "the git tree verified (the published one)"},
            "commands": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["command", "exit_code", "duration_ms", "timed_out", "output_tail"],
                    "properties": {
                        "command": {"type": "string"},
                        "exit_code": {"type": "integer"},
                        "duration_ms": {"type": "integer", "minimum": 0},
                        "timed_out": {"type": "boolean"},
                        "output_tail": {"type": "string"},
                    },
                },
            },
            "blocked": {"type": "array", "items": BLOCKED_ATTEMPT},
        },
    },
    EventType.PR_UPDATED: {
        "description": "a follow-up pushed a new commit to its family's open pull request "
        "(when that one was merged or closed, a follow-up opens a new one: `pr_created`)",
        "required": [
            "pr_url",
            "pr_number",
            "branch",
            "commit",
            "title",
            "files_changed",
            "additions",
            "deletions",
            "draft",
        ],
        "properties": {
            "pr_url": {"type": "string"},
            "pr_number": {"type": "integer", "minimum": 1},
            "branch": {"type": "string"},
            "base_sha": {"type": "string", "description": "what the PR's diff is against"},
            "commit": {"type": "string", "description": "the new commit on the branch"},
            "title": {"type": "string"},
            "files_changed": COUNT,
            "additions": COUNT,
            "deletions": COUNT,
            "draft": {"type": "boolean"},
        },
    },
    EventType.FOLLOWUP_RECEIVED: {
        "description": "a follow-up reached this run: steered into its agent (read at the next "
        "turn), or queued as a new run of the family after it",
        "required": ["prompt", "requester", "source", "mode"],
        "properties": {
            "prompt": {"type": "string"},
            "requester": {**NULLABLE_STRING, "description": "who sent it, when known"},
            "source": {"type": "string", "description": "api, slack, github, ..."},
            "mode": {"type": "string", "enum": ["steer", "queue"]},
            "followup_run_id": {"type": "string", "description": "the queued run (mode queue)"},
        },
    },
}
"""Event types whose fields are described; any other event carries its type's fields freely."""


def event_schema() -> dict[str, Any]:
    """The `Event` component: one of the described types, or any other type the server has."""
    others = sorted(str(t) for t in EventType if t not in TYPED_EVENTS)
    variants = [
        {
            "type": "object",
            "required": EVENT_REQUIRED,
            "properties": {"type": {"type": "string", "enum": others}, **EVENT_FIELDS},
            "additionalProperties": True,
        }
    ]
    for name, fields in TYPED_EVENTS.items():
        variants.append(
            {
                "type": "object",
                "description": fields["description"],
                "required": [*EVENT_REQUIRED, *fields["required"]],
                "properties": {
                    "type": {"type": "string", "enum": [str(name)]},
                    **EVENT_FIELDS,
                    **fields["properties"],
                },
                "additionalProperties": True,
            }
        )
    return {"oneOf": variants}


def run_schema() -> dict[str, Any]:
    """The `Run` component: the run as `Run.to_json` shows it, with its links."""
    schema = openapi_schema(TypeAdapter(Run).json_schema(mode="serialization"))
    schema["properties"].update({name: {"type": "string"} for name in RUN_LINKS})
    return schema


FAMILY: dict[str, Any] = {
    "type": "object",
    "description": "the runs of one pull request's conversation (a first run and its follow-ups)",
    "required": ["id", "parent_id", "children", "runs", "branch", "pr_url"],
    "properties": {
        "id": {"type": "string", "description": "the family's id: its first run's"},
        "parent_id": {**NULLABLE_STRING, "description": "the run this one continues"},
        "children": {
            "type": "array",
            "items": {"type": "string"},
            "description": "the runs that continue this one",
        },
        "runs": {
            "type": "array",
            "description": "every run of the family, oldest first",
            "items": {
                "type": "object",
                "required": ["id", "status", "prompt", "source", "created_at", "pr_url"],
                "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "string"},
                    "prompt": {"type": "string"},
                    "source": {"type": "string"},
                    "created_at": {"type": "string"},
                    "pr_url": NULLABLE_STRING,
                },
            },
        },
        "branch": {**NULLABLE_STRING, "description": "the branch of the newest pull request"},
        "pr_url": {**NULLABLE_STRING, "description": "the newest pull request"},
    },
}
RUN_REF = {"$ref": "#/components/schemas/Run"}


def _with(fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """The Run with more fields."""
    return {"allOf": [RUN_REF, {"type": "object", "required": required, "properties": fields}]}


def pull_request_schema() -> dict[str, Any]:
    """`GET /api/prs/{id}`: the local pull request as the store keeps it, and its comments."""
    schema = openapi_schema(TypeAdapter(PullRequestRecord).json_schema(mode="serialization"))
    schema["properties"]["comments"] = {
        "type": "array",
        "description": "the follow-ups' comments, oldest first",
        "items": {
            "type": "object",
            "required": ["id", "body", "created_at"],
            "properties": {
                "id": {"type": "integer"},
                "body": {"type": "string"},
                "created_at": {"type": "string"},
            },
        },
    }
    schema["required"] = [*schema.get("required", []), "comments"]
    return schema


def openapi_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON Schema as OpenAPI 3.0 takes it: `$defs` inlined (each component stands
    alone), `X or null` as `nullable`, no generated titles and no class docstrings."""
    defs = schema.get("$defs", {})

    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = dict(defs[node["$ref"].removeprefix("#/$defs/")])
            target.pop("description", None)  # a class docstring, for Python's readers
            return convert({**target, **{k: v for k, v in node.items() if k != "$ref"}})
        choices = node.get("anyOf", [])
        if {"type": "null"} in choices and len(choices) == 2:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            (other,) = (c for c in choices if c != {"type": "null"})
            return convert({**other, **rest, "nullable": True})
        converted = {}
        for key, value in node.items():
            if key in ("$defs", "title"):
                continue
            if key == "properties":
                converted[key] = {name: convert(sub) for name, sub in value.items()}
            else:
                converted[key] = convert(value)
        return converted

    converted: dict[str, Any] = convert(schema)
    converted.pop("description", None)
    return converted


def document(server_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "backspace",
            "version": __version__,
            "description": "Turn a sentence into a pull request. Authentication applies when "
            "REQUIRE_AUTH=true.",
        },
        "servers": [{"url": server_url}],
        "paths": {
            "/health": {
                "get": {
                    "summary": "liveness and configuration",
                    "responses": {"200": _json({"type": "object"}, "health")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text format); not here when "
                    "BACKSPACE_METRICS_PORT is set",
                    "security": SECURED,
                    "responses": {
                        "200": {
                            "description": "metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": {"description": "the API key is missing or wrong"},
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "this document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI")},
                }
            },
            "/api/code": {
                "post": {
                    "summary": "start a run; its events stream, or 202 with the run for Accept: application/json",
                    "security": SECURED,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CodeRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": SSE,
                        "202": {
                            **_json({"$ref": "#/components/schemas/Run"}, "the run, queued"),
                            "headers": {
                                "Location": {
                                    "description": "the run: /api/runs/{run_id}",
                                    "required": True,
                                    "schema": {"type": "string"},
                                }
                            },
                        },
                        **_errors(400, 401, 403, 413, 415, 422, 429, 503),
                    },
                }
            },
            "/api/runs": {
                "get": {
                    "summary": "recent runs, newest first",
                    "security": SECURED,
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                        },
                        {"name": "before", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["runs"],
                                "properties": {
                                    "runs": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Run"},
                                    }
                                },
                            },
                            "runs",
                        ),
                        **_errors(401, 422),
                    },
                }
            },
            "/api/runs/{run_id}": {
                "get": {
                    "summary": "one run, with its family (the runs of its pull request)",
                    "security": SECURED,
                    "parameters": [RUN_ID],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/RunWithFamily"}, "the run"),
                        **_errors(401, 404),
                    },
                }
            },
            "/api/runs/{run_id}/followups": {
                "post": {
                    "summary": "a follow-up on the run's pull request: a new run of its family "
                    "(queued behind the family's current one; its events stream, or 202 with "
                    "Accept: application/json), or with mode `steer` words for the running "
                    "run's agent (then that run streams)",
                    "security": SECURED,
                    "parameters": [RUN_ID],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/FollowUpRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": SSE,
                        "202": {
                            **_json(
                                {"$ref": "#/components/schemas/FollowUp"},
                                "the run that carries the follow-up: the new one, queued, or "
                                "the running one it was steered into",
                            ),
                            "headers": {
                                "Location": {
                                    "description": "that run: /api/runs/{run_id}",
                                    "required": True,
                                    "schema": {"type": "string"},
                                }
                            },
                        },
                        **_errors(400, 401, 403, 404, 413, 415, 422, 429, 503),
                    },
                }
            },
            "/api/runs/{run_id}/events": {
                "get": {
                    "summary": "the run's events from Last-Event-ID (or ?after=N): the past, then live ones",
                    "security": SECURED,
                    "parameters": [
                        RUN_ID,
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
                        },
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "description": "like `after` (a whole number); it wins when both "
                            "are given",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": SSE,
                        "204": {
                            "description": "the run has ended and its `complete` event is not "
                            "after Last-Event-ID (or `after`): nothing more will come, so an "
                            "EventSource stops reconnecting"
                        },
                        **_errors(401, 404, 422),
                    },
                }
            },
            "/api/runs/{run_id}/cancel": {
                "post": {
                    "summary": "cancel a queued or running run",
                    "security": SECURED,
                    "parameters": [RUN_ID],
                    "responses": {
                        "202": _json(
                            {
                                "type": "object",
                                "required": ["id", "status"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "status": {"type": "string"},
                                },
                            },
                            "cancelling",
                        ),
                        **_errors(401, 403, 404, 409),
                    },
                }
            },
            "/api/prs/{pr_id}": {
                "get": {
                    "summary": "a local pull request",
                    "security": SECURED,
                    "parameters": [PR_ID],
                    "responses": {
                        "200": _json(
                            {"$ref": "#/components/schemas/PullRequest"}, "the pull request"
                        ),
                        **_errors(401, 404),
                    },
                }
            },
            "/prs/{pr_id}": {
                "get": {
                    "summary": "a local pull request's page",
                    "security": SECURED,
                    "parameters": [PR_ID],
                    "responses": {"200": HTML, **_errors(401, 404)},
                }
            },
            "/": {
                "get": {"summary": "the web interface: runs and a form", "responses": {"200": HTML}}
            },
            "/runs/{run_id}": {
                "get": {
                    "summary": "the web interface: one run, live",
                    "parameters": [RUN_ID],
                    "responses": {"200": HTML},
                }
            },
            "/slack/events": {
                "post": {
                    "summary": "Slack slash commands, interactivity and events (HTTP mode), "
                    "signed by Slack with SLACK_SIGNING_SECRET",
                    "requestBody": {
                        "content": {
                            "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
                            "application/json": {"schema": {"type": "object"}},
                        }
                    },
                    "responses": {
                        "200": {
                            "description": "handled: Bolt's acknowledgement (for Slack's "
                            "url_verification, the challenge as JSON)"
                        },
                        "400": _json(ERROR, "a signed body that is not one Slack sends"),
                        "401": _json(ERROR, "no signature, a stale one or a wrong one"),
                        "403": _json(ERROR, "a browser sent it from another site"),
                        "404": _json(
                            ERROR,
                            "Slack is not configured, or it runs in Socket Mode (without "
                            "SLACK_SIGNING_SECRET)",
                        ),
                        "413": _json(ERROR, "the body is too large"),
                    },
                }
            },
            "/github/webhook": {
                "post": {
                    "summary": "GitHub webhook deliveries (issue comments, pull request review "
                    "comments and reviews, issues), signed with GITHUB_WEBHOOK_SECRET",
                    "requestBody": {
                        "content": {"application/json": {"schema": {"type": "object"}}}
                    },
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"ignored": {"type": "string"}}},
                            "signed, but nothing to do (no mention, a repeated delivery): why",
                        ),
                        "202": _json(
                            {"type": "object", "properties": {"accepted": {"type": "string"}}},
                            "a request: answered now, acted on in the background",
                        ),
                        "400": _json(ERROR, "signed, but not JSON or without GitHub's headers"),
                        "401": _json(ERROR, "no X-Hub-Signature-256, or a wrong one"),
                        "403": _json(ERROR, "a browser sent it from another site"),
                        "404": _json(ERROR, "the webhook is off (no GITHUB_WEBHOOK_SECRET)"),
                        "413": _json(ERROR, "the body is too large"),
                        "503": _json(ERROR, "GITHUB_TOKEN is not set"),
                    },
                }
            },
            "/gateway/{capability}/v1/messages": {"post": _gateway_operation()},
            "/gateway/{capability}/v1/messages/count_tokens": {"post": _gateway_operation()},
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["detail"],
                    "properties": {
                        "detail": {"type": "string"},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "field": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "CodeRequest": {
                    "type": "object",
                    "required": ["repo_url", "prompt"],
                    "additionalProperties": False,
                    "properties": {
                        "repo_url": {"type": "string", "minLength": 1, "maxLength": 2000},
                        "repoUrl": {"type": "string", "description": "synonym of repo_url"},
                        "prompt": {"type": "string", "minLength": 1},
                        "base_branch": {
                            "type": "string",
                            "nullable": True,
                            "minLength": 1,
                            "maxLength": 250,
                        },
                        "co_author": {
                            "type": "string",
                            "nullable": True,
                            "maxLength": 300,
                            "pattern": "^[^<>\\n]+ <[^<>\\s@]+@[^<>\\s@]+>$",
                            "description": "Name <email>",
                        },
                        "engine": {
                            "type": "string",
                            "nullable": True,
                            "enum": ["backspace", "claude-code", None],
                            "description": "the agent for this run; default: BACKSPACE_ENGINE",
                        },
                    },
                },
                "FollowUpRequest": openapi_schema(FollowUpRequest.model_json_schema()),
                "Run": run_schema(),
                "RunWithFamily": _with({"family": FAMILY}, ["family"]),
                "FollowUp": _with(
                    {
                        "run_id": {"type": "string", "description": "the run's id again"},
                        "steered": {
                            "type": "boolean",
                            "description": "delivered into the running run (not a new run)",
                        },
                        "message": {"type": "string", "description": "what happened, in words"},
                    },
                    ["run_id", "steered", "message"],
                ),
                "PullRequest": pull_request_schema(),
                "Event": event_schema(),
            },
        },
    }


def _gateway_operation() -> dict[str, Any]:
    """Both model gateway paths (Messages and count_tokens) take and answer the same."""
    return {
        "summary": "The model gateway for a remote sandbox's Claude Code (Messages API only): no "
        "API key; the path's capability, valid during one run's agent stage, is the authorisation",
        "parameters": [
            {"name": "capability", "in": "path", "required": True, "schema": {"type": "string"}},
        ],
        "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {
            "200": {"description": "the model's answer, relayed as it streams"},
            "400": _json(ANTHROPIC_ERROR, "not a request the gateway can read"),
            "403": _json(ANTHROPIC_ERROR, "the run's spend limit is reached"),
            "404": _json(
                ANTHROPIC_ERROR,
                "an unknown or expired capability (nothing starts), or a path that is not the "
                "Messages API",
            ),
            "413": _json(ANTHROPIC_ERROR, "the body is too large"),
            "431": _json(ANTHROPIC_ERROR, "the head is too large"),
        },
    }
