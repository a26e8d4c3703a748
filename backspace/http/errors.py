"""JSON errors with a `detail` a person can act on, and the status that says what kind.

Handlers raise (an `HTTPProblem`, or the orchestrator's `Refusal`); the exception handlers here
render every error the same way, with any secret the server knows redacted.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler

from backspace.orchestrator.redact import Redactor
from backspace.orchestrator.service import Kind, Reason, Refusal

log = logging.getLogger(__name__)

STATUS = {Kind.INVALID: 422, Kind.NOT_FOUND: 404, Kind.UNAVAILABLE: 503}
"""The HTTP status of each kind of refusal."""


class HTTPProblem(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers


def problem_response(problem: HTTPProblem) -> JSONResponse:
    body: dict[str, Any] = {"detail": problem.detail}
    if problem.errors:
        body["errors"] = problem.errors
    return JSONResponse(body, status_code=problem.status, headers=problem.headers)


def refusal_problem(refusal: Refusal) -> HTTPProblem:
    """The API's words for each refusal of the orchestrator's door."""
    status = STATUS[refusal.kind]
    headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else None
    match refusal.reason:
        case Reason.PROMPT | Reason.REPOSITORY:
            return HTTPProblem(
                status,
                f"invalid request: {refusal.field}: {refusal.message}",
                errors=[{"field": refusal.field, "message": refusal.message}],
            )
        case Reason.GIT_HOST:
            return HTTPProblem(status, f"{refusal.subject} cannot be used: {refusal.message}")
        case Reason.MODEL:
            return HTTPProblem(status, f"{refusal.message} and restart")
        case Reason.SANDBOX:
            detail = f"the {refusal.subject} sandbox cannot be used: {refusal.message}"
            return HTTPProblem(status, detail)
        case Reason.STORE_FAILING:
            detail = "backspace cannot record new runs right now (its store is full or failing)"
            return HTTPProblem(status, detail)
        case _:
            return HTTPProblem(status, refusal.message, headers=headers)


def exception_handlers(redactor: Redactor) -> dict[Any, ExceptionHandler]:
    """Every error a handler raises, rendered as JSON in one place."""

    async def problem(request: Request, exc: Exception) -> Response:
        if isinstance(exc, Refusal):
            exc = refusal_problem(exc)
        assert isinstance(exc, HTTPProblem)
        # An error may quote what was sent (a reference, a name): never a secret we know.
        exc.detail = redactor.text(exc.detail)
        exc.errors = redactor.data(exc.errors)
        return problem_response(exc)

    return {
        HTTPProblem: problem,
        Refusal: problem,
        HTTPException: _http_error,
        ClientDisconnect: _client_gone,
        Exception: _internal_error,
    }


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such route, method not allowed) as JSON too."""
    assert isinstance(exc, HTTPException)
    detail = {
        404: f"no such endpoint: {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }
    return JSONResponse(
        {"detail": detail.get(exc.status_code, exc.detail)},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client went away (or was cut off at its deadline) while sending: nobody to answer."""
    log.info("the client left before sending all of %s %s", request.method, request.url.path)
    return Response(status_code=400)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        {"detail": "internal server error; the server log has the details"}, status_code=500
    )
