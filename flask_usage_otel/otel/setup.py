"""OpenTelemetry set-up: whether an app gets an OTel sink, and the SDK providers and exporters.

Importing it never loads ``opentelemetry``: that is imported when a sink or provider is
created, so an app without the ``otel`` extra never needs it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..config import ConfigError, Settings

if TYPE_CHECKING:
    from flask import Flask

    from .sink import OtelSink

INSTRUMENTATION_NAME = "flask_usage_otel"

_EXPORTERS = {"otlp": "otlp", "otlp_proto_http": "otlp", "otlp_proto_grpc": "otlp", "console": "console"}

# A library never installs global providers (opentelemetry-instrumentation-flask does not
# either): spans go through the tracer provider given to TrackUsage, else the global one,
# which is a proxy until the app or `opentelemetry-instrument` sets the SDK up, and which
# then forwards to the provider set, whenever that happens. ``configure_opentelemetry`` is
# the explicit helper for apps that want the SDK set up in code.

_TRACES_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_SET_UP_HINT = (
    "run the app under `opentelemetry-instrument` (pip install opentelemetry-distro), or call "
    "flask_usage_otel.configure_opentelemetry() before TrackUsage, or pass TrackUsage(tracer_provider=...)"
)


class OpenTelemetryNotConfiguredWarning(UserWarning):
    """Spans or metrics are asked for, but no OpenTelemetry SDK is set up to export them."""


def create_otel_sink(
    app: Flask,
    settings: Settings,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    logger_provider: Any = None,
    *,
    request_hook: Any = None,
    response_hook: Any = None,
) -> OtelSink | None:
    """The app's OTel sink, or None when OpenTelemetry is off for it.

    ``TRACK_USAGE_OTEL = False``: off. ``True``: on, with the given tracer provider or the
    global one. ``None`` (default): on when ``OTEL_SDK_DISABLED`` is not true and one of these
    holds: a ``tracer_provider`` was given; the app (or ``opentelemetry-instrument``) set a
    global tracer provider before ``init_app``; the environment asks for trace export
    (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``).

    Never sets a global provider. When spans would go nowhere because no provider is set
    up yet, it says so with an :class:`OpenTelemetryNotConfiguredWarning` naming what is missing.

    ``request_hook``/``response_hook`` and the ``OTEL_*`` variables of header capture and of the
    exception log event (``OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN``, which emits through
    ``logger_provider``, else the global SDK one) are applied by :class:`~.extras.SpanExtras`.

    :raises ConfigError: ``TRACK_USAGE_OTEL`` (or ``TRACK_USAGE_OTEL_METRICS``) is True but
        opentelemetry is not installed; ``OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN`` asks for logs
        and there is no logger provider.
    """
    if settings.otel is False:
        return None
    if settings.otel is None and not _enabled_by_default(tracer_provider):
        return None
    if not _importable("opentelemetry.trace"):
        raise ConfigError("TRACK_USAGE_OTEL", "needs OpenTelemetry: pip install 'flask-usage-otel[otel]'")

    if tracer_provider is None:
        from opentelemetry import trace

        tracer_provider = trace.get_tracer_provider()
        if not _is_configured(tracer_provider):
            why = (
                "TRACK_USAGE_OTEL is True" if settings.otel else f"{_trace_export_variable()} is set in the environment"
            )
            _warn(
                f"{why}, but no OpenTelemetry tracer provider is set up when init_app runs for app "
                f"{app.name!r}: its spans are dropped until one is set globally. To export them, {_SET_UP_HINT}."
            )
    meter = None
    if otel_metrics_enabled(settings):
        if meter_provider is None:
            from opentelemetry import metrics

            meter_provider = metrics.get_meter_provider()
            if settings.otel_metrics and not _is_configured(meter_provider):
                _warn(
                    f"TRACK_USAGE_OTEL_METRICS is True, but no OpenTelemetry meter provider is set up when "
                    f"init_app runs for app {app.name!r}: its measurements are dropped until one is set globally. "
                    "To export them, run under `opentelemetry-instrument`, or call "
                    "flask_usage_otel.configure_opentelemetry(metrics=True), or pass TrackUsage(meter_provider=...)."
                )
        meter = meter_provider.get_meter(INSTRUMENTATION_NAME, __version__)

    from .sink import OtelSink  # imports opentelemetry's semantic conventions: only now that they are needed

    extras = None
    env = settings.otel_env
    from .extras import SpanExtras

    if SpanExtras.wanted(env, request_hook, response_hook):
        otel_logger = _exception_logger(logger_provider) if env.exception_logs else None
        extras = SpanExtras(app, env, request_hook=request_hook, response_hook=response_hook, otel_logger=otel_logger)
    return OtelSink(
        tracer_provider.get_tracer(INSTRUMENTATION_NAME, __version__),
        meter,
        capture_user=settings.otel_capture_user,
        duration_buckets=settings.buckets,
        extras=extras,
    )


def _exception_logger(logger_provider: Any) -> Any:
    """The logger of ``http.server.request.exception`` events: the given provider's, else the global SDK one's."""
    from ..otel_env import EXCEPTION_SIGNAL
    from .logs import sdk_logger_provider

    needs = "asks for exceptions as log events, which need a logger provider (or unset the variable)"
    return sdk_logger_provider(logger_provider, EXCEPTION_SIGNAL, needs).get_logger(INSTRUMENTATION_NAME, __version__)


def otel_metrics_enabled(settings: Settings) -> bool:
    """``TRACK_USAGE_OTEL_METRICS``, defaulting to on only when the Prometheus metrics are off.

    With both on, an OTLP pipeline that also scrapes ``/metrics`` would count every request twice.
    """
    if settings.otel_metrics is not None:
        return settings.otel_metrics
    return not settings.prometheus


def configure_opentelemetry(
    service_name: str | None = None,
    *,
    exporter: str | None = None,
    metrics: bool = False,
) -> Any:
    """Set up the OpenTelemetry SDK for this process, as ``opentelemetry-instrument`` would.

    The app calls this itself, once, at start-up (before ``TrackUsage``, so the
    automatic mode sees it; in a gunicorn worker, from the app factory): it creates an SDK
    ``TracerProvider`` exporting through a ``BatchSpanProcessor`` and sets it as the global
    provider, so the app's own ``trace.get_tracer(...)`` spans nest under the server spans
    and go to the same place. It is shut down (and flushed) at exit. ``TrackUsage`` itself
    never sets a global provider.

    :param service_name: ``service.name`` when ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``
        name none.
    :param exporter: ``"otlp"`` (OTLP over HTTP/protobuf, or gRPC when
        ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL=grpc``, to ``OTEL_EXPORTER_OTLP_*``) or
        ``"console"``; default: ``OTEL_TRACES_EXPORTER``, else ``"otlp"``.
    :param metrics: also set up a global SDK ``MeterProvider`` exporting periodically the same way
        (for ``TRACK_USAGE_OTEL_METRICS``).
    :returns: the global tracer provider. One set up already (by ``opentelemetry-instrument``
        or an earlier call) is kept and returned unchanged, so calling this under the launcher
        is harmless.
    :raises ValueError: unknown exporter, or OpenTelemetry's SDK or exporter package is missing.
    """
    if not _importable("opentelemetry.sdk.trace"):
        raise ValueError("configure_opentelemetry needs the OpenTelemetry SDK: pip install 'flask-usage-otel[otel]'")
    from opentelemetry import trace

    name = _exporter_name(exporter)
    current = trace.get_tracer_provider()
    if _is_configured(current):
        provider = current  # opentelemetry-instrument, or the app, came first: theirs stays
    else:
        provider = build_tracer_provider(name, service_name)
        trace.set_tracer_provider(provider)
    if metrics:
        from opentelemetry import metrics as metrics_api

        if not _is_configured(metrics_api.get_meter_provider()):
            metrics_api.set_meter_provider(build_meter_provider(name, service_name))
    return provider


def build_tracer_provider(exporter: str, service_name: str | None = None) -> Any:
    """An SDK ``TracerProvider`` exporting through a ``BatchSpanProcessor`` (``"otlp"`` or ``"console"``).

    Not set globally: pass it to ``TrackUsage(tracer_provider=...)`` or ``trace.set_tracer_provider``.
    The OTLP exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables, the resource
    reads ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``; ``service_name`` is used when they
    name no service. Spans are queued and exported by a background thread: a full queue drops
    spans, it never blocks a request.
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    name = _exporter_name(exporter)
    span_exporter = _otlp_exporter("trace", "OTLPSpanExporter") if name == "otlp" else ConsoleSpanExporter()
    provider = TracerProvider(resource=service_resource(service_name))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


