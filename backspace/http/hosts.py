"""The Host check: answer only to the names this server is reached by (DNS rebinding).

A web page on an attacker's name that resolves to this server sends its own name as Host; the
browser then lets it read every answer. Starlette's TrustedHostMiddleware decides which names
are this server's; this module builds its list from HOST, BACKSPACE_PUBLIC_URL and
BACKSPACE_ALLOWED_HOSTS, and answers a refusal with a JSON error that says how to fix it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from backspace.config import Settings
from backspace.http.errors import HTTPProblem, problem_response

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
"""Names no other site can be served from: always this machine's."""

ANY_ADDRESS = ("0.0.0.0", "::", "")  # noqa: S104
_PASSED = "backspace.host_checked"


def _as_host(name: str) -> str:
    """A host name as it appears in a Host header: IPv6 addresses in brackets, lower case."""
    name = name.strip().lower()
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


def allowed_hosts(settings: Settings, public_url: str) -> list[str]:
    """Loopback names, the address listened on (unless any), the public URL's host, the rest."""
    names = list(LOOPBACK)
    if settings.host.strip() not in ANY_ADDRESS:
        names.append(_as_host(settings.host))
    public = urlsplit(public_url).hostname
    if public:
        names.append(_as_host(public))
    names.extend(settings.allowed_host_patterns)
    return list(dict.fromkeys(names))


class HostCheck:
    """Pass a request on when TrustedHostMiddleware accepts its Host; else a 400 that says why."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = allowed
        self.check = TrustedHostMiddleware(_mark_passed, allowed, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.check(scope, receive, _discard)  # its own refusal goes nowhere
        if scope.pop(_PASSED, False):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")
        shown = repr(host[:100]) if host else "missing"
        problem = HTTPProblem(
            400,
            f"the Host header ({shown}) is not a name this server answers to: reach it by "
            f"one of {', '.join(self.allowed)}, or add the name to BACKSPACE_ALLOWED_HOSTS "
            "(or set BACKSPACE_PUBLIC_URL)",
        )
        await problem_response(problem)(scope, receive, send)


async def _mark_passed(scope: Scope, receive: Receive, send: Send) -> None:
    scope[_PASSED] = True


async def _discard(message: object) -> None:
    return None
