"""The HTTP API: /health, /api/code, /api/runs..., /prs/{id}.

Handlers raise `HTTPProblem` (or let the orchestrator's `Refusal` through); the exception
handlers of backspace/http/errors.py render both as JSON, redacted.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from backspace.config import Settings
from backspace.http.auth import require_api_key
from backspace.http.errors import HTTPProblem
from backspace.http.openapi import MAX_SEQ, document
from backspace.http.pages import pull_request_page
from backspace.http.ratelimit import RateLimiter, key_id
from backspace.http.schemas import CodeRequest, FollowUpRequest, read_json, validate
from backspace.http.sse import Viewers, event_stream
from backspace.http.web import SECURITY_HEADERS, web_routes
from backspace.orchestrator.events import RunStatus
from backspace.orchestrator.service import Service
from backspace.orchestrator.store import Run
from backspace.telemetry import Telemetry

MAX_LIST = 200


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _telemetry(request: Request) -> Telemetry:
    telemetry: Telemetry = request.app.state.telemetry
    return telemetry


def _viewers(request: Request) -> Viewers:
    """The open-streams gauge an event stream moves while it is open."""
    return _telemetry(request).metrics.sse_viewers


def _authenticate(request: Request) -> Service:
    settings = _settings(request)
    if settings.require_auth:
        key = settings.api_key.get_secret_value() if settings.api_key else None
        require_api_key(request, key)
    return _service(request)


def _run_json(services: Service, run: Run) -> dict[str, Any]:
    base = f"{services.public_url}/api/runs/{run.id}"
    return {
        **run.to_json(),
        "url": base,
        "events_url": f"{base}/events",
        "cancel_url": f"{base}/cancel",
        "followups_url": f"{base}/followups",
    }


async def _family_json(service: Service, run: Run) -> dict[str, Any]:
    """The run's family: its parent and children, every run of it, the branch and the PR."""
    family = await service.family(run.id)
    published = [r for r in family if r.pr_url]
    return {
        "id": run.family_id or run.id,
        "parent_id": run.parent_id,
        "children": [r.id for r in family if r.parent_id == run.id],
        "runs": [
            {
                "id": r.id,
                "status": str(r.status),
                "prompt": r.prompt,
                "source": r.source,
                "created_at": r.created_at,
                "pr_url": r.pr_url,
            }
            for r in family
        ],
        "branch": published[-1].branch if published else None,
        "pr_url": published[-1].pr_url if published else None,
    }


def _whole_number(raw: str) -> int | None:
    """`raw` as an int when it is ASCII digits within SQLite's integers; otherwise None.

    (`str.isdigit` alone also takes "²", which int() refuses, and SQLite refuses past 2**63-1.)
    """
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_SEQ:
        return None
    return int(raw)


async def _get_run(service: Service, run_id: str) -> Run:
    run = await service.get_run(run_id)
    if run is None:
        raise HTTPProblem(404, f"no run with id {run_id!r}")
    return run


async def health(request: Request) -> Response:
    """Public liveness; where the database lives only for a caller with the API key."""
    settings = _settings(request)
    report = await _service(request).health(show_paths=_has_key(request, settings))
    report["auth"] = settings.require_auth
    report["slack"] = {
        "configured": settings.slack_configured,
        "mode": "socket" if settings.slack_app_token else "http",
    }
    return JSONResponse(report)


def _has_key(request: Request, settings: Settings) -> bool:
    if not (settings.require_auth and settings.api_key):
        return False
    try:
        require_api_key(request, settings.api_key.get_secret_value())
    except HTTPProblem:
        return False
    return True


async def create_run(request: Request) -> Response:
    """Start a run; stream its events, or answer 202 with the run when JSON is asked for."""
    service = _authenticate(request)
    settings = _settings(request)
    body = validate(CodeRequest, await read_json(request, settings.max_body_bytes))
    run = await service.admit(
        body.repo_url,
        body.prompt,
        base_branch=body.base_branch,
        co_author=body.co_author,
        source="api",
        engine=body.engine,
        meta=_telemetry(request).tracing.traceparent(),  # the run's trace links to this request
        gate=lambda: _limit_rate(request),  # only requests that would start a run count
    )
    if _wants_json(request):
        return JSONResponse(
            _run_json(service, run), status_code=202, headers={"Location": f"/api/runs/{run.id}"}
        )
    return event_stream(
        service.hub, run.id, 0, ping_after=settings.sse_ping, viewers=_viewers(request)
    )


def _limit_rate(request: Request) -> None:
    """429 when this client (by API key, and by address) starts runs too fast."""
    limiter: RateLimiter = request.app.state.rate_limiter
    keys = [f"addr:{request.client.host if request.client else 'unknown'}"]
    given = request.headers.get("x-api-key") or request.headers.get("authorization", "")[7:]
    if given:
        keys.append(key_id(given))
    wait = limiter.take_all(keys)
    if wait > 0:
        raise HTTPProblem(
            429,
            f"too many runs started from here: try again in {math.ceil(wait)} s "
            "(BACKSPACE_RUNS_PER_MINUTE)",
            headers={"Retry-After": str(math.ceil(wait))},
        )


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


async def list_runs(request: Request) -> Response:
    service = _authenticate(request)
    limit = _whole_number(request.query_params.get("limit", "50"))
    if limit is None or not 1 <= limit <= MAX_LIST:
        raise HTTPProblem(422, f"invalid request: limit: a whole number from 1 to {MAX_LIST}")
    runs = await service.list_runs(limit, before=request.query_params.get("before"))
    return JSONResponse({"runs": [_run_json(service, run) for run in runs]})


