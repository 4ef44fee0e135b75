"""``TrackUsage``: the Flask extension object and its request hooks."""

from __future__ import annotations

import atexit
import functools
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Blueprint, Flask, Request, Response, current_app, g, has_app_context, request
from werkzeug.wsgi import ClosingIterator

from .config import ConfigError, Settings, load_settings
from .filters import RequestFilter, blueprint_of, path_is_excluded
from .flushing import flush_sinks
from .privacy import Anonymizer
from .prometheus import MetricsView, PrometheusSink, method_label, metrics_for, multiprocess_dir
from .record import UNMATCHED_ROUTE, RecordContext
from .sinks import RequestState, Sink, overrides

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .prometheus import PrometheusMetrics
    from .storage.base import Storage

logger = logging.getLogger("flask_usage_otel")

EXTENSION_KEY = "track_usage"
METRICS_ENDPOINT = "track_usage_metrics"
_STATE_ATTR = "_track_usage_state"
_SINK_ERROR_LOG_INTERVAL = 60.0

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class _EndpointInfo:
    tracked: bool
    blueprint: str | None


@dataclass
class _AppTracker:
    """Per-app state and the hooks bound to it (one per app, so hooks need no app lookup)."""

    settings: Settings
    request_filter: RequestFilter
    sinks: list[Sink]
    storages: list[Storage]
    metrics: PrometheusMetrics | None
    record_context: RecordContext
    endpoints: dict[str | None, _EndpointInfo] = field(default_factory=dict)
    _last_error_log: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._starters = [s for s in self.sinks if overrides(s, "start")]
        self._teardowners = [s for s in self.sinks if overrides(s, "teardown")]
        self._finishers = [s for s in self.sinks if overrides(s, "finish")]
        self._exclude_re = self.settings.exclude_paths_re
        self._capture_user = self.settings.capture_user
        # The user and g.track_var are read only when a sink will build the record.
        self._wants_details = any(s.uses_record for s in self.sinks)

    # -- hooks ------------------------------------------------------------------------

    # Each hook guards its whole body: a bug in the tracking must cost the request its
    # record, never its response. A try block costs nothing until something raises.

    def before_request(self) -> None:
        try:
            self._start(request._get_current_object())  # type: ignore[attr-defined]
        except Exception:
            self._hook_failed("before_request")

    def after_request(self, response: Response) -> Response:
        try:
            state: RequestState | None = getattr(request._get_current_object(), _STATE_ATTR, None)  # type: ignore[attr-defined]
            if state is not None and not state.finished:
                self._respond(state, response)
        except Exception:
            self._hook_failed("after_request")
        return response

    def teardown_request(self, exc: BaseException | None) -> None:
        try:
            state: RequestState | None = getattr(request._get_current_object(), _STATE_ATTR, None)  # type: ignore[attr-defined]
            if state is not None and not state.finished:
                self._tear_down(state, exc)
        except Exception:
            self._hook_failed("teardown_request")

    def _start(self, req: Request) -> None:
        start = time.perf_counter()
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
        method = req.method
        state = RequestState(
            req, start, time.time(), method, method_label(method), endpoint, route, info.blueprint, self.record_context
        )
        setattr(req, _STATE_ATTR, state)
        for sink in self._starters:
            try:
                sink.start(state)
            except Exception:
                self._sink_failed(sink)

    def _respond(self, state: RequestState, response: Response) -> None:
        state.status = response.status_code
        # The raw header: Response.content_length parses it through a slower descriptor.
        size = response.headers.get("Content-Length")
        state.response_size = int(size) if size and size.isascii() and size.isdigit() else None
        if self._wants_details:
            self._capture_details(state)
        if response.status_code >= 400 and isinstance(response.response, ClosingIterator):
            # An HTTPException page (404, 405, abort()) that Flask ran as a WSGI app:
            # a few bytes, buffered so the request finishes now like any plain response.
            response.make_sequence()
        # A file sent by the server (send_file: direct_passthrough, maybe sendfile()) is
        # never closed through the Response, and wrapping it would defeat sendfile: such
        # responses finish at teardown like plain ones.
        if response.is_streamed and not response.direct_passthrough and not state.streamed:
            state.streamed = True
            finish = functools.partial(self.finish, state)
            # Time the body, not the view: finish when the iterator is exhausted or
            # closed, whichever comes first.
            response.response = _TimedBody(response.response, finish)
            response.call_on_close(finish)

    def _tear_down(self, state: RequestState, exc: BaseException | None) -> None:
        if exc is not None and state.exception is None:
            state.exception = type(exc).__name__
        for sink in self._teardowners:
            try:
                sink.teardown(state, exc)
            except Exception:
                self._sink_failed(sink)
        if state.status is None:
            # after_request never ran: the exception propagated (PROPAGATE_EXCEPTIONS,
            # testing), and the server will answer 500.
            state.status = 500
            if self._wants_details:
                self._capture_details(state)
            self.finish(state)
        elif not state.streamed:
            self.finish(state)

    # -- finishing --------------------------------------------------------------------

    def finish(self, state: RequestState) -> None:
        """Hand the finished request to every sink, exactly once per request."""
        if state.finished:
            return
        state.finished = True
        state.speed = time.perf_counter() - state.start
        if self._wants_details:
            state.capture()
        for sink in self._finishers:
            try:
                sink.finish(state)
            except Exception:
                self._sink_failed(sink)
        # A queued state must not keep the request (its environ, its input stream) alive.
        state.request = None  # type: ignore[assignment]

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
            if now - self._last_error_log.get(where, -_SINK_ERROR_LOG_INTERVAL) >= _SINK_ERROR_LOG_INTERVAL:
                self._last_error_log[where] = now
                logger.exception(message)
        except Exception:  # logging itself failed (a broken handler): nothing more to do
            pass

    # -- helpers ----------------------------------------------------------------------

    def _decide(self, endpoint: str | None) -> _EndpointInfo:
        view = current_app.view_functions.get(endpoint) if endpoint is not None else None
        tracked = self.request_filter.decide(endpoint, view, self.settings.include_or_exclude_views)
        info = _EndpointInfo(tracked, blueprint_of(endpoint))
        self.endpoints[endpoint] = info
        return info

    def _capture_details(self, state: RequestState) -> None:
        """Read what only the request context can give: ``g.track_var`` and the user."""
        state.track_var = g._get_current_object().get("track_var")  # one proxy lookup, not two
        if self._capture_user is not None:
            state.username = self._username(state)

    def _username(self, state: RequestState) -> str | None:
        capture = self._capture_user
        try:
            if callable(capture):
                user = capture()
                return None if user is None else str(user)
            return _default_username(state.request)
        except Exception:
            logger.debug("could not read the current user", exc_info=True)
            return None


