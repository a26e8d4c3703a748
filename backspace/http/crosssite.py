"""Refuse requests that change something when a browser says they come from another site (CSRF).

A page elsewhere can make the operator's browser POST to this server without asking first (a
"simple" request: text/plain, a form). Browsers name the page's origin in `Origin` and say
whether it is this site in `Sec-Fetch-Site`. The web page's own requests are same-origin;
curl, scripts, the CLI and Slack send neither header, and pass.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from backspace.http.errors import HTTPProblem, problem_response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TRUSTED_SITES = frozenset({"same-origin", "none"})  # `none`: typed or bookmarked by the person
DEFAULT_PORTS = {"http": 80, "https": 443}
HOW = (
    "a web page elsewhere cannot act on backspace: use backspace's own page, or send the "
    "request without a browser (curl, the CLI)"
)


def _endpoint(scheme: str, netloc: str) -> tuple[str, int | None] | None:
    """(host, port) of `netloc`, the port defaulting by `scheme`; None when it is not one."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname.lower(), port if port is not None else DEFAULT_PORTS.get(scheme)


class CrossSiteCheck:
    """403 for a state-changing request whose Origin is not this server, or that is cross-site."""

    def __init__(self, app: ASGIApp, public_url: str) -> None:
        self.app = app
        parts = urlsplit(public_url)
        self.public = _endpoint(parts.scheme, parts.netloc) if parts.scheme else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            refusal = self.refusal(Headers(scope=scope))
            if refusal is not None:
                await problem_response(HTTPProblem(403, refusal))(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, headers: Headers) -> str | None:
        origin = headers.get("origin")
        if origin is not None and not self._same_origin(origin, headers.get("host", "")):
            return (
                f"refused: this request comes from another site (Origin: {origin[:100]!r}); {HOW}"
            )
        site = headers.get("sec-fetch-site")
        if site is not None and site.strip().lower() not in TRUSTED_SITES:
            return (
                f"refused: the browser says this request is {site[:30]!r} (Sec-Fetch-Site), "
                f"not from this server's own page; {HOW}"
            )
        return None

    def _same_origin(self, origin: str, host: str) -> bool:
        """Origin names this server: the Host it was reached by (checked already), or the
        public URL (behind a proxy that ends TLS)."""
        parts = urlsplit(origin.strip())
        if parts.scheme not in DEFAULT_PORTS or parts.path or parts.query:
            return False
        seen = _endpoint(parts.scheme, parts.netloc)
        if seen is None:
            return False
        return seen in (_endpoint(parts.scheme, host), self.public)
