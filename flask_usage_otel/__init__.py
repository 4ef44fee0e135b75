"""flask-usage-otel: track how a Flask app is used, into Prometheus, OpenTelemetry and SQL.

Everything the documentation imports comes from here, or from a documented subpackage:
``flask_usage_otel.otel`` (OpenTelemetry set-up), ``flask_usage_otel.gunicorn`` and
``flask_usage_otel.gunicorn_config`` (server hooks), and Flask-Track-Usage's own module paths
(``flask_usage_otel.storage``, ``.storage.sql``, ``.storage.printer``, ``.storage.output``,
``.summarization``).
"""

from __future__ import annotations

import warnings

from ._version import __version__
from .config import ConfigError, Settings
from .extension import TrackUsage
from .privacy import DEFAULT_REDACTED_QUERY_PARAMS, DEFAULT_REDACTED_VIEW_ARGS, ErasureRefused
from .prometheus import PrometheusMetrics, PrometheusSink
from .record import UNMATCHED_ROUTE, UsageRecord
from .sinks import QueueingSink, RequestState, Sink
from .storage.base import UsageStorage
from .writer import DROP_REASONS, Observer

__all__ = [
    "DEFAULT_REDACTED_QUERY_PARAMS",
    "DEFAULT_REDACTED_VIEW_ARGS",
    "DROP_REASONS",
    "UNMATCHED_ROUTE",
    "ConfigError",
    "ErasureRefused",
    "Observer",
    "OtelSink",
    "PartitionedSQLStorage",
    "PrometheusMetrics",
    "PrometheusSink",
    "QueueingSink",
    "RequestState",
    "SQLStorage",
    "Settings",
    "Sink",
    "TrackUsage",
    "UsageRecord",
    "UsageStorage",
    "__version__",
    "build_logger_provider",
    "configure_opentelemetry",
]


def __getattr__(name: str) -> object:
    # Optional parts import their optional dependencies only when asked for.
    if name == "SQLStorage":
        from .storage.sql import SQLStorage

        return SQLStorage
    if name == "PartitionedSQLStorage":
        from .storage.partitions import PartitionedSQLStorage

        return PartitionedSQLStorage
    if name in ("OtelSink", "configure_opentelemetry", "build_logger_provider"):
        from . import otel

        return getattr(otel, name)
    if name == "Storage":
        # One thing is called Storage: Flask-Track-Usage's base class, flask_usage_otel.storage.Storage.
        warnings.warn(
            "flask_usage_otel.Storage is now flask_usage_otel.UsageStorage (the protocol of batch storages)",
            DeprecationWarning,
            stacklevel=2,
        )
        return UsageStorage
    raise AttributeError(f"module 'flask_usage_otel' has no attribute {name!r}")
