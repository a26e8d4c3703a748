"""The HTTP server span: OpenTelemetry's ASGI middleware, one span per request.

`exclude_spans=["send", "receive"]`: without it the middleware makes a span per message sent, so
one SSE stream of 50 events made 56 spans (../shared/reference/scale-out.md section 8.1); with
it, a stream is one span however long it lasts. /metrics (scraped every few seconds) and /health
(polled by load balancers) are left out. Nothing is added when tracing is off, and the
instrumentation is not even imported.
"""

from __future__ import annotations

from starlette.middleware import Middleware

from backspace.telemetry.tracing import Tracing

EXCLUDED_URLS = r"/metrics$,/health$"  # regular expressions, searched in the request's URL


def asgi_tracing(tracing: Tracing) -> list[Middleware]:
    """The middleware to add (innermost of the app's), or none when tracing is off."""
    if tracing.provider is None:
        return []
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return [
        Middleware(
            OpenTelemetryMiddleware,
            tracer_provider=tracing.provider,
            excluded_urls=EXCLUDED_URLS,
            exclude_spans=["send", "receive"],
        )
    ]
