"""The web interface: static HTML, CSS and JavaScript from `static/`, no build step.

The pages hold no data (they fetch it from the API, which keeps its authentication), so they are
public. The CSP forbids inline scripts and any other origin: the agent's output is untrusted.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


def _page(name: str) -> Response:
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=SECURITY_HEADERS)


async def index_page(request: Request) -> Response:
    """`/`: start a run, and the recent runs."""
    return _page("index.html")


async def run_page(request: Request) -> Response:
    """`/runs/{id}`: one run, live (the page reads the id from its own address)."""
    return _page("run.html")


def web_routes() -> list[BaseRoute]:
    return [
        Route("/", index_page, methods=["GET"]),
        Route("/runs/{run_id}", run_page, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
