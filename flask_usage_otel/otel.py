"""OpenTelemetry: one SERVER span per tracked request, optional OTel HTTP metrics, OTLP export.

Importing this module loads only the standard library: ``opentelemetry`` is imported
when a sink is created, so an app without the ``otel`` extra never loads it.

A request's span is found in one of three ways, decided per request with one dict
lookup and one context read:

* **own**: nothing else traces the request; the sink starts the SERVER span when the
  request is admitted (before the app's URL value preprocessors and ``before_request``
  hooks, so the view's spans nest under it), dated from the moment the environ reached
  the ``wsgi_app`` wrapper; its context is detached when the wrapper unwinds, and the
  span ends when the response body is closed.
* **borrowed**: an outer layer (a WSGI middleware) already made a recording SERVER
  span current; the sink renames it ``"{METHOD} {route}"`` and adds its attributes.
* **deferred**: ``opentelemetry-instrumentation-flask`` instruments the app; its
  ``before_request`` runs after ours and starts the span, so the sink enriches that
  span from a per-request ``after_this_request`` callback and reads its ids at teardown.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

from flask import after_this_request, has_request_context

from . import __version__
from .config import DEFAULT_BUCKETS, ConfigError, Settings
from .privacy import scrub_span_attributes
from .record import OTHER
from .sinks import RequestState, Sink

if TYPE_CHECKING:
    from flask import Flask, Response

logger = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "flask_usage_otel"

NETWORK_PROTOCOL_VERSIONS = {"HTTP/1.0": "1.0", "HTTP/1.1": "1.1", "HTTP/2": "2", "HTTP/2.0": "2", "HTTP/3": "3"}
"""``SERVER_PROTOCOL`` -> ``network.protocol.version``. Anything else is ``_OTHER``: servers
pass the client's spelling through (Werkzeug accepts any ``HTTP/1.x``), and an attribute
with unbounded values would make one metric series per spelling."""
_SCHEMES = {"http": "http", "https": "https"}

# Set by opentelemetry-instrumentation-flask's WSGI wrapper before Flask runs (its span key
# is set by its own before_request, which runs after ours).
_INSTRUMENTOR_MARK = "opentelemetry-flask.starttime_key"
_INSTRUMENTOR_SPAN = "opentelemetry-flask.span_key"

_DEFERRED = object()
"""``state.context_token`` of a request whose span opentelemetry-instrumentation-flask starts."""

_EXPORTERS = {"otlp": "otlp", "otlp_proto_http": "otlp", "otlp_proto_grpc": "otlp", "console": "console"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_CACHE_LIMIT = 1024


class _Borrowed:
    """A span another layer started: enriched, never ended, by the sink."""

    __slots__ = ("span",)

    def __init__(self, span: Any) -> None:
        self.span = span


class _EndpointSpan:
    """What every request to one (method, endpoint, route) shares: computed once."""

    __slots__ = ("attributes", "name")

    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        self.name = name
        self.attributes = attributes


class OtelSink(Sink):
    """Traces each tracked request as one SERVER span and optionally records OTel HTTP metrics.

    Build it with :func:`create_otel_sink`, which applies the ``TRACK_USAGE_OTEL*`` settings.

    :param tracer: an OpenTelemetry ``Tracer``.
    :param meter: an OpenTelemetry ``Meter`` for ``http.server.*`` metrics, or None for none.
    :param capture_user: put the record's user id on the span as ``enduser.id``.
    :param owned_providers: providers this sink created and so flushes and shuts down.
    :param duration_buckets: the advisory bucket boundaries of ``http.server.request.duration``
        (``TRACK_USAGE_BUCKETS``); a View configured on the meter provider still wins.
    """

    name = "otel"

    def __init__(
        self,
        tracer: Any,
        meter: Any = None,
        *,
        capture_user: bool = False,
        owned_providers: tuple[Any, ...] = (),
        duration_buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.propagators.textmap import Getter
        from opentelemetry.trace import SpanKind, StatusCode

        class EnvironGetter(Getter[dict[str, Any]]):
            """Reads propagation headers (``traceparent``...) from a WSGI environ."""

            def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
                value = carrier.get(_environ_key(key))
                return None if value is None else [value]

            def keys(self, carrier: dict[str, Any]) -> list[str]:
                return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]

        self._tracer = tracer
        self._capture_user = capture_user
        # Everything comes from the request state; the user only when it goes on spans.
        self.uses_record = capture_user
        self._owned_providers = owned_providers
        self._attach = context.attach
        self._detach = context.detach
        self._get_current_span = trace.get_current_span
        self._set_span_in_context = trace.set_span_in_context
        self._get_textmap = propagate.get_global_textmap
        self._getter = EnvironGetter()
        self._server_kind = SpanKind.SERVER
        self._error = StatusCode.ERROR
        self._propagator: Any = None
        self._carrier_keys: tuple[str, ...] = ()
        self._endpoints: dict[tuple[str, str | None, str], _EndpointSpan] = {}
        self._hosts: dict[tuple[str | None, str], tuple[str | None, int | None]] = {}
        self._duration: Any = None
        self._active: Any = None
        self._active_attributes: dict[tuple[str, str], dict[str, str]] = {}
        if meter is not None:
            self._duration = meter.create_histogram(
                "http.server.request.duration",
                unit="s",
                description="Duration of HTTP server requests.",
                explicit_bucket_boundaries_advisory=duration_buckets,
            )
            self._active = meter.create_up_down_counter(
                "http.server.active_requests", unit="{request}", description="Number of active HTTP server requests."
            )

    # -- steps ------------------------------------------------------------------------

    def start(self, state: RequestState) -> None:
        environ = state.request.environ
        if self._active is not None:
            # First, so that finish's decrement always has its increment.
            self._active.add(1, self._active_attrs(state.method_label, _scheme(environ)))
        if _INSTRUMENTOR_MARK in environ:
            self._defer(state)
        else:
            current = self._get_current_span()
            if current.is_recording() and current.kind is self._server_kind:
                self._borrow(state, current)
            else:
                self._start_span(state, environ)

    def teardown(self, state: RequestState) -> None:
        token = state.context_token
        if token is None:
            return
        state.context_token = None
        if token is _DEFERRED:
            span = state.request.environ.get(_INSTRUMENTOR_SPAN)
            if span is not None:
                _set_ids(state, span.get_span_context())
            return  # the instrumentor's own teardown ended its span and recorded the exception
        # Detached as the wsgi_app wrapper unwinds, in the context that attached it, whatever
        # the app's teardowns did; a streamed body may still be unsent (the span ends with it).
        self._detach(token)

    def finish(self, state: RequestState) -> None:
        span = state.span
        if self._duration is not None:
            self._record_metrics(state, span)
        if span is None:
            return
        borrowed = type(span) is _Borrowed
        if borrowed:
            span = span.span
        if state.error is not None:
            span.record_exception(state.error)
        if span.is_recording():
            status = state.status or 500
            attributes: dict[str, Any] = {"http.response.status_code": status}
            error_type = state.exception or (str(status) if status >= 500 else None)
            if error_type is not None:
                attributes["error.type"] = error_type
            if self._capture_user and state.username is not None:
                attributes["enduser.id"] = state.username
            span.set_attributes(attributes)
            if status >= 500:
                span.set_status(self._error)
        if not borrowed:
            span.end()

    def flush(self, timeout: float | None = None) -> bool:
        millis = 30_000 if timeout is None else int(timeout * 1000)
        return all(provider.force_flush(millis) for provider in self._owned_providers)

    def shutdown(self, timeout: float | None = None) -> None:
        for provider in self._owned_providers:
            provider.shutdown()

    # -- the three ways to a span -----------------------------------------------------

    def _start_span(self, state: RequestState, environ: dict[str, Any]) -> None:
        parent = self._incoming_context(environ)
        info = self._endpoint(state)
        span = self._tracer.start_span(
            info.name,
            parent,
            self._server_kind,
            self._request_attributes(state, info, environ),
            start_time=int(state.timestamp * 1e9),  # when the environ reached the wsgi_app wrapper
        )
        state.span = span
        state.context_token = self._attach(self._set_span_in_context(span, parent))
        _set_ids(state, span.get_span_context())

    def _borrow(self, state: RequestState, span: Any) -> None:
        info = self._endpoint(state)
        span.update_name(info.name)
        environ = state.request.environ
        attributes = self._request_attributes(state, info, environ)
        _scrub_foreign(state, span, environ, attributes)
        span.set_attributes(attributes)
        state.span = _Borrowed(span)
        _set_ids(state, span.get_span_context())

    def _defer(self, state: RequestState) -> None:
        state.context_token = _DEFERRED
        if not has_request_context():  # admitted after Flask gave up on the request
            return

        @after_this_request
        def enrich(response: Response) -> Response:
            # Runs after the instrumentor's before_request (its span exists) and before
            # its teardown_request (which ends the span).
            try:
                self._enrich_instrumentor_span(state, response)
            except Exception:
                logger.debug("could not enrich the opentelemetry-instrumentation-flask span", exc_info=True)
            return response

    def _enrich_instrumentor_span(self, state: RequestState, response: Response) -> None:
        environ = state.request.environ
        span = environ.get(_INSTRUMENTOR_SPAN)
        if span is None or not span.is_recording():
            return
        info = self._endpoint(state)
        attributes = self._request_attributes(state, info, environ)
        status = response.status_code
        attributes["http.response.status_code"] = status
        if status >= 500:
            # Flask builds the 500 for an unhandled exception inside its ``except`` block.
            raised = sys.exc_info()[0]
            attributes["error.type"] = raised.__name__ if raised is not None else str(status)
            span.set_status(self._error)
        _scrub_foreign(state, span, environ, attributes)
        span.update_name(info.name)
        span.set_attributes(attributes)

    # -- attributes ---------------------------------------------------------------------

    def _incoming_context(self, environ: dict[str, Any]) -> Any:
        """The remote parent from the request headers, or None (the current context) when none was sent."""
        propagator = self._get_textmap()
        if propagator is not self._propagator:
            fields = propagator.fields
            self._carrier_keys = tuple(_environ_key(f) for f in fields) if fields else ()
            self._propagator = propagator
        keys = self._carrier_keys
        if not keys:  # a propagator that does not name its fields: always ask it
            return propagator.extract(environ, getter=self._getter)
        for key in keys:
            if key in environ:
                return propagator.extract(environ, getter=self._getter)
        return None  # the common case: no propagation header, no extract call

    def _endpoint(self, state: RequestState) -> _EndpointSpan:
        key = (state.method_label, state.endpoint, state.route)
        info = self._endpoints.get(key)
        if info is None:
            info = self._endpoints[key] = _endpoint_span(state)
        return info

    def _request_attributes(self, state: RequestState, info: _EndpointSpan, environ: dict[str, Any]) -> dict[str, Any]:
        req = state.request
        attributes = info.attributes.copy()
        path = req.path
        root = req.root_path
        attributes["url.path"] = root + path if root else path
        scheme = _scheme(environ)
        attributes["url.scheme"] = scheme
        query = environ.get("QUERY_STRING")
        if query:
            redactor = state.context.redactor
            attributes["url.query"] = redactor.query(query) if redactor is not None else query
        if state.method_label == OTHER:
            attributes["http.request.method_original"] = state.method
        address, port = self._server(environ.get("HTTP_HOST"), scheme, environ)
        if address is not None:
            attributes["server.address"] = address
            if port is not None:
                attributes["server.port"] = port
        client = environ.get("REMOTE_ADDR")
        anonymizer = state.context.anonymizer
        if client and anonymizer is not None:
            client = anonymizer.address(client)
        if client:
            attributes["client.address"] = client
        agent = environ.get("HTTP_USER_AGENT")
        if agent:
            attributes["user_agent.original"] = agent
        version = _protocol_version(environ.get("SERVER_PROTOCOL"))
        if version is not None:
            attributes["network.protocol.version"] = version
        return attributes

    def _server(self, host: str | None, scheme: str, environ: dict[str, Any]) -> tuple[str | None, int | None]:
        key = (host, scheme)
        found = self._hosts.get(key)
        if found is None:
            if len(self._hosts) >= _HOST_CACHE_LIMIT:
                self._hosts.clear()  # Host is client-chosen: keep the cache bounded
            found = self._hosts[key] = _split_host(host, scheme, environ)
        return found

    def _active_attrs(self, method_label: str, scheme: str) -> dict[str, str]:
        key = (method_label, scheme)
        attributes = self._active_attributes.get(key)
        if attributes is None:
            attributes = self._active_attributes[key] = {"http.request.method": method_label, "url.scheme": scheme}
        return attributes

    def _record_metrics(self, state: RequestState, span: Any) -> None:
        environ = state.request.environ
        scheme = _scheme(environ)
        status = state.status or 500
        self._active.add(-1, self._active_attrs(state.method_label, scheme))
        attributes: dict[str, Any] = {
            "http.request.method": state.method_label,
            "url.scheme": scheme,
            "http.response.status_code": status,
        }
        if state.endpoint is not None:
            attributes["http.route"] = state.route
        error_type = state.exception or (str(status) if status >= 500 else None)
        if error_type is not None:
            attributes["error.type"] = error_type
        protocol = _protocol_version(environ.get("SERVER_PROTOCOL"))
        if protocol is not None:
            attributes["network.protocol.version"] = protocol
        context = None
        if state.sampled and span is not None:
            # The span is no longer current here: pass it, so the measurement can carry an exemplar.
            context = self._set_span_in_context(span.span if type(span) is _Borrowed else span)
        self._duration.record(state.speed, attributes, context)


def _scrub_foreign(state: RequestState, span: Any, environ: dict[str, Any], attributes: dict[str, Any]) -> None:
    """Add to ``attributes`` the anonymized or redacted values of what another instrumentation
    put on the span (its ``net.peer.ip``, ``http.target``...), so no raw address or secret stays."""
    context = state.context
    if context.anonymizer is None and context.redactor is None:
        return
    # SDK spans expose their attributes; a span that does not cannot be read, only written.
    found = getattr(span, "attributes", None)
    for key, value in scrub_span_attributes(found, environ, context.anonymizer, context.redactor).items():
        attributes.setdefault(key, value)


def _set_ids(state: RequestState, span_context: Any) -> None:
    if span_context.trace_flags.sampled:
        state.trace_id = format(span_context.trace_id, "032x")
        state.span_id = format(span_context.span_id, "016x")
        state.sampled = True


def _protocol_version(protocol: str | None) -> str | None:
    """``network.protocol.version``: ``"1.1"`` for ``"HTTP/1.1"``, ``_OTHER`` for a spelling we do not know."""
    if not protocol:
        return None
    return NETWORK_PROTOCOL_VERSIONS.get(protocol, OTHER)


def _scheme(environ: dict[str, Any]) -> str:
    """``url.scheme``: ``http`` or ``https``; a proxy header can make ``wsgi.url_scheme`` anything."""
    return _SCHEMES.get(environ.get("wsgi.url_scheme", "http"), OTHER)


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _endpoint_span(state: RequestState) -> _EndpointSpan:
    method = state.method_label
    name_method = "HTTP" if method == OTHER else method
    attributes: dict[str, Any] = {"http.request.method": method}
    if state.endpoint is None:
        # No URL rule matched (404, 405, redirect): never the raw path, which is unbounded.
        return _EndpointSpan(name_method, attributes)
    attributes["http.route"] = state.route
    attributes["flask.endpoint"] = state.endpoint
    if state.blueprint is not None:
        attributes["flask.blueprint"] = state.blueprint
    return _EndpointSpan(f"{name_method} {state.route}", attributes)


def _split_host(host: str | None, scheme: str, environ: dict[str, Any]) -> tuple[str | None, int | None]:
    """``server.address`` and ``server.port`` from the Host header, else the WSGI server's name."""
    if not host:
        name = environ.get("SERVER_NAME")
        port = environ.get("SERVER_PORT")
        return name or None, int(port) if port and port.isdigit() else None
    if host.startswith("["):  # [IPv6]:port
        address, _, rest = host[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        address, _, port_text = host.rpartition(":") if ":" in host else (host, "", "")
    if port_text.isdigit():
        return address, int(port_text)
    return address, _DEFAULT_PORTS.get(scheme)


# --- set-up -----------------------------------------------------------------------------
#
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
) -> OtelSink | None:
    """The app's OTel sink, or None when OpenTelemetry is off for it.

    ``TRACK_USAGE_OTEL = False``: off. ``True``: on, with the given tracer provider or the
    global one. ``None`` (default): on when ``OTEL_SDK_DISABLED`` is not true and one of these
    holds: a ``tracer_provider`` was given; the app (or ``opentelemetry-instrument``) set a
    global tracer provider before ``init_app``; the environment asks for trace export
    (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``).

    Never sets a global provider. When spans would go nowhere because no provider is set
    up yet, it says so with an :class:`OpenTelemetryNotConfiguredWarning` naming what is missing.

    :raises ConfigError: ``TRACK_USAGE_OTEL`` (or ``TRACK_USAGE_OTEL_METRICS``) is True but
        opentelemetry is not installed.
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

    return OtelSink(
        tracer_provider.get_tracer(INSTRUMENTATION_NAME, __version__),
        meter,
        capture_user=settings.otel_capture_user,
        duration_buckets=settings.buckets,
    )


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
    provider = TracerProvider(resource=_resource(service_name))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


def build_meter_provider(exporter: str, service_name: str | None = None) -> Any:
    """An SDK ``MeterProvider`` exporting periodically (``"otlp"`` or ``"console"``) from a background thread."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

    name = _exporter_name(exporter)
    metric_exporter = _otlp_exporter("metric", "OTLPMetricExporter") if name == "otlp" else ConsoleMetricExporter()
    return MeterProvider(
        metric_readers=[PeriodicExportingMetricReader(metric_exporter)], resource=_resource(service_name)
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


def _resource(service_name: str | None) -> Any:
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