async def get_run(request: Request) -> Response:
    service = _authenticate(request)
    run = await _get_run(service, request.path_params["run_id"])
    return JSONResponse({**_run_json(service, run), "family": await _family_json(service, run)})


async def create_followup(request: Request) -> Response:
    """Continue a run's pull request: a new run queued behind the family's current one (its
    stream, or 202), or with `mode: steer` the words delivered into the running run."""
    service = _authenticate(request)
    settings = _settings(request)
    run = await _get_run(service, request.path_params["run_id"])
    body = validate(FollowUpRequest, await read_json(request, settings.max_body_bytes))
    followup = await service.follow_up(
        run.id,
        body.prompt,
        mode=body.mode,
        co_author=body.co_author,
        source="api",
        meta=_telemetry(request).tracing.traceparent(),
        gate=lambda: _limit_rate(request),
    )
    target = followup.run
    if _wants_json(request):
        return JSONResponse(
            {
                **_run_json(service, target),
                "run_id": target.id,
                "steered": followup.steered,
                "message": followup.message,
            },
            status_code=202,
            headers={"Location": f"/api/runs/{target.id}"},
        )
    # A steer streams the running run from now on; a new run, from its start.
    after = await service.store.last_seq(target.id) if followup.steered else 0
    return event_stream(
        service.hub,
        target.id,
        max(0, after - 1),
        ping_after=settings.sse_ping,
        viewers=_viewers(request),
    )


async def run_events(request: Request) -> Response:
    """Stream a run's events after `Last-Event-ID` (or `?after=N`): the past, then live ones."""
    service = _authenticate(request)
    run = await _get_run(service, request.path_params["run_id"])
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    after = _whole_number(raw.strip())
    if after is None:
        raise HTTPProblem(
            422, "invalid request: Last-Event-ID / after: a whole number (the last seq seen)"
        )
    if RunStatus(run.status).finished and not await service.store.events_after(
        run.id, after, limit=1
    ):
        # The run ended and its `complete` was seen: a stream would wait forever for nothing.
        # 204 also tells an EventSource to stop reconnecting.
        return Response(status_code=204)
    return event_stream(
        service.hub,
        run.id,
        after,
        ping_after=_settings(request).sse_ping,
        viewers=_viewers(request),
    )


async def cancel_run(request: Request) -> Response:
    service = _authenticate(request)
    run = await _get_run(service, request.path_params["run_id"])
    if not await service.cancel(run.id):
        raise HTTPProblem(409, f"the run already ended with status {run.status}; nothing to cancel")
    return JSONResponse({"id": run.id, "status": "cancelling"}, status_code=202)


async def _pull_request(request: Request) -> Any:
    service = _authenticate(request)
    raw = request.path_params["pr_id"]
    pr_id = _whole_number(raw)
    record = await service.store.get_pull_request(pr_id) if pr_id is not None else None
    if record is None:
        raise HTTPProblem(404, f"no pull request with id {raw!r}")
    return record


async def pull_request_json(request: Request) -> Response:
    record = await _pull_request(request)
    comments = await _service(request).store.pull_request_comments(record.id)
    return JSONResponse({**record.__dict__, "comments": comments})


async def pull_request_html(request: Request) -> Response:
    record = await _pull_request(request)
    comments = await _service(request).store.pull_request_comments(record.id)
    return HTMLResponse(pull_request_page(record, comments), headers=SECURITY_HEADERS)


async def openapi(request: Request) -> Response:
    return JSONResponse(document(_service(request).public_url))


async def slack_events(request: Request) -> Response:
    """Slack's commands, button clicks and events (HTTP mode); Bolt checks the signature."""
    slack = request.app.state.slack
    if slack is None:
        raise HTTPProblem(
            404, "Slack is not configured: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET"
        )
    response: Response = await slack.endpoint(request)
    if response.status_code >= 400:  # a JSON error, like every other one of this API
        raise HTTPProblem(response.status_code, _refusal(response))
    return response


async def github_webhook(request: Request) -> Response:
    """GitHub's webhook deliveries, signed with GITHUB_WEBHOOK_SECRET (backspace/githubbot)."""
    github = request.app.state.github
    if github is None:
        raise HTTPProblem(
            404,
            "the GitHub webhook is off: set GITHUB_WEBHOOK_SECRET (and GITHUB_TOKEN) to enable it",
        )
    response: Response = await github.endpoint(request)
    if response.status_code >= 400:
        raise HTTPProblem(response.status_code, _refusal(response))
    return response


def _refusal(response: Response) -> str:
    """The words of a refusal: plain text (the Slack front end's) or `{"error": ...}` (Bolt's)."""
    text = bytes(response.body).decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text or "refused"
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) and error else text or "refused"


def routes() -> list[BaseRoute]:
    return [
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/api/code", create_run, methods=["POST"]),
        Route("/api/runs", list_runs, methods=["GET"]),
        Route("/api/runs/{run_id}", get_run, methods=["GET"]),
        Route("/api/runs/{run_id}/events", run_events, methods=["GET"]),
        Route("/api/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
        Route("/api/runs/{run_id}/followups", create_followup, methods=["POST"]),
        Route("/api/prs/{pr_id}", pull_request_json, methods=["GET"]),
        Route("/prs/{pr_id}", pull_request_html, methods=["GET"]),
        Route("/slack/events", slack_events, methods=["POST"]),
        Route("/github/webhook", github_webhook, methods=["POST"]),
        *web_routes(),
    ]
