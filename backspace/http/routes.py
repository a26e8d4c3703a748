"""The HTTP API: /health, /api/code, /api/runs..., /prs/{id}."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from backspace.app import Services
from backspace.http.auth import require_api_key
from backspace.http.errors import HTTPProblem, problem_response
from backspace.http.openapi import MAX_SEQ, document
from backspace.http.pages import pull_request_page
from backspace.http.ratelimit import RateLimiter, key_id
from backspace.http.schemas import CodeRequest, read_json, validate
from backspace.http.sse import event_stream
from backspace.http.web import SECURITY_HEADERS, web_routes
from backspace.orchestrator.events import RunStatus
from backspace.orchestrator.githosts.base import RepoRefError
from backspace.orchestrator.run import RunRequest
from backspace.orchestrator.runner import NotAccepting
from backspace.orchestrator.store import Run, StoreError, StoreFull

MAX_LIST = 200


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _authenticate(request: Request) -> Services:
    services = _services(request)
    settings = services.settings
    if settings.require_auth:
        key = settings.api_key.get_secret_value() if settings.api_key else None
        require_api_key(request, key)
    return services


def handles_problems(handler: Any) -> Any:
    async def wrapper(request: Request) -> Response:
        try:
            response: Response = await handler(request)
            return response
        except HTTPProblem as problem:
            # An error may quote what was sent (a reference, a name): never a secret we know.
            redactor = _services(request).redactor
            problem.detail = redactor.text(problem.detail)
            problem.errors = redactor.data(problem.errors)
            return problem_response(problem)

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


def _run_json(services: Services, run: Run) -> dict[str, Any]:
    base = f"{services.public_url}/api/runs/{run.id}"
    return {
        **run.to_json(),
        "url": base,
        "events_url": f"{base}/events",
        "cancel_url": f"{base}/cancel",
    }


def _whole_number(raw: str) -> int | None:
    """`raw` as an int when it is ASCII digits within SQLite's integers; otherwise None.

    (`str.isdigit` alone also takes "²", which int() refuses, and SQLite refuses past 2**63-1.)
    """
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_SEQ:
        return None
    return int(raw)


def _get_run(services: Services, run_id: str) -> Run:
    run = services.store.get_run(run_id)
    if run is None:
        raise HTTPProblem(404, f"no run with id {run_id!r}")
    return run


@handles_problems
async def health(request: Request) -> Response:
    """Public liveness; where the database lives only for a caller with the API key."""
    services = _services(request)
    return JSONResponse(services.health(show_paths=_has_key(request, services)))


def _has_key(request: Request, services: Services) -> bool:
    settings = services.settings
    if not (settings.require_auth and settings.api_key):
        return False
    try:
        require_api_key(request, settings.api_key.get_secret_value())
    except HTTPProblem:
        return False
    return True


@handles_problems
async def create_run(request: Request) -> Response:
    """Start a run; stream its events, or answer 202 with the run when JSON is asked for."""
    services = _authenticate(request)
    settings = services.settings
    body = validate(CodeRequest, await read_json(request, settings.max_body_bytes))
    try:
        services.check_prompt(body.prompt)
    except ValueError as exc:
        raise HTTPProblem(
            422,
            f"invalid request: prompt: {exc}",
            errors=[{"field": "prompt", "message": str(exc)}],
        ) from None
    try:
        ref = services.parse_repo(body.repo_url)
    except RepoRefError as exc:
        raise HTTPProblem(
            422,
            f"invalid request: repo_url: {exc}",
            errors=[{"field": "repo_url", "message": str(exc)}],
        ) from None
    host_usable, host_message = services.hosts[ref.host].check()
    if not host_usable:
        raise HTTPProblem(503, f"{ref.name} cannot be used: {host_message}")
    if not settings.model_configured:
        raise HTTPProblem(
            503, "no model is configured: set ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL) and restart"
        )
    usable, message = services.sandboxes.check()
    if not usable:
        raise HTTPProblem(503, f"the {services.sandboxes.name} sandbox cannot be used: {message}")
    _limit_rate(request)  # only requests that would start a run count
    try:
        run = services.runner.submit(
            RunRequest(
                repo_url=body.repo_url,
                repo=ref,
                prompt=body.prompt,
                base_branch=body.base_branch,
                co_author=body.co_author,
                source="api",
            )
        )
    except NotAccepting as exc:
        raise HTTPProblem(503, str(exc), headers={"Retry-After": "5"}) from None
    except StoreFull as exc:
        raise HTTPProblem(503, str(exc), headers={"Retry-After": "60"}) from None
    except StoreError:
        raise HTTPProblem(
            503, "backspace cannot record new runs right now (its store is full or failing)"
        ) from None
    if _wants_json(request):
        return JSONResponse(
            _run_json(services, run), status_code=202, headers={"Location": f"/api/runs/{run.id}"}
        )
    return event_stream(services.hub, run.id, 0, ping_after=settings.sse_ping)


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


@handles_problems
async def list_runs(request: Request) -> Response:
    services = _authenticate(request)
    limit = _whole_number(request.query_params.get("limit", "50"))
    if limit is None or not 1 <= limit <= MAX_LIST:
        raise HTTPProblem(422, f"invalid request: limit: a whole number from 1 to {MAX_LIST}")
    runs = services.store.list_runs(limit, before=request.query_params.get("before"))
    return JSONResponse({"runs": [_run_json(services, run) for run in runs]})


@handles_problems
async def get_run(request: Request) -> Response:
    services = _authenticate(request)
    return JSONResponse(_run_json(services, _get_run(services, request.path_params["run_id"])))


@handles_problems
async def run_events(request: Request) -> Response:
    """Stream a run's events after `Last-Event-ID` (or `?after=N`): the past, then live ones."""
    services = _authenticate(request)
    run = _get_run(services, request.path_params["run_id"])
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    after = _whole_number(raw.strip())
    if after is None:
        raise HTTPProblem(
            422, "invalid request: Last-Event-ID / after: a whole number (the last seq seen)"
        )
    if RunStatus(run.status).finished and not services.store.events_after(run.id, after, limit=1):
        # The run ended and its `complete` was seen: a stream would wait forever for nothing.
        # 204 also tells an EventSource to stop reconnecting.
        return Response(status_code=204)
    return event_stream(services.hub, run.id, after, ping_after=services.settings.sse_ping)


