"""API-key authentication (REQUIRE_AUTH): `Authorization: Bearer KEY` or `X-API-Key: KEY`."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from backspace.http.errors import HTTPProblem


def require_api_key(request: Request, expected: str | None) -> None:
    """Raise 401 unless the request carries the key; constant-time comparison."""
    if expected is None:
        return
    given = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization", "")
    if given is None and authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    if not given:
        raise HTTPProblem(
            401,
            "authentication required: send the API key as 'Authorization: Bearer <key>' or "
            "'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPProblem(401, "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})