def _default_username(req: Any) -> str | None:
    """Flask-Login's ``current_user`` when it is in use, else the basic-auth user name."""
    if "flask_login" in sys.modules and hasattr(current_app, "login_manager"):
        from flask_login import current_user

        if current_user and current_user.is_authenticated:
            user_id = current_user.get_id()
            return None if user_id is None else str(user_id)
    if req.environ.get("HTTP_AUTHORIZATION", "")[:6].lower() == "basic ":
        auth = req.authorization
        return auth.username if auth is not None else None
    return None


class _TimedBody:
    """Wraps a streamed body so the request finishes when the body is done."""

    __slots__ = ("_body", "_finish")

    def __init__(self, body: Iterable[Any], finish: Callable[[], None]) -> None:
        self._body = body
        self._finish = finish

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._body
        finally:
            self._finish()

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()


class TrackUsage:
    """Track every request of a Flask app into Prometheus, OpenTelemetry and SQL storage.

    :param app: the app to track now; or call :meth:`init_app` later (app factories).
    :param storage: a storage object (such as :class:`SQLStorage`) or a list of them;
        the default for every app passed to :meth:`init_app` without its own.
    :param registry: the ``prometheus_client.CollectorRegistry`` for the metrics
        (default: the global ``REGISTRY``). Give each test its own to keep them apart.
    :param tracer_provider: OpenTelemetry tracer provider (default: the global one).
    :param meter_provider: OpenTelemetry meter provider (default: the global one).
    """

    def __init__(
        self,
        app: Flask | None = None,
        storage: Storage | Sequence[Storage] | None = None,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        self._storage = storage
        self._registry = registry
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._filter = RequestFilter()
        self._trackers: weakref.WeakKeyDictionary[Flask, _AppTracker] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, storage: Storage | Sequence[Storage] | None = None) -> None:
        """Validate the app's ``TRACK_USAGE_*`` settings and install the request hooks.

        :param app: the Flask app.
        :param storage: storage for this app, overriding the constructor's.
        :raises ConfigError: a setting is invalid (the message names the key).
        :raises RuntimeError: the app already has a ``TrackUsage``.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A TrackUsage is already registered on this app; call init_app once per app "
                "(one TrackUsage object may serve several apps)."
            )
        settings = load_settings(app.config)
        # Every check that can refuse the app runs before anything is registered on it.
        serve_metrics = settings.metrics_path is not None and settings.prometheus
        if serve_metrics and settings.metrics_path in {r.rule for r in app.url_map.iter_rules()}:
            raise ConfigError("TRACK_USAGE_METRICS_PATH", f"{settings.metrics_path!r} is already a route of the app")
        storages = _as_list(storage if storage is not None else self._storage)
        multiprocess = multiprocess_dir() is not None
        registry = self._registry
        if registry is None:
            from prometheus_client import REGISTRY

            registry = REGISTRY

        sinks: list[Sink] = []
        if settings.otel is not False:
            from .otel import create_otel_sink

            # First: its start sets the trace ids the other sinks' observations carry.
            otel_sink = create_otel_sink(app, settings, self._tracer_provider, self._meter_provider)
            if otel_sink is not None:
                sinks.append(otel_sink)
        metrics = metrics_for(registry, settings) if settings.prometheus else None
        if metrics is not None:
            sinks.append(
                PrometheusSink(
                    metrics, exception_label_limit=settings.exception_label_limit, exemplars=not multiprocess
                )
            )
        if storages:
            from .storage.sink import StorageSink

            sinks.extend(StorageSink(s, settings, metrics) for s in storages)

        tracker = _AppTracker(settings, self._filter, sinks, storages, metrics, _record_context(app, settings))
        with self._lock:
            self._trackers[app] = tracker
        app.extensions[EXTENSION_KEY] = self

        # First in, so ours runs before any hook that could short-circuit the request;
        # Flask runs after_request and teardown functions in reverse, so ours run last.
        app.before_request_funcs.setdefault(None, []).insert(0, tracker.before_request)
        app.after_request_funcs.setdefault(None, []).insert(0, tracker.after_request)
        app.teardown_request_funcs.setdefault(None, []).insert(0, tracker.teardown_request)

        if serve_metrics:
            self._filter.never_track(METRICS_ENDPOINT)
            app.add_url_rule(
                settings.metrics_path,
                endpoint=METRICS_ENDPOINT,
                view_func=MetricsView(registry, settings.metrics_auth, multiprocess),
                methods=["GET"],
            )
        atexit.register(_shutdown_sinks, weakref.ref(tracker))

    # -- include / exclude ------------------------------------------------------------

    def include(self, view: F) -> F:
        """Track this view (decorator, above or below ``@app.route``); returns the view."""
        self._set_view(view, True)
        return view

    def exclude(self, view: F) -> F:
        """Do not track this view (decorator, above or below ``@app.route``); returns the view."""
        self._set_view(view, False)
        return view

    def include_blueprint(self, blueprint: Blueprint | str) -> None:
        """Track every view of a blueprint, including views added to it later."""
        self._set_blueprint(blueprint, True)

    def exclude_blueprint(self, blueprint: Blueprint | str) -> None:
        """Do not track any view of a blueprint, including views added to it later."""
        self._set_blueprint(blueprint, False)

    def _set_view(self, view: Any, tracked: bool) -> None:
        self._filter.set_view(view, tracked)
        self._forget_decisions()

    def _set_blueprint(self, blueprint: Blueprint | str, tracked: bool) -> None:
        self._filter.set_blueprint(blueprint if isinstance(blueprint, str) else blueprint.name, tracked)
        self._forget_decisions()

    def _forget_decisions(self) -> None:
        with self._lock:
            for tracker in list(self._trackers.values()):
                tracker.endpoints.clear()

    # -- storage ----------------------------------------------------------------------

    def get_usage(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Raw rows from the current app's first storage; arguments as ``Storage.get_usage``."""
        storages = self._tracker().storages
        if not storages:
            raise RuntimeError("this app has no storage; pass storage=SQLStorage(...) to TrackUsage")
        return storages[0].get_usage(*args, **kwargs)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Write out every queued row of the current app's storages; True when none is left."""
        return flush_sinks(self._tracker().sinks, timeout)

    def storages(self) -> list[Storage]:
        """The storages of the current app (inside an app context, or the only app)."""
        return list(self._tracker().storages)

    def _tracker(self) -> _AppTracker:
        if has_app_context():
            tracker = self._trackers.get(current_app._get_current_object())  # type: ignore[attr-defined]
            if tracker is None:
                raise RuntimeError("the current app is not tracked by this TrackUsage; call init_app(app)")
            return tracker
        trackers = list(self._trackers.values())
        if len(trackers) != 1:
            raise RuntimeError("several apps are tracked: call this inside an app context (with app.app_context())")
        return trackers[0]


