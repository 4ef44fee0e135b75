"""OpenTelemetry: the per-request server span and OTel HTTP metrics (``sink.py``), their
attribute values (``attributes.py``), raw rows as log records (``logs.py``) and the SDK
set-up (``setup.py``).

Importing this package never loads ``opentelemetry``: that is imported when a sink or
provider is created, so an app without the ``otel`` extra never needs it. The names below
stay importable from ``flask_usage_otel.otel``.
"""

from __future__ import annotations

from .attributes import NETWORK_PROTOCOL_VERSIONS
from .logs import EVENT_NAME, build_logger_provider
from .setup import (
    INSTRUMENTATION_NAME,
    OpenTelemetryNotConfiguredWarning,
    build_meter_provider,
    build_tracer_provider,
    configure_opentelemetry,
    create_otel_sink,
    otel_metrics_enabled,
)
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