@handles_problems
async def cancel_run(request: Request) -> Response:
    services = _authenticate(request)
    run = _get_run(services, request.path_params["run_id"])
    if not await services.runner.cancel(run.id):
        raise HTTPProblem(409, f"the run already ended with status {run.status}; nothing to cancel")
    return JSONResponse({"id": run.id, "status": "cancelling"}, status_code=202)


def _pull_request(request: Request) -> tuple[Services, Any]:
    services = _authenticate(request)
    raw = request.path_params["pr_id"]
    pr_id = _whole_number(raw)
    record = services.store.get_pull_request(pr_id) if pr_id is not None else None
    if record is None:
        raise HTTPProblem(404, f"no pull request with id {raw!r}")
    return services, record


@handles_problems
async def pull_request_json(request: Request) -> Response:
    _, record = _pull_request(request)
    return JSONResponse(record.__dict__)


@handles_problems
async def pull_request_html(request: Request) -> Response:
    _, record = _pull_request(request)
    return HTMLResponse(pull_request_page(record), headers=SECURITY_HEADERS)


async def openapi(request: Request) -> Response:
    return JSONResponse(document(_services(request).public_url))


async def slack_events(request: Request) -> Response:
    """Slack's commands, button clicks and events (HTTP mode); Bolt checks the signature."""
    slack = request.app.state.slack
    if slack is None:
        return problem_response(
            HTTPProblem(
                404, "Slack is not configured: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET"
            )
        )
    response: Response = await slack.endpoint(request)
    if response.status_code >= 400:  # a JSON error, like every other one of this API
        return problem_response(HTTPProblem(response.status_code, _refusal(response)))
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
        Route("/api/prs/{pr_id}", pull_request_json, methods=["GET"]),
        Route("/prs/{pr_id}", pull_request_html, methods=["GET"]),
        Route("/slack/events", slack_events, methods=["POST"]),
        *web_routes(),
    ]
