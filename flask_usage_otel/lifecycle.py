"""The request lifecycle: a wrapper around ``app.wsgi_app`` starts and finishes each request's tracking.

The wrapper spans everything Flask does with a request, from the environ to the close of
the response body: URL matching, URL value preprocessors, every hook and teardown, the
streamed body. It keys the request's tracking to its own environ, so nothing another
context or thread does (a ``copy_current_request_context`` thread, a raising teardown)
can finish it early, twice, or never.

The Flask hooks only annotate what the wrapper cannot see:

* the first ``before_request`` hook sets ``g.track_var``, reads the matched rule and
  decides whether the request is tracked; tracked requests start their sinks there, so
  the view's spans nest under the server span (a request that ends before it, in one of
  the app's URL value preprocessors or a ``before_request`` hook put ahead of ours, is
  admitted by the ``after_request`` hook, or else when it unwinds, with the matched rule);
* ``got_request_exception`` names the exception nothing handled;
* ``after_request`` copies ``g.track_var`` and reads the user from the app's own
  callable, only when a sink builds the record.

A request is finished exactly once: when the server closes the body, or when an
exception escapes the app. Its status is the one the client gets (what the app passed
to ``start_response``, 500 when the app raised) and its size is the bytes of body that
went through the wrapper, counted as they pass, never buffered.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import g, got_request_exception, request

from .capture import RequestState, Unserialisable, capture
from .exchange import Exchange, PendingExchange, declared_length, in_memory, status_code
from .filters import RequestFilter, blueprint_of, path_is_excluded, url_is_excluded
from .hooks import first_before_request, last_after_request
from .record import OTHER, UNMATCHED_ROUTE, RecordContext
from .request_details import basic_auth_user, established_user, track_var_of
from .secret_paths import SecretPaths, secret_paths
from .sinks import Sink, overrides
from .useragent import synthetic_type

if TYPE_CHECKING:
    from flask import Flask, Request

    from .config import Settings
    from .prometheus import PrometheusMetrics
    from .storage.base import UsageStorage

logger = logging.getLogger("flask_usage_otel")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_ERROR_LOG_INTERVAL = 60.0
_INTERNAL_ERROR = "500 INTERNAL SERVER ERROR"


@dataclass(frozen=True, slots=True)
class _EndpointInfo:
    tracked: bool
    blueprint: str | None
    secrets: SecretPaths | None = None
    """Finds the values of the secret URL variables (``TRACK_USAGE_REDACT_VIEW_ARGS``) of the endpoint's
    rules, or (for unmatched requests) of every rule; None when there are none."""


@dataclass
class RequestTracker:
    """One tracked app's lifecycle: the ``wsgi_app`` wrapper, the annotating hooks, finishing."""

    settings: Settings
    request_filter: RequestFilter
    sinks: list[Sink]
    storages: list[UsageStorage]
    metrics: PrometheusMetrics | None
    record_context: RecordContext
    endpoints: dict[str | None, _EndpointInfo] = field(default_factory=dict)
    _last_error_log: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._starters = [s for s in self.sinks if overrides(s, "start")]
        self._teardowners = [s for s in self.sinks if overrides(s, "teardown")]
        self._finishers = [s for s in self.sinks if overrides(s, "finish")]
        self._exclude_re = self.settings.exclude_paths_re
        self._excluded_urls = self.settings.otel_env.excluded_urls  # OTEL_PYTHON_[FLASK_]EXCLUDED_URLS
        self._known_methods = self.settings.otel_env.known_methods  # OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS
        self._exclude_synthetic = self.settings.exclude_synthetic  # TRACK_USAGE_EXCLUDE_SYNTHETIC
        self._secret_names = frozenset(name.lower() for name in self.settings.redact_view_args)
        self._capture_user = self.settings.capture_user
        # The request is captured only for sinks that consume it whole; the user and g.track_var
        # are read only when a sink will read them.
        self._wants_capture = any(s.uses_record for s in self.sinks)
        self._wants_details = self._wants_capture or any(s.uses_user for s in self.sinks)
        # The headers a log record carries (TRACK_USAGE_OTEL_LOGS_HEADERS): None for every other app.
        self._headers = next(
            (s.record_headers for s in self.sinks if s.uses_record and s.record_headers is not None), None
        )
        # One key per tracker: two tracked apps nested in one WSGI stack keep apart.
        self.environ_key = f"flask_usage_otel.{id(self):x}"
        # Plain functions, not bound methods: Flask asks every hook of every request whether it
        # is a coroutine function, and a method takes one step more to answer.
        key = self.environ_key
        self.before_request = first_before_request(key, self._admit, self._rewrap_if_removed, self._hook_failed)
        self.after_request = last_after_request(
            key, self._capture_user == "id", self._admit, self._capture_details, self._hook_failed
        )
        self._inner: WsgiApp | None = None
        self._view_functions: dict[str, Any] = {}
        self._blueprints: dict[str, Any] = {}
        self._request_class: type[Request] | None = None
        self._user_callable = False
        self._app_ref: Callable[[], Flask | None] = lambda: None

    def install(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app`` and add the annotating hooks."""
        self._view_functions = app.view_functions  # the app's own dict: later routes show up
        self._blueprints = app.blueprints  # likewise: a blueprint registered later is seen
        self._request_class = app.request_class
        self._app_ref = weakref.ref(app)
        self._wrap(app)
        # First of the app's before_request hooks (the app-wide ones run before any blueprint's).
        # Not a URL value preprocessor: Flask reads request.endpoint and request.view_args through
        # their proxies for every preprocessor of every request, which costs more than the hook.
        app.before_request_funcs.setdefault(None, []).insert(0, self.before_request)
        self._user_callable = callable(self._capture_user) and self._wants_details
        if self._wants_details:
            # Flask runs after_request functions in reverse: ours runs last and sees the final
            # g.track_var and user. A plain function call, cheaper than a request_finished receiver.
            app.after_request_funcs.setdefault(None, []).insert(0, self.after_request)
        got_request_exception.connect(self.on_exception, app)

    def _wrap(self, app: Flask) -> None:
        self._inner = app.wsgi_app
        app.wsgi_app = self.wsgi_app  # type: ignore[method-assign]

    def _rewrap_if_removed(self) -> None:
        """Wrap again when something put Flask's own ``wsgi_app`` back over ours.

        ``FlaskInstrumentor().uninstrument_app`` restores the ``wsgi_app`` it saw, dropping
        every wrapper added after it: the request that finds out is served untracked,
        the next ones are tracked again.
        """
        app = self._app_ref()
        if app is not None and getattr(app.wsgi_app, "__func__", None) is type(app).wsgi_app:
            self._wrap(app)

    # -- the wrapper ------------------------------------------------------------------

    def wsgi_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """``app.wsgi_app``, tracked: starts the request's tracking and finishes it once."""
        exchange = Exchange(self, start_response)
        environ[self.environ_key] = exchange
        try:
            body = self._inner(environ, exchange.start_response)  # type: ignore[misc]
        except BaseException as exc:
            # The server answers 500 (or drops the connection); nothing else will finish it.
            self._unwind(exchange, environ, exc)
            environ.pop(self.environ_key, None)
            raise
        self._unwind(exchange, environ, None)
        # No hook needs it any more; kept, it would tie environ and state in a cycle.
        environ.pop(self.environ_key, None)
        state = exchange.state
        if state is None:
            return body  # not tracked: the body goes out untouched
        if in_memory(body):
            # Flask's usual response: the body is a few bytes already in memory, every hook
            # and teardown has run, nothing is left to time. Finishing here keeps the body
            # unwrapped (no per-chunk cost) and the record visible as soon as the app returns.
            exchange.sent = 0 if state.method == "HEAD" else declared_length(exchange.headers)
            self.finish(exchange)
            return body
        exchange.__class__ = PendingExchange  # finished by the server, or by the collector as a last resort
        file_wrapper = environ.get("wsgi.file_wrapper")
        if file_wrapper is not None and isinstance(body, file_wrapper):
            return self._pass_file_through(exchange, body)
        exchange.body = body
        return exchange

    def _unwind(self, exchange: Exchange, environ: dict[str, Any], exc: BaseException | None) -> None:
        """The app returned or raised: tear down every sink; finish now if it raised."""
        try:
            if not exchange.decided:
                # No hook of ours ran: the request ended before our before_request hook and no
                # after_request hook of ours is installed (no sink reads the user). Rare: the URL
                # is matched again for its rule.
                self._admit(exchange, self._matched_again(environ))
            state = exchange.state
            if state is None:
                return
            if exc is not None:
                exchange.status = _INTERNAL_ERROR
                _note_error(state, exc)
            for sink in self._teardowners:
                try:
                    sink.teardown(state)
                except Exception:
                    self._sink_failed(sink)
        except Exception:
            self._hook_failed("wsgi_app")
        if exc is not None:
            self.finish(exchange)

    def _matched_again(self, environ: dict[str, Any]) -> Request:
        """A request for ``environ`` with the rule and view arguments Flask matched (none when it matched none)."""
        req: Request = self._request_class(environ, populate_request=False, shallow=True)  # type: ignore[misc]
        app = self._app_ref()
        if app is not None:
            with contextlib.suppress(Exception):  # 404, 405, a redirect: unmatched, as Flask saw it
                req.url_rule, req.view_args = app.create_url_adapter(req).match(return_rule=True)  # type: ignore[union-attr]
        return req

    def _pass_file_through(self, exchange: Exchange, body: Any) -> Any:
        """A server's ``wsgi.file_wrapper`` goes back as it is, so the server can still use sendfile().

        The server sends the file without the bytes passing through Python: its size is
        the ``Content-Length`` the app declared, and it finishes when the server closes it.
        """
        exchange.sent = declared_length(exchange.headers)
        exchange.first_byte = time.perf_counter()  # handed over now; the server sends from here
        original = getattr(body, "close", None)

        def close() -> None:
            try:
                if original is not None:
                    original()
            finally:
                self.finish(exchange)

        try:
            body.close = close
        except (AttributeError, TypeError):  # a wrapper with slots: finish now, as it is handed over
            self.finish(exchange)
        return body

    # -- annotating hooks -------------------------------------------------------------

    # Each hook guards its whole body: a bug in the tracking must cost the request its
    # record, never its response. A try block costs nothing until something raises.

    def on_exception(self, sender: Any, exception: BaseException | None = None, **extra: Any) -> None:
        """``got_request_exception``: Flask is about to answer 500 for (or re-raise) an unhandled exception."""
        try:
            req = request._get_current_object()  # type: ignore[attr-defined]
            exchange = req.environ.get(self.environ_key)
            if exchange is None:
                return
            if not exchange.decided:  # it failed before our before_request hook ran
                exchange.g = g._get_current_object()  # type: ignore[attr-defined]
                self._admit(exchange, req)
            state = exchange.state
            if state is None or exception is None:
                return
            _note_error(state, exception)
            if self._user_callable:
                state.username = self._callable_user()  # after_request may never run now
        except Exception:
            self._hook_failed("got_request_exception")

    def _admit(self, exchange: Exchange, req: Request) -> None:
        """Decide once whether the request is tracked; start the sinks of a tracked one."""
        exchange.decided = True
        rule = req.url_rule
        if rule is None:
            endpoint, route = None, UNMATCHED_ROUTE
        else:
            endpoint, route = rule.endpoint, rule.rule
        info = self.endpoints.get(endpoint)
        if info is None:
            info = self._decide(endpoint)
        if not info.tracked or (self._exclude_re is not None and path_is_excluded(self._exclude_re, req.path)):
            return
        if self._excluded_urls is not None and url_is_excluded(self._excluded_urls, req):
            return
        if self._exclude_synthetic and synthetic_type(req.environ.get("HTTP_USER_AGENT")) in self._exclude_synthetic:
            return  # a probe or a crawler the app asked not to track (cached per User-Agent)
        method = req.method
        state = RequestState(
            req,
            exchange.start,
            exchange.timestamp,
            method,
            method if method in self._known_methods else OTHER,  # method_label(), without a call
            endpoint,
            route,
            info.blueprint,
            self.record_context,
        )
        if info.secrets is not None:
            state.secrets = info.secrets.values(req.path, req.view_args)
        exchange.state = state
        for sink in self._starters:
            try:
                sink.start(state)
            except Exception:
                self._sink_failed(sink)

    # -- finishing --------------------------------------------------------------------

    def body_failed(self, exchange: Exchange, exc: BaseException) -> None:
        """The body raised while being sent.

        Before its first chunk the server has sent nothing yet, so the client gets the server's own
        500 page: that is the status recorded. After one (gunicorn and Werkzeug send the headers
        even with an empty chunk), the client got the status the app started and a cut body.
        """
        if not exchange.handed_over:
            exchange.status = _INTERNAL_ERROR
        state = exchange.state
        if state is not None:
            _note_error(state, exc)

    def finish(self, exchange: Exchange) -> None:
        """Hand the finished request to every sink, exactly once per request."""
        if exchange.finished:
            return
        exchange.finished = True
        exchange.body = None
        state = exchange.state
        if state is None:
            return
        try:
            state.speed = speed = time.perf_counter() - state.start
            first_byte = exchange.first_byte
            # In memory: the server sends the body all at once, so the first byte goes out at the end.
            state.first_byte = speed if first_byte is None else first_byte - state.start
            state.status = status_code(exchange.status)
            state.response_size = exchange.sent
            if self._wants_details and exchange.g is not None:  # after_request never ran (an error escaped)
                self._capture_details(state, exchange.g, resolve=False)
        except Exception:
            self._hook_failed("finish")
        if self._wants_capture:
            try:
                headers = self._headers
                if headers is None:
                    state.captured = capture(state)
                else:  # the request's headers as its environ holds them, the response's as it started
                    state.captured = capture(state, headers.exchange(state.request.environ, exchange.headers))
            except (Unserialisable, RecursionError) as exc:  # its record alone is lost, counted by each sink
                state.capture_error = exc
            except Exception as exc:
                state.capture_error = exc
                self._hook_failed("capture")
        exchange.g = None
        for sink in self._finishers:
            try:
                sink.finish(state)
            except Exception:
                self._sink_failed(sink)
        # A queued state must not keep the request (its environ, its input stream), a
        # traceback (its frames) or a span alive.
        state.request = None  # type: ignore[assignment]
        state.error = None
        state.span = None
        state.context_token = None

    def _capture_details(self, state: RequestState, ctx_g: Any, *, resolve: bool) -> None:
        """Copy ``g.track_var`` and the user, once per request: in ``after_request``, else at finish."""
        state.track_var = track_var_of(ctx_g, resolve=resolve)
        capture = self._capture_user
        if capture == "id" or capture == "basic_auth":
            state.username = established_user(ctx_g)
            if state.username is None and capture == "basic_auth":
                state.username = basic_auth_user(state.request.environ)
        elif self._user_callable and resolve:
            state.username = self._callable_user()

    def _callable_user(self) -> str | None:
        try:
            user = self._capture_user()  # type: ignore[operator]
            return None if user is None else str(user)
        except Exception:
            logger.debug("TRACK_USAGE_CAPTURE_USER callable failed", exc_info=True)
            return None

    # -- failures ---------------------------------------------------------------------

    def _sink_failed(self, sink: Sink) -> None:
        self._failed(sink.name, f"flask-usage-otel sink {sink.name!r} failed; the request was not affected")

    def _hook_failed(self, hook: str) -> None:
        self._failed(hook, f"flask-usage-otel {hook} hook failed; the request was served, its record is lost")

    def _failed(self, where: str, message: str) -> None:
        """Count a failure and log its traceback, at most once per interval per place."""
        try:
            if self.metrics is not None:
                self.metrics.tracking_errors.labels(where).inc()
            now = time.monotonic()
            # A broken sink fails on every request: one traceback per interval is enough.
            if now - self._last_error_log.get(where, -_ERROR_LOG_INTERVAL) >= _ERROR_LOG_INTERVAL:
                self._last_error_log[where] = now
                logger.exception(message)
        except Exception:  # logging itself failed (a broken handler): nothing more to do
            pass

    def _decide(self, endpoint: str | None) -> _EndpointInfo:
        view = self._view_functions.get(endpoint) if endpoint is not None else None
        tracked = self.request_filter.decide(endpoint, view, self.settings.include_or_exclude_views, self._blueprints)
        info = _EndpointInfo(tracked, blueprint_of(endpoint), self._secret_paths_of(endpoint) if tracked else None)
        self.endpoints[endpoint] = info
        return info

    def _secret_paths_of(self, endpoint: str | None) -> SecretPaths | None:
        """The secret URL variables of every rule of ``endpoint``; for unmatched requests (None), of
        every rule of the app: a 405 or a redirect still carries a secret route's path.

        Flask adds no rule once requests are served."""
        app = self._app_ref()
        if not self._secret_names or app is None:
            return None
        return secret_paths(app, endpoint, self._secret_names)


def _note_error(state: RequestState, exc: BaseException) -> None:
    """Keep the first unhandled exception of a request (a later one is usually its consequence)."""
    if state.error is None and state.exception is None:
        state.error = exc
        state.exception = type(exc).__name__
