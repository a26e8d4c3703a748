"""Telemetry: traces (tracing.py, OpenTelemetry, off unless configured) and metrics (metrics.py,
Prometheus, always counted, served at /metrics). `Telemetry` is the pair one app owns."""

from __future__ import annotations

from dataclasses import dataclass, field

from backspace.telemetry.metrics import Metrics
from backspace.telemetry.tracing import Tracing


@dataclass
class Telemetry:
    """One app's tracer provider (maybe none) and its own metrics registry."""

    tracing: Tracing = field(default_factory=Tracing)
    metrics: Metrics = field(default_factory=Metrics)


__all__ = ["Metrics", "Telemetry", "Tracing"]
