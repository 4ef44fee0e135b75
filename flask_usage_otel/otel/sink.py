"""The OTel sink: one SERVER span per tracked request, and optional OTel HTTP metrics.

Its attribute names and values come from ``attributes.py``, which imports
``opentelemetry.semconv``: this module is imported when a sink is created, never by
``import flask_usage_otel.otel``, so an app without the ``otel`` extra never needs it.

A request's span is found in one of three ways, decided per request with one dict
lookup and one context read:

* **own**: nothing else traces the request; the sink starts the SERVER span when the
  request is admitted (before the app's ``before_request`` hooks, so the view's spans
  nest under it), dated from the moment the environ reached
  the ``wsgi_app`` wrapper; its context is detached when the wrapper unwinds, and the
  span ends when the response body is closed.
* **borrowed**: an outer layer (a WSGI middleware) already made a recording SERVER
  span current; the sink renames it ``"{METHOD} {route}"`` and adds its attributes.
* **deferred**: ``opentelemetry-instrumentation-flask`` instruments the app; its
  ``before_request`` runs after ours and starts the span, so the sink enriches that
  span from a per-request ``after_this_request`` callback and reads its ids at teardown.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from flask import after_this_request, has_request_context
from opentelemetry.semconv.metrics.http_metrics import HTTP_SERVER_REQUEST_DURATION

from ..capture import RequestState
from ..config import DEFAULT_BUCKETS
from ..internals import incubating_name
from ..privacy import redact_secrets
from ..sinks import Sink
from ..useragent import synthetic_type
from .attributes import (
    ENDUSER_ID,
    ERROR_TYPE,
    HTTP_RESPONSE_STATUS_CODE,
    TIME_TO_FIRST_BYTE,
    EndpointSpan,
    active_attributes,
    add_request_attributes,
    connection_attributes,
    duration_attributes,
    endpoint_span,
    environ_key,
    error_type,
    scrub_foreign,
    url_scheme,
)

if TYPE_CHECKING:
    from flask import Response

    from .extras import SpanExtras

logger = logging.getLogger("flask_usage_otel.otel")

# Set by opentelemetry-instrumentation-flask's WSGI wrapper before Flask runs (its span key
# is set by its own before_request, which runs after ours).
_INSTRUMENTOR_MARK = "opentelemetry-flask.starttime_key"
_INSTRUMENTOR_SPAN = "opentelemetry-flask.span_key"

_DEFERRED = object()
"""``state.context_token`` of a request whose span opentelemetry-instrumentation-flask starts."""

_SHAPE_CACHE_LIMIT = 1024
_SAMPLED = 0x01
"""The W3C trace-context ``sampled`` flag (``opentelemetry.trace.TraceFlags.SAMPLED``)."""


class _Borrowed:
    """A span another layer started: enriched, never ended, by the sink."""

    __slots__ = ("span",)

    def __init__(self, span: Any) -> None:
        self.span = span


class OtelSink(Sink):
    """Traces each tracked request as one SERVER span and optionally records OTel HTTP metrics.

    Build it with :func:`create_otel_sink`, which applies the ``TRACK_USAGE_OTEL*`` settings.

    :param tracer: an OpenTelemetry ``Tracer``.
    :param meter: an OpenTelemetry ``Meter`` for ``http.server.*`` metrics, or None for none.
    :param capture_user: put the record's user id on the span as ``enduser.id``.
    :param owned_providers: providers this sink created and so flushes and shuts down.
    :param duration_buckets: the advisory bucket boundaries of ``http.server.request.duration``
        and ``flask_usage.server.time_to_first_byte`` (``TRACK_USAGE_BUCKETS``); a View configured
        on the meter provider still wins.
    :param extras: captured headers, the app's hooks and the exception log event, when asked for.
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
        extras: SpanExtras | None = None,
    ) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.propagators.textmap import Getter
        from opentelemetry.trace import SpanKind, StatusCode

        class EnvironGetter(Getter[dict[str, Any]]):
            """Reads propagation headers (``traceparent``...) from a WSGI environ."""

            def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
                value = carrier.get(environ_key(key))
                return None if value is None else [value]

            def keys(self, carrier: dict[str, Any]) -> list[str]:
                return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]

        self._tracer = tracer
        self._capture_user = capture_user
        # Everything comes from the request state: never the captured request, the user only when it goes on spans.
        self.uses_record = False
        self.uses_user = bool(capture_user)
        self._owned_providers = owned_providers
        self._attach = context.attach
        self._detach = context.detach
        self._get_current = context.get_current
        self._get_current_span = trace.get_current_span
        self._set_span_in_context = trace.set_span_in_context
        self._get_textmap = propagate.get_global_textmap
        self._getter = EnvironGetter()
        self._server_kind = SpanKind.SERVER
        self._error = StatusCode.ERROR
        self._propagator: Any = None
        self._carrier_keys: tuple[str, ...] = ()
        self._endpoints: dict[tuple[str, str | None, str], EndpointSpan] = {}
        self._shapes: dict[tuple[Any, ...], EndpointSpan] = {}
        self._duration: Any = None
        self._active: Any = None
        self._active_attributes: dict[tuple[str, str], dict[str, str]] = {}
        self._extras = extras
        self._span_events = extras is None or extras.span_events  # OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN
        self._first_byte: Any = None
        if meter is not None:
            self._duration = meter.create_histogram(
                HTTP_SERVER_REQUEST_DURATION,
                unit="s",
                description="Duration of HTTP server requests.",
                explicit_bucket_boundaries_advisory=duration_buckets,
            )
            self._first_byte = meter.create_histogram(
                TIME_TO_FIRST_BYTE,
                unit="s",
                description="Time from the start of an HTTP server request to the first byte of its response body.",
                explicit_bucket_boundaries_advisory=duration_buckets,
            )
            self._active = meter.create_up_down_counter(
                incubating_name("HTTP_SERVER_ACTIVE_REQUESTS"),
                unit="{request}",
                description="Number of active HTTP server requests.",
            )

    # -- steps ------------------------------------------------------------------------

    def start(self, state: RequestState) -> None:
        environ = state.request.environ
        if self._active is not None:
            # First, so that finish's decrement always has its increment.
            self._active.add(1, self._active_attrs(state.method_label, url_scheme(environ.get("wsgi.url_scheme"))))
        if _INSTRUMENTOR_MARK in environ:
            self._defer(state)
            return
        # Read once and passed on: start_span and set_span_in_context would each read it again.
        current_context = self._get_current()
        current = self._get_current_span(current_context)
        if current.is_recording() and current.kind is self._server_kind:
            self._borrow(state, current)
        else:
            self._start_span(state, environ, current_context)
        if self._extras is not None:
            span = state.span
            self._extras.started(state, span.span if type(span) is _Borrowed else span, environ)

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
        status = state.status or 500
        error = error_type(state.exception, status)
        if self._duration is not None:
            self._record_metrics(state, span, status, error)
        if span is None:
            if self._extras is not None:  # deferred: the instrumentor's span, if it made one
                req = state.request
                self._extras.finished(state, req.environ.get(_INSTRUMENTOR_SPAN) if req is not None else None)
            return
        borrowed = type(span) is _Borrowed
        if borrowed:
            span = span.span
        if state.error is not None and self._span_events:
            span.record_exception(state.error)
        if span.is_recording():
            user = state.username if self._capture_user else None
            if error is None and user is None:
                # The usual case: one value, and the SDK's single-value setter is half the
                # cost of set_attributes (no mapping to clean and copy).
                span.set_attribute(HTTP_RESPONSE_STATUS_CODE, status)
            else:
                attributes: dict[str, Any] = {HTTP_RESPONSE_STATUS_CODE: status}
                if error is not None:
                    attributes[ERROR_TYPE] = error
                if user is not None:
                    attributes[ENDUSER_ID] = user
                span.set_attributes(attributes)
            if status >= 500:
                span.set_status(self._error)
        if not borrowed:
            span.end()
        if self._extras is not None:
            self._extras.finished(state, span)

    def flush(self, timeout: float | None = None) -> bool:
        millis = 30_000 if timeout is None else int(timeout * 1000)
        return all(provider.force_flush(millis) for provider in self._owned_providers)

    def shutdown(self, timeout: float | None = None) -> None:
        for provider in self._owned_providers:
            provider.shutdown()

    # -- the three ways to a span -----------------------------------------------------

    def _start_span(self, state: RequestState, environ: dict[str, Any], current_context: Any) -> None:
        # A remote parent from the request headers, else the current context (a parent span
        # an outer layer made current, or none: a root span).
        parent = self._incoming_context(environ)
        if parent is None:
            parent = current_context
        info = self._shape(state, environ)
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
        environ = state.request.environ
        info = self._shape(state, environ)
        span.update_name(info.name)
        attributes = self._request_attributes(state, info, environ)
        scrub_foreign(state, span, environ, attributes)
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
        info = self._shape(state, environ)
        attributes = self._request_attributes(state, info, environ)
        status = response.status_code
        attributes[HTTP_RESPONSE_STATUS_CODE] = status
        if status >= 500:
            # Flask builds the 500 for an unhandled exception inside its ``except`` block.
            raised = sys.exc_info()[0]
            attributes[ERROR_TYPE] = error_type(raised.__name__ if raised is not None else None, status)
            span.set_status(self._error)
        scrub_foreign(state, span, environ, attributes)
        span.update_name(info.name)
        span.set_attributes(attributes)

    # -- attributes ---------------------------------------------------------------------

    def _incoming_context(self, environ: dict[str, Any]) -> Any:
        """The remote parent from the request headers, or None (the current context) when none was sent."""
        propagator = self._get_textmap()
        if propagator is not self._propagator:
            fields = propagator.fields
            self._carrier_keys = tuple(environ_key(f) for f in fields) if fields else ()
            self._propagator = propagator
        keys = self._carrier_keys
        if not keys:  # a propagator that does not name its fields: always ask it
            return propagator.extract(environ, getter=self._getter)
        for key in keys:
            if key in environ:
                return propagator.extract(environ, getter=self._getter)
        return None  # the common case: no propagation header, no extract call

    def _endpoint(self, state: RequestState) -> EndpointSpan:
        key = (state.method_label, state.endpoint, state.route)
        info = self._endpoints.get(key)
        if info is None:
            info = self._endpoints[key] = endpoint_span(state)
        return info

    def _shape(self, state: RequestState, environ: dict[str, Any]) -> EndpointSpan:
        """The span name and every attribute shared by the requests to one route through one
        (Host, scheme, protocol): the route's, ``url.scheme``, ``server.*`` and
        ``network.protocol.version``. A process sees few such shapes; one lookup here replaces
        the per-request parsing of the Host header, scheme and protocol."""
        host = environ.get("HTTP_HOST")
        key = (
            state.method_label,
            state.endpoint,
            state.route,
            host,
            environ.get("wsgi.url_scheme"),
            environ.get("SERVER_PROTOCOL"),
        )
        shape = self._shapes.get(key)
        if shape is None:
            info = self._endpoint(state)
            connection = connection_attributes(
                host,
                environ.get("wsgi.url_scheme"),
                environ.get("SERVER_PROTOCOL"),
                environ.get("SERVER_NAME"),
                environ.get("SERVER_PORT"),
            )
            shape = EndpointSpan(info.name, {**info.attributes, **connection})
            if not host:
                return shape  # the address came from SERVER_NAME and SERVER_PORT, which the key lacks
            if len(self._shapes) >= _SHAPE_CACHE_LIMIT:
                self._shapes.clear()  # Host and the protocol spelling are client-chosen: keep it bounded
            self._shapes[key] = shape
        return shape

    def _request_attributes(self, state: RequestState, shape: EndpointSpan, environ: dict[str, Any]) -> dict[str, Any]:
        """The shape's attributes and the request's own: path, query, client, user agent."""
        req = state.request
        path = req.path
        root = req.root_path
        url_path = root + path if root else path
        if state.secrets:
            url_path = redact_secrets(url_path, state.secrets)
        context = state.context
        query = environ.get("QUERY_STRING")
        if query and context.redactor is not None:
            query = context.redactor.query(query)
        client = environ.get("REMOTE_ADDR")
        if client and context.anonymizer is not None:
            client = context.anonymizer.address(client)
        agent = environ.get("HTTP_USER_AGENT")
        return add_request_attributes(
            shape.attributes.copy(),
            environ.get("REQUEST_METHOD") or state.method,  # as sent: `get` is http.request.method GET
            state.method_label,
            url_path,
            query,
            client,
            agent,
            synthetic_type(agent),  # cached per User-Agent
        )

    def _active_attrs(self, method_label: str, scheme: str) -> dict[str, str]:
        key = (method_label, scheme)
        attributes = self._active_attributes.get(key)
        if attributes is None:
            attributes = self._active_attributes[key] = active_attributes(method_label, scheme)
        return attributes

    def _record_metrics(self, state: RequestState, span: Any, status: int, error: str | None) -> None:
        environ = state.request.environ
        scheme = url_scheme(environ.get("wsgi.url_scheme"))
        label = state.method_label
        self._active.add(-1, self._active_attrs(label, scheme))
        route = state.route if state.endpoint is not None else None
        attributes = duration_attributes(label, route, scheme, status, error, environ.get("SERVER_PROTOCOL"))
        context = None
        if state.sampled and span is not None:
            # The span is no longer current here: pass it, so the measurement can carry an exemplar.
            context = self._set_span_in_context(span.span if type(span) is _Borrowed else span)
        self._duration.record(state.speed, attributes, context)
        self._first_byte.record(state.first_byte, attributes, context)


def _set_ids(state: RequestState, span_context: Any) -> None:
    # The W3C sampled bit read directly, and %-formatting (one opcode, no format-spec
    # parsing per call): cheaper than ``TraceFlags.sampled`` and ``format()``, same text.
    if span_context.trace_flags & _SAMPLED:
        state.trace_id = "%032x" % span_context.trace_id  # noqa: UP031
        state.span_id = "%016x" % span_context.span_id  # noqa: UP031
        state.sampled = True
