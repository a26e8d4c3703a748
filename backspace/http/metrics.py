"""`/metrics` (Prometheus text format): on the API's port behind the API key when auth is on, or
alone on BACKSPACE_METRICS_PORT (a second small server in this process), so that a load balancer
in front of the API need not expose it.

The same key check applies on both ports: the figures hold no run id, repository or text, but
how busy a server is and how often it fails is an operator's business, not the internet's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backspace.config import Settings
from backspace.http.auth import require_api_key
from backspace.http.errors import exception_handlers
from backspace.orchestrator.redact import Redactor
from backspace.telemetry.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)


def metrics_route(settings: Settings, metrics: Metrics) -> Route:
    async def endpoint(request: Request) -> Response:
        if settings.require_auth:
            require_api_key(
                request, settings.api_key.get_secret_value() if settings.api_key else None
            )
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return Route("/metrics", endpoint, methods=["GET"])


@contextlib.asynccontextmanager
async def metrics_server(
    settings: Settings, metrics: Metrics, redactor: Redactor
) -> AsyncIterator[None]:
    """Serve /metrics alone on settings.metrics_port (same HOST) while the app runs. uvicorn's
    startup, main loop and shutdown are driven here, not `serve()`, which would take over the
    process's signal handlers from the main server."""
    import uvicorn

    app = Starlette(
        routes=[metrics_route(settings, metrics)], exception_handlers=exception_handlers(redactor)
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.metrics_port or 0,
        lifespan="off",
        log_config=None,
        access_log=False,
        loop="asyncio",
        timeout_keep_alive=5,
        limit_concurrency=64,
    )
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    if server.should_exit:  # the port could not be bound: uvicorn logged why
        raise RuntimeError(
            f"could not listen on BACKSPACE_METRICS_PORT={settings.metrics_port}: "
            "choose a free port, or unset it to serve /metrics on PORT"
        )
    log.info("metrics at http://%s:%d/metrics", settings.host, settings.metrics_port)
    task = asyncio.create_task(server.main_loop(), name="metrics-server")
    try:
        yield
    finally:
        server.should_exit = True
        await task
        await server.shutdown()
