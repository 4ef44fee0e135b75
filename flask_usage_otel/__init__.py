"""flask-usage-otel: track how a Flask app is used, into Prometheus, OpenTelemetry and SQL."""

from __future__ import annotations

from ._version import __version__
from .config import ConfigError, Settings
from .extension import TrackUsage
from .prometheus import PrometheusMetrics, PrometheusSink
from .record import UNMATCHED_ROUTE, UsageRecord
from .sinks import RequestState, Sink
from .storage.base import Storage

__all__ = [
    "UNMATCHED_ROUTE",
    "ConfigError",
    "OtelSink",
    "PrometheusMetrics",
    "PrometheusSink",
    "RequestState",
    "SQLStorage",
    "Settings",
    "Sink",
    "Storage",
    "TrackUsage",
    "UsageRecord",
    "__version__",
    "configure_opentelemetry",
]


def __getattr__(name: str) -> object:
    # Optional parts import their optional dependencies only when asked for.
    if name == "SQLStorage":
        from .storage.sql import SQLStorage

        return SQLStorage
    if name == "OtelSink":
        from .otel import OtelSink

        return OtelSink
    if name == "configure_opentelemetry":
        from .otel import configure_opentelemetry

        return configure_opentelemetry
    raise AttributeError(f"module 'flask_usage_otel' has no attribute {name!r}")