def _record_context(app: Flask, settings: Settings) -> RecordContext:
    anonymizer = Anonymizer(settings.anonymize_ip, settings.anonymize_ip_key) if settings.anonymize_ip else None
    geoip = None
    if settings.geoip_db is not None:
        from .geoip import GeoIP

        try:
            geoip = GeoIP(settings.geoip_db)
        except Exception as exc:  # missing file, not a MaxMind DB (InvalidDatabaseError), no permission
            raise ConfigError("TRACK_USAGE_GEOIP_DB", f"cannot open {settings.geoip_db!r}: {exc}") from None
    return RecordContext(app.name, anonymizer, geoip)


def _as_list(storage: Storage | Sequence[Storage] | None) -> list[Storage]:
    if storage is None:
        return []
    if isinstance(storage, list | tuple):
        return list(storage)
    return [storage]  # type: ignore[list-item]


def _shutdown_sinks(tracker_ref: weakref.ref[_AppTracker]) -> None:
    tracker = tracker_ref()
    if tracker is None:
        return
    flush_sinks(tracker.sinks, 5.0)  # in parallel: one slow sink must not cost the others their rows
    for sink in tracker.sinks:
        try:
            sink.shutdown(timeout=5.0)
        except Exception:
            logger.exception("flask-usage-otel sink %r failed to shut down", sink.name)
