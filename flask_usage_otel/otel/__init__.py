"""OpenTelemetry: the per-request server span and OTel HTTP metrics (``sink.py``), the
attributes of spans, metrics and log records (``attributes.py``, named by
``opentelemetry.semconv``), raw rows as log records (``logs.py``) and the SDK set-up (``setup.py``).

Importing this package never loads ``opentelemetry``: that is imported when a sink or
provider is created, so an app without the ``otel`` extra never needs it. The names below
stay importable from ``flask_usage_otel.otel`` (``OtelSink`` and ``NETWORK_PROTOCOL_VERSIONS``
are loaded on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .setup import (
    INSTRUMENTATION_NAME,
    OpenTelemetryNotConfiguredWarning,
    build_meter_provider,
    build_tracer_provider,
    configure_opentelemetry,
    create_otel_sink,
    otel_metrics_enabled,
)

if TYPE_CHECKING:
    from .attributes import NETWORK_PROTOCOL_VERSIONS
    from .logs import EVENT_NAME, build_logger_provider
    from .sink import OtelSink

__all__ = [
    "EVENT_NAME",
    "INSTRUMENTATION_NAME",
    "NETWORK_PROTOCOL_VERSIONS",
    "OpenTelemetryNotConfiguredWarning",
    "OtelSink",
    "build_logger_provider",
    "build_meter_provider",
    "build_tracer_provider",
    "configure_opentelemetry",
    "create_otel_sink",
    "otel_metrics_enabled",
]


def __getattr__(name: str) -> object:
    # The sink and its attribute builder import opentelemetry's semantic conventions: only when asked for.
    if name == "OtelSink":
        from .sink import OtelSink

        return OtelSink
    if name == "NETWORK_PROTOCOL_VERSIONS":
        from .attributes import NETWORK_PROTOCOL_VERSIONS

        return NETWORK_PROTOCOL_VERSIONS
    if name in ("EVENT_NAME", "build_logger_provider"):
        from . import logs

        return getattr(logs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
