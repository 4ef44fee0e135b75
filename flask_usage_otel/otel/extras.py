"""What the server span gets only when asked for: captured headers, the app's hooks, and the
exception as a log event.

- Headers by ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` (``headers.py``).
- ``request_hook(span, environ)``, called once the span has its attributes, and
  ``response_hook(span, status, response_headers)``, called with the status line and the headers
  the response starts with: the signatures of opentelemetry-instrumentation-flask's hooks, so the
  same functions serve both. A hook that raises costs the request nothing: the error is counted
  (``flask_usage_tracking_errors_total{component="otel"}``) and logged once the request finishes.
- ``OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN=logs`` (or ``logs/dup``): an unhandled exception is
  emitted as the conventions' ``http.server.request.exception`` log event, severity ERROR, in the
  span's trace (its trace and span ids), from the request's thread (the SDK's batch processor
  exports it from its own).

An app that asks for none of these has no ``SpanExtras`` at all: its requests pay nothing here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flask import request, request_finished

from ..privacy import scrub_span_attributes
from .attributes import SERVER_EXCEPTION_EVENT, exception_attributes
from .headers import HeaderCapture

if TYPE_CHECKING:
    from collections.abc import Callable

    from flask import Flask, Response

    from ..capture import RequestState
    from ..otel_env import OtelEnvironment


class HookFailed(Exception):
    """A request or response hook given to ``TrackUsage`` raised (the cause says what)."""


class SpanExtras:
    """Headers, hooks and the exception log event of one sink's spans.

    :param app: the app, whose ``request_finished`` signal gives the response's headers.
    :param env: the ``OTEL_*`` variables read at ``init_app``.
    :param otel_logger: an OpenTelemetry ``Logger`` for the exception event, or None for none.
    """

    def __init__(
        self,
        app: Flask,
        env: OtelEnvironment,
        *,
        request_hook: Callable[[Any, dict[str, Any]], None] | None = None,
        response_hook: Callable[[Any, str, list[tuple[str, str]]], None] | None = None,
        otel_logger: Any = None,
    ) -> None:
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.context import Context
        from opentelemetry.trace import set_span_in_context

        self.headers = HeaderCapture(env) if HeaderCapture.wanted(env) else None
        self.request_hook = request_hook
        self.response_hook = response_hook
        self.span_events = env.exception_span_event
        self.logger = otel_logger
        self._error = SeverityNumber.ERROR
        self._context = Context
        self._in_context = set_span_in_context
        # Per sink: two tracked apps nested in one WSGI stack keep apart.
        self._span_key = f"flask_usage_otel.otel.{id(self):x}"
        self._failure_key = self._span_key + ".failed"
        captures = self.headers is not None and self.headers.captures_response
        self._wants_response = response_hook is not None or captures
        if self._wants_response:
            # Sent once Flask has made the final response (every after_request ran), before it is started.
            request_finished.connect(self._on_response, app)

    @staticmethod
    def wanted(env: OtelEnvironment, request_hook: Any, response_hook: Any) -> bool:
        return HeaderCapture.wanted(env) or request_hook is not None or response_hook is not None or env.exception_logs

    def started(self, state: RequestState, span: Any, environ: dict[str, Any]) -> None:
        """The request's span exists and has its attributes (``span`` is the SDK's span)."""
        if self.headers is not None and span.is_recording():
            attributes = self.headers.request(environ)
            anonymizer = state.context.anonymizer
            if attributes and anonymizer is not None:  # X-Forwarded-For and the like hold client addresses
                attributes.update(scrub_span_attributes(attributes, environ, anonymizer, None))
            if attributes:
                span.set_attributes(attributes)
        if self.request_hook is not None:
            try:
                self.request_hook(span, environ)
            except Exception as exc:
                environ[self._failure_key] = HookFailed("the request_hook given to TrackUsage raised")
                environ[self._failure_key].__cause__ = exc
        if self._wants_response:
            environ[self._span_key] = span

    def _on_response(self, sender: Any, response: Response, **extra: Any) -> None:
        environ = request.environ
        span = environ.pop(self._span_key, None)
        if span is None:  # not a request this sink traced
            return
        try:
            headers = response.get_wsgi_headers(environ).to_wsgi_list()  # what start_response will get
            if self.headers is not None and span.is_recording():
                attributes = self.headers.response(headers)
                if attributes:
                    span.set_attributes(attributes)
            if self.response_hook is not None:
                self.response_hook(span, response.status, headers)
        except Exception as exc:  # never into Flask: it would turn the response into a 500
            failure = HookFailed("the response_hook given to TrackUsage raised")
            failure.__cause__ = exc
            environ.setdefault(self._failure_key, failure)

    def finished(self, state: RequestState, span: Any) -> None:
        """The span has ended: emit the exception event; raise what a hook raised (the lifecycle counts it).

        :param span: the request's span (ours, borrowed, or the instrumentor's), or None.
        """
        req = state.request
        environ: dict[str, Any] = req.environ if req is not None else {}
        environ.pop(self._span_key, None)  # a request that never reached a response
        if self.logger is not None and state.error is not None:
            self._emit_exception(state, span)
        failure = environ.pop(self._failure_key, None)
        if failure is not None:
            raise failure

    def _emit_exception(self, state: RequestState, span: Any) -> None:
        error = state.error
        route = state.route if state.endpoint is not None else None
        self.logger.emit(
            timestamp=time.time_ns(),
            context=self._in_context(span) if span is not None else self._context(),
            severity_number=self._error,
            severity_text="ERROR",
            attributes=exception_attributes(error, state.method_label, route, state.status or 500),  # type: ignore[arg-type]
            event_name=SERVER_EXCEPTION_EVENT,
        )
