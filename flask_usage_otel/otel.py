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
from typing import TYPE_CHECKING, Any

from flask import after_this_request, has_request_context

from . import __version__
from .config import DEFAULT_BUCKETS, ConfigError, Settings
from .prometheus import OTHER
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

_EXPORTERS = {"otlp": "otlp", "otlp_proto_http": "otlp", "console": "console", "none": None}
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
        span.set_attributes(self._request_attributes(state, info, state.request.environ))
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
            attributes["url.query"] = query
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


def create_otel_sink(
    app: Flask,
    settings: Settings,
    tracer_provider: Any = None,
    meter_provider: Any = None,
) -> OtelSink | None:
    """The app's OTel sink, or None when OpenTelemetry is off for it.

    ``TRACK_USAGE_OTEL = False``: off. ``True``: on, with the given tracer provider or the
    global one. ``None`` (default): on when ``opentelemetry-sdk`` is importable,
    ``OTEL_SDK_DISABLED`` is not true, and one of these holds: a ``tracer_provider`` was
    given, an exporter is configured (``TRACK_USAGE_OTEL_EXPORTER`` or ``OTEL_TRACES_EXPORTER``),
    or the global tracer provider is an SDK ``TracerProvider`` when ``init_app`` runs.

    With an exporter configured and neither a ``tracer_provider`` given nor an SDK provider
    set globally, an SDK ``TracerProvider`` with a ``BatchSpanProcessor`` is created, set as
    the global provider and shut down at exit.

    :raises ConfigError: ``TRACK_USAGE_OTEL`` is True but opentelemetry is not installed, or
        the OTLP exporter is asked for but not installed.
    """
    if settings.otel is False:
        return None
    if settings.otel is None and not _enabled_by_default(settings, tracer_provider):
        return None
    if not _importable("opentelemetry.trace"):
        raise ConfigError("TRACK_USAGE_OTEL", "needs OpenTelemetry: pip install 'flask-usage-otel[otel]'")

    owned: list[Any] = []
    exporter = _exporter(settings)
    tracer_provider = _provider("tracer", tracer_provider, exporter, app.name, owned)
    meter = None
    if otel_metrics_enabled(settings):
        meter_provider = _provider("meter", meter_provider, exporter, app.name, owned)
        meter = meter_provider.get_meter(INSTRUMENTATION_NAME, __version__)

    return OtelSink(
        tracer_provider.get_tracer(INSTRUMENTATION_NAME, __version__),
        meter,
        capture_user=settings.otel_capture_user,
        owned_providers=tuple(owned),
        duration_buckets=settings.buckets,
    )


def otel_metrics_enabled(settings: Settings) -> bool:
    """``TRACK_USAGE_OTEL_METRICS``, defaulting to on only when the Prometheus metrics are off.

    With both on, an OTLP pipeline that also scrapes ``/metrics`` would count every request twice.
    """
    if settings.otel_metrics is not None:
        return settings.otel_metrics
    return not settings.prometheus


def build_tracer_provider(exporter: str, service_name: str) -> Any:
    """An SDK ``TracerProvider`` exporting through a ``BatchSpanProcessor`` (``"otlp"`` or ``"console"``).

    The OTLP/HTTP exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables, the resource
    reads ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``; ``service_name`` is used when they
    name no service. Spans are queued and exported by a background thread: a full queue drops
    spans, it never blocks a request.
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    span_exporter = _otlp_exporter("trace", "OTLPSpanExporter") if exporter == "otlp" else ConsoleSpanExporter()
    provider = TracerProvider(resource=_resource(service_name))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


def build_meter_provider(exporter: str, service_name: str) -> Any:
    """An SDK ``MeterProvider`` exporting periodically (``"otlp"`` or ``"console"``) from a background thread."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

    metric_exporter = _otlp_exporter("metric", "OTLPMetricExporter") if exporter == "otlp" else ConsoleMetricExporter()
    return MeterProvider(
        metric_readers=[PeriodicExportingMetricReader(metric_exporter)], resource=_resource(service_name)
    )


def _otlp_exporter(signal: str, class_name: str) -> Any:
    try:
        module = importlib.import_module(f"opentelemetry.exporter.otlp.proto.http.{signal}_exporter")
    except ImportError:
        raise ConfigError(
            "TRACK_USAGE_OTEL_EXPORTER", "'otlp' needs opentelemetry-exporter-otlp-proto-http (the otel extra)"
        ) from None
    return getattr(module, class_name)()


def _resource(service_name: str) -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    return resource


def _enabled_by_default(settings: Settings, tracer_provider: Any) -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if not _importable("opentelemetry.sdk"):
        return False
    if tracer_provider is not None or _exporter(settings) is not None:
        return True
    return _global_sdk_provider("tracer")


def _exporter(settings: Settings) -> str | None:
    """``TRACK_USAGE_OTEL_EXPORTER``, else the first of ``OTEL_TRACES_EXPORTER`` we know."""
    if settings.otel_exporter is not None:
        return _EXPORTERS[settings.otel_exporter]
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "").split(","):
        name = name.strip().lower()
        if name in _EXPORTERS:
            return _EXPORTERS[name]
    return None


# kind -> (API module, SDK module, SDK provider class)
_PROVIDER_MODULES = {
    "tracer": ("opentelemetry.trace", "opentelemetry.sdk.trace", "TracerProvider"),
    "meter": ("opentelemetry.metrics", "opentelemetry.sdk.metrics", "MeterProvider"),
}


def _provider(kind: str, given: Any, exporter: str | None, service_name: str, owned: list[Any]) -> Any:
    """The given provider; else one built for the exporter and set globally, unless the app
    configured an SDK provider itself; else the global one."""
    if given is not None:
        return given
    api = importlib.import_module(_PROVIDER_MODULES[kind][0])
    if exporter is None or _global_sdk_provider(kind):
        return getattr(api, f"get_{kind}_provider")()
    if not _importable(_PROVIDER_MODULES[kind][1]):
        raise ConfigError("TRACK_USAGE_OTEL_EXPORTER", "needs opentelemetry-sdk: pip install 'flask-usage-otel[otel]'")
    build = build_tracer_provider if kind == "tracer" else build_meter_provider
    provider = build(exporter, service_name)
    getattr(api, f"set_{kind}_provider")(provider)
    owned.append(provider)
    return provider


def _global_sdk_provider(kind: str) -> bool:
    api_name, sdk_name, class_name = _PROVIDER_MODULES[kind]
    if not _importable(sdk_name):
        return False
    provider = getattr(importlib.import_module(api_name), f"get_{kind}_provider")()
    return isinstance(provider, getattr(importlib.import_module(sdk_name), class_name))


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False
