"""Request bodies, validated with pydantic; errors name the field and the reason."""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request

from backspace.http.errors import HTTPProblem
from backspace.orchestrator.githosts.base import RepoRefError
from backspace.orchestrator.githosts.references import check_branch_name


class CodeRequest(BaseModel):
    """POST /api/code. `repoUrl` is accepted too, as the original Tiny Backspace clients send it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    repo_url: str = Field(
        validation_alias=AliasChoices("repo_url", "repoUrl"), min_length=1, max_length=2000
    )
    prompt: str = Field(min_length=1)
    base_branch: str | None = Field(None, min_length=1, max_length=250)
    co_author: str | None = Field(
        None,
        max_length=300,
        pattern=r"^[^<>\n]+ <[^<>\s@]+@[^<>\s@]+>$",
        description="the requester's git identity, 'Name <email>', credited as Co-authored-by",
    )
    engine: Literal["backspace", "claude-code"] | None = Field(
        None, description="the agent for this run; default: the server's BACKSPACE_ENGINE"
    )

    @field_validator("repo_url", "base_branch", "co_author")
    @classmethod
    def _no_control_characters(cls, value: str | None) -> str | None:
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("base_branch")
    @classmethod
    def _branch_name(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_branch_name(value)
            except RepoRefError as exc:
                raise ValueError(str(exc)) from None
        return value


class FollowUpRequest(BaseModel):
    """POST /api/runs/{id}/followups: more words for the run's pull request."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    prompt: str = Field(min_length=1)
    mode: Literal["queue", "steer"] = Field(
        "queue",
        description="queue: a new run after the family's current one; steer: into the running "
        "run's agent at its next turn (queued when no run is working)",
    )
    co_author: str | None = Field(
        None,
        max_length=300,
        pattern=r"^[^<>\n]+ <[^<>\s@]+@[^<>\s@]+>$",
        description="the requester's git identity, 'Name <email>', credited as Co-authored-by",
    )


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: 415 unless sent as JSON, 413 past `limit` bytes, 400 when it
    is not JSON.

    Requiring `Content-Type: application/json` keeps a web page elsewhere from sending it
    without the browser asking this server first (text/plain and forms need no preflight).
    """
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        shown = repr(content_type[:100]) if content_type else "missing"
        raise HTTPProblem(
            415,
            f"the request body must be sent as JSON with 'Content-Type: application/json' "
            f"(the Content-Type was {shown})",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"the request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise HTTPProblem(
            400, 'the request body is empty: send JSON like {"repo_url": ..., "prompt": ...}'
        )
    try:
        return json.loads(raw)
    except RecursionError:
        raise HTTPProblem(
            400, "the request body is not valid JSON: it is nested too deeply"
        ) from None
    except ValueError as exc:  # bad JSON, bad UTF-8, a number too long to convert
        raise HTTPProblem(400, f"the request body is not valid JSON: {exc}") from None


Body = TypeVar("Body", bound=BaseModel)


def validate(model: type[Body], data: Any) -> Body:
    if not isinstance(data, dict):
        raise HTTPProblem(422, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise HTTPProblem(422, f"invalid request: {summary}", errors=errors) from None
