"""JSON errors with a `detail` a person can act on, and the status that says what kind."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


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
