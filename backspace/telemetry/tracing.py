"""OpenTelemetry traces: one trace per run, off unless an OTLP endpoint is configured.

Why this shape: the SDK costs an import and a thread, and a server without a collector must not
pay for either, so nothing of `opentelemetry.sdk` is imported until `Tracing.from_environment`
finds `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`). The standard
`OTEL_*` variables (service name, resource attributes, headers, compression, sampler, batch
delays) are read by the SDK itself, not re-implemented here.

Spans are opened with `span(name, attributes)` anywhere in a run (pipeline, agent loop): the
run's tracer travels in a context variable set by `Tracing.run`, so code deep in the agent needs
no tracer handed down, and with tracing off `span` is a context-variable read and nothing more.
The provider is always passed explicitly (never made the process's global one): tests build
several apps in one process, and Daytona's own OTel would fight over a global.

Nothing that may hold a secret becomes an attribute: no prompt, no URL, no exception message
(a failed span carries the error's type and backspace's error code only).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from backspace import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from backspace.orchestrator.run import RunContext

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
SCOPE = "backspace"
TRACEPARENT = "traceparent"  # the key in a run's meta: the request that submitted it

_tracer: contextvars.ContextVar[Tracer | None] = contextvars.ContextVar(
    "backspace_tracer", default=None
)

Attributes = Mapping[str, str | int | float | bool]


def enabled_by(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint is set, and neither
    OTEL_SDK_DISABLED nor OTEL_TRACES_EXPORTER=none turns them off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


class Tracing:
    """The server's tracer provider (None: tracing is off) and the run span."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self._tracer: Tracer | None = provider.get_tracer(SCOPE, __version__) if provider else None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Tracing:
        """Off (no SDK imported) unless an OTLP endpoint is set; else a provider exporting in
        batches over OTLP/HTTP, configured by the standard OTEL_* variables."""
        env = os.environ if environ is None else environ
        if not enabled_by(env):
            return cls(None)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        )
        # Resource.create lets explicit attributes win over the environment: the default name
        # is given only when the operator named none.
        attributes: dict[str, str] = {"service.version": __version__}
        if not named:
            attributes["service.name"] = "backspace"
        provider = TracerProvider(resource=Resource.create(attributes))  # sampler: OTEL_TRACES_*
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider)

    @property
    def on(self) -> bool:
        return self._tracer is not None

    def shutdown(self) -> None:
        """Export what is buffered, then stop (called once, as the server stops)."""
        if self.provider is not None:
            self.provider.shutdown()

    @contextlib.contextmanager
    def run(self, ctx: RunContext, engine: str) -> Iterator[None]:
        """The run's root span, from the moment it was queued; its `queue.wait` child ends now.

        A root, not a child of whatever span submitted the run (the run outlives that request,
        and in a fleet it runs on another replica): the submitting request's span is a link,
        read from the `traceparent` saved in the run's meta."""
        tracer = self._tracer
        if tracer is None:
            yield
            return
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        request = ctx.request
        queued_ns = int(ctx.created_at * 1e9)
        root = tracer.start_span(
            "run",
            context=otel_context.Context(),  # no parent: the task inherited the HTTP request's
            kind=trace.SpanKind.INTERNAL,
            start_time=queued_ns,
            links=_links(request.meta.get(TRACEPARENT)),
            attributes={
                "backspace.run.id": ctx.run_id,
                "backspace.run.source": request.source,
                "backspace.repo": request.repo.name,
                "backspace.engine": engine,
                "backspace.attempt": ctx.attempt,
                **({"backspace.run.parent_id": request.parent_id} if request.parent_id else {}),
            },
        )
        token = _tracer.set(tracer)
        try:
            with trace.use_span(root, end_on_exit=True, record_exception=False) as active:
                tracer.start_span("queue.wait", start_time=queued_ns).end(time.time_ns())
                with _failures(active):
                    yield
        finally:
            _tracer.reset(token)

    def traceparent(self) -> dict[str, str]:
        """{"traceparent": ...} of the current span (the HTTP request), to save in a run's
        meta; {} when tracing is off or no span is current."""
        if self._tracer is None:
            return {}
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if not trace.get_current_span().get_span_context().is_valid:
            return {}
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        return {TRACEPARENT: carrier[TRACEPARENT]} if TRACEPARENT in carrier else {}


@contextlib.contextmanager
def span(name: str, attributes: Attributes | None = None) -> Iterator[Span | None]:
    """A child of the current span, in the current run's trace; with tracing off (or outside
    a run), nothing at all. A failure marks the span with its type and code, never its text."""
    tracer = _tracer.get()
    if tracer is None:
        yield None
        return
    with (
        tracer.start_as_current_span(
            name, attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as current,
        _failures(current),
    ):
        yield current


@contextlib.contextmanager
def _failures(current: Span) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        from opentelemetry.trace import Status, StatusCode

        code = getattr(exc, "code", None)
        kind = type(exc).__name__
        current.set_attribute("error.type", str(code) if isinstance(code, str) else kind)
        current.set_status(Status(StatusCode.ERROR, kind))
        raise


def _links(traceparent: Any) -> list[Any]:
    if not isinstance(traceparent, str) or not traceparent:
        return []
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({TRACEPARENT: traceparent})
    linked = trace.get_current_span(context).get_span_context()
    return [trace.Link(linked, {"backspace.link": "submitted_by"})] if linked.is_valid else []
