"""The Starlette application: the routes, the middleware, the error handlers, the life span."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from backspace import __version__
from backspace.config import Settings
from backspace.http.crosssite import CrossSiteCheck
from backspace.http.errors import exception_handlers
from backspace.http.hosts import HostCheck, allowed_hosts
from backspace.http.metrics import metrics_route, metrics_server
from backspace.http.model_gateway import gateway_routes
from backspace.http.ratelimit import RateLimiter
from backspace.http.routes import routes
from backspace.orchestrator.service import Service
from backspace.runtime import tune_garbage_collector, watch_children_with_pidfds
from backspace.telemetry import Telemetry
from backspace.telemetry.asgi import asgi_tracing

log = logging.getLogger(__name__)


class SlackEndpoint(Protocol):
    """A front end as this app serves it (Slack at /slack/events, the GitHub webhook at
    /github/webhook): one endpoint, and its own life span."""

    async def endpoint(self, request: Request) -> Response: ...
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...


def web_app(
    settings: Settings,
    service: Service,
    slack: SlackEndpoint | None,
    github: SlackEndpoint | None = None,
    telemetry: Telemetry | None = None,
) -> Starlette:
    """`github` is the GitHub webhook's front end (served at /github/webhook), when enabled;
    `telemetry` adds /metrics (or its own port) and, when tracing is on, a span per request."""
    telemetry = telemetry or Telemetry()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.startup()
        if slack is not None:
            await slack.start()
        if github is not None:
            await github.start()
        watch_children_with_pidfds()
        tune_garbage_collector()
        log.info("backspace %s ready at %s", __version__, service.public_url)
        service.preload_model_sdk()  # after the freeze above: it freezes what it imports too
        try:
            async with contextlib.AsyncExitStack() as extra:
                if settings.metrics_port:
                    await extra.enter_async_context(
                        metrics_server(settings, telemetry.metrics, service.redactor)
                    )
                yield
        finally:
            await service.aclose()
            telemetry.tracing.shutdown()  # after the runs: their last spans are exported
            if slack is not None:
                await slack.aclose()
            if github is not None:
                await github.aclose()

    app = Starlette(
        debug=False,
        routes=[
            *routes(),
            *gateway_routes(),
            *([] if settings.metrics_port else [metrics_route(settings, telemetry.metrics)]),
        ],
        lifespan=lifespan,
        middleware=[
            # Outermost first: the Host is checked before the Origin is compared with it.
            Middleware(HostCheck, allowed=allowed_hosts(settings, service.public_url)),
            Middleware(CrossSiteCheck, public_url=service.public_url),
            *asgi_tracing(telemetry.tracing),
        ],
        exception_handlers=exception_handlers(service.redactor),
    )
    app.state.settings = settings
    app.state.service = service
    app.state.rate_limiter = RateLimiter(settings.runs_per_minute, settings.runs_burst)
    app.state.slack = slack
    app.state.github = github
    app.state.telemetry = telemetry
    return app
