"""Prometheus metrics, fed from the run's own events.

Why events: every run already reports what happened to it as events (start, progress per stage,
usage, complete), and the runner stores each one in one place. `Metrics.on_event` is called there
for every event, so one observer gives the run counters, the stage and queue timings, tokens and
cost, and no stage needs a second reporting path. What no event says (sandbox creation latency,
SSE viewers, Slack and GitHub API errors) has a method or a metric of its own.

Each app has its OWN CollectorRegistry (tests build several apps in one process; the default
global registry would mix them). No label holds a run id, a repository or any free text: the
label values are the closed sets of statuses, sources, stages, token types and the model name,
and error labels are cut to a short identifier.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from backspace.orchestrator.events import Event

RUN_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0)
WAIT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STAGE_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
CREATE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_TYPES = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_read_input_tokens": "cache_read",
    "cache_creation_input_tokens": "cache_write",
}
LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.:/-]")
log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

QueueCounts = Callable[[], Mapping[str, int]]


def label(value: object, limit: int = 64) -> str:
    """A label value from an identifier (a method, an error code): a short, plain token, so a
    label can never carry free text (a message, a token) into the metrics."""
    return LABEL_CHARS.sub("_", str(value))[:limit] or "unknown"


@dataclass
class _Live:
    """What the observer remembers of one run between its events."""

    source: str
    stage: str | None = None
    stage_since: float = 0.0
    tokens: dict[str, float] | None = None


class _QueueDepth:
    """`backspace_runs{status}` read when scraped, from a callable (the runner's counts today;
    the store's cluster-wide counts once the queue lives in the database)."""

    def __init__(self, counts: QueueCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "backspace_runs", "Runs queued and running now, by status", labels=["status"]
        )
        for status, count in sorted(self.counts().items()):
            family.add_metric([status], float(count))
        yield family


class Metrics:
    def __init__(self, model: str = "", queue_counts: QueueCounts | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.model = label(model or "unknown")
        self.registry = r = CollectorRegistry()
        self._live: dict[str, _Live] = {}
        self.runs_started = Counter(
            "backspace_runs_started", "Runs accepted (queued), by source", ["source"], registry=r
        )
        self.runs_finished = Counter(
            "backspace_runs_finished",
            "Runs that ended, by final status and source",
            ["status", "source"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "backspace_queue_wait_seconds",
            "From queued to started",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.run_duration = Histogram(
            "backspace_run_duration_seconds",
            "From started to ended, by final status",
            ["status"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "backspace_stage_duration_seconds",
            "Time spent in each stage of a run",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "backspace_model_tokens",
            "Model tokens, by model and type",
            ["model", "type"],
            registry=r,
        )
        self.cost = Counter(
            "backspace_model_cost_usd", "Model spend in US dollars", ["model"], registry=r
        )
        self.sandbox_create = Histogram(
            "backspace_sandbox_create_seconds",
            "Time to create a run's sandbox, by backend",
            ["backend"],
            buckets=CREATE_BUCKETS,
            registry=r,
        )
        self.sse_viewers = Gauge(
            "backspace_sse_viewers", "Open event streams (SSE) on this process", registry=r
        )
        self.slack_errors = Counter(
            "backspace_slack_api_errors",
            "Slack Web API calls that failed, by method and error",
            ["method", "error"],
            registry=r,
        )
        self.github_errors = Counter(
            "backspace_github_api_errors",
            "GitHub calls that failed, by operation and error code",
            ["method", "error"],
            registry=r,
        )
        self.events = Counter(
            "backspace_events_appended", "Run events stored, by type", ["type"], registry=r
        )
        if queue_counts is not None:
            r.register(_QueueDepth(queue_counts))

    # --- the one observer ---------------------------------------------------------------------
    def on_event(self, source: str, event: Event) -> None:
        """Called for every event the runner stores (Runner._emit); never raises into it."""
        try:
            self._observe(source, event)
        except Exception:  # a counting mistake must never fail a run
            log.exception("metrics: could not count a %s event", event.type)

    def _observe(self, source: str, event: Event) -> None:
        now = time.monotonic()
        kind = str(event.type)
        self.events.labels(label(kind)).inc()
        live = self._live.get(event.run_id)
        if kind == "start":  # where it was submitted; it may run on another replica
            self.runs_started.labels(label(source)).inc()
            return
        if live is None:
            live = self._live[event.run_id] = _Live(label(source or "unknown"))
        data = event.data
        if kind == "progress" and data.get("stage"):
            self._stage(live, str(data["stage"]), now)
        elif kind == "usage":
            self._usage(live, data)
        elif kind == "complete":
            self._stage(live, None, now)
            status = label(data.get("status", "unknown"))
            self.runs_finished.labels(status, live.source).inc()
            duration = data.get("duration_ms")
            if isinstance(duration, int | float) and duration > 0:
                self.run_duration.labels(status).observe(duration / 1000)
            self._live.pop(event.run_id, None)

    def on_claimed(self, source: str, run_id: str, waited: float) -> None:
        """A worker here took the run from the queue, after `waited` seconds there."""
        try:
            self.queue_wait.observe(waited)
            self._live[run_id] = _Live(label(source or "unknown"))
        except Exception:
            log.exception("metrics: could not count a claim")

    def _stage(self, live: _Live, stage: str | None, now: float) -> None:
        if stage == live.stage:
            return
        if live.stage is not None:
            self.stage_duration.labels(label(live.stage)).observe(now - live.stage_since)
        live.stage, live.stage_since = stage, now

    def _usage(self, live: _Live, data: Mapping[str, Any]) -> None:
        """`usage` events carry the run's running totals: the counters move by the increase."""
        seen = live.tokens if live.tokens is not None else {}
        for field, kind in (*TOKEN_TYPES.items(), ("cost_usd", "")):
            value = data.get(field)
            if not isinstance(value, int | float):
                continue
            increase = value - seen.get(field, 0)
            seen[field] = value
            if increase <= 0:
                continue
            if kind:
                self.tokens.labels(self.model, kind).inc(increase)
            else:
                self.cost.labels(self.model).inc(increase)
        live.tokens = seen

    # --- what no event says ---------------------------------------------------------------------
    def sandbox_created(self, backend: str, seconds: float) -> None:
        self.sandbox_create.labels(label(backend)).observe(seconds)

    def slack_error(self, method: str, error: str) -> None:
        self.slack_errors.labels(label(method), label(error)).inc()

    def github_error(self, method: str, error: str) -> None:
        self.github_errors.labels(label(method), label(error)).inc()

    def render(self) -> bytes:
        """The text exposition format, for /metrics."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