def build_meter_provider(exporter: str, service_name: str | None = None) -> Any:
    """An SDK ``MeterProvider`` exporting periodically (``"otlp"`` or ``"console"``) from a background thread."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

    name = _exporter_name(exporter)
    metric_exporter = _otlp_exporter("metric", "OTLPMetricExporter") if name == "otlp" else ConsoleMetricExporter()
    return MeterProvider(
        metric_readers=[PeriodicExportingMetricReader(metric_exporter)], resource=service_resource(service_name)
    )


def _exporter_name(exporter: str | None) -> str:
    if exporter is None:
        names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
        exporter = names[0] if names else "otlp"
    name = _EXPORTERS.get(exporter.lower(), "") if isinstance(exporter, str) else ""
    if not name:
        raise ValueError(f"exporter must be 'otlp' or 'console', got {exporter!r}")
    return name


def _otlp_exporter(signal: str, class_name: str) -> Any:
    protocol = os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}S_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    transport = "grpc" if protocol.strip().lower() == "grpc" else "http"
    package = f"opentelemetry-exporter-otlp-proto-{transport}"
    try:
        module = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{transport}.{signal}_exporter")
    except ImportError:
        raise ValueError(f"the 'otlp' exporter over {transport} needs {package}: pip install {package}") from None
    return getattr(module, class_name)()


def service_resource(service_name: str | None) -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create()
    named = not str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service")
    if service_name and not named:
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    return resource


def _enabled_by_default(tracer_provider: Any) -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if tracer_provider is not None:
        return True
    # A global provider can only have been set if the API is loaded already (or named by
    # OTEL_PYTHON_TRACER_PROVIDER): asking costs an app without OpenTelemetry no import.
    named = os.environ.get("OTEL_PYTHON_TRACER_PROVIDER") and _importable("opentelemetry.trace")
    if sys.modules.get("opentelemetry.trace") is not None or named:
        from opentelemetry import trace

        if _is_configured(trace.get_tracer_provider()):
            return True
    # Export asked for in the environment but nothing set up: on, so that the missing set-up
    # is reported at init_app (and a provider set later is used), not silently ignored.
    return _trace_export_variable() is not None and _importable("opentelemetry.trace")


def _trace_export_variable() -> str | None:
    """The environment variable asking for trace export, if any."""
    names = {n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()}
    if names - {"none"}:
        return "OTEL_TRACES_EXPORTER"
    for variable in _TRACES_ENDPOINT_VARIABLES:
        if os.environ.get(variable, "").strip():
            return variable
    return None


def _is_configured(provider: Any) -> bool:
    """Whether a global provider was set (by the app, a distro, opentelemetry-instrument), not the API's proxy."""
    return "Proxy" not in type(provider).__name__  # ProxyTracerProvider, _ProxyMeterProvider


def _warn(message: str) -> None:
    warnings.warn(message, OpenTelemetryNotConfiguredWarning, stacklevel=5)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False
