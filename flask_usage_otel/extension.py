"""``TrackUsage``: the Flask extension object: settings, sinks, include/exclude, storage access.

How a request is tracked from the environ to the close of its body is ``lifecycle.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Blueprint, Flask, current_app, got_request_exception, has_app_context

from .config import ConfigError, Settings, load_settings
from .filters import RequestFilter
from .flushing import flush_sinks
from .ftu_names import METRICS_ENDPOINT, FakeTimeStorage, LegacyTrackUsageNames, warn_legacy_name
from .lifecycle import RequestTracker
from .privacy import Anonymizer, QueryRedactor
from .prometheus import MetricsView, PrometheusSink, metrics_for, multiprocess_dir
from .prometheus.exposition import MetricsMount
from .record import RecordContext
from .sinks import Sink
from .storage.compat import adapt_storages

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .storage.base import UsageStorage

logger = logging.getLogger("flask_usage_otel")

EXTENSION_KEY = "track_usage"

F = TypeVar("F", bound=Callable[..., Any])


class TrackUsage(LegacyTrackUsageNames):
    """Track every request of a Flask app into Prometheus, OpenTelemetry and SQL storage.

    :param app: the app to track now; or call :meth:`init_app` later (app factories).
    :param storage: a storage object (such as :class:`SQLStorage`) or a list of them;
        the default for every app passed to :meth:`init_app` without its own.
    :param registry: the ``prometheus_client.CollectorRegistry`` for the metrics
        (default: the global ``REGISTRY``). Give each test its own to keep them apart.
    :param tracer_provider: OpenTelemetry tracer provider (default: the global one).
    :param meter_provider: OpenTelemetry meter provider (default: the global one).
    :param logger_provider: OpenTelemetry logger provider for ``TRACK_USAGE_OTEL_LOGS`` and the
        exception log event (default: the global one when it is an SDK provider).
    :param request_hook: ``request_hook(span, environ)``, called with each server span once it has
        its attributes (opentelemetry-instrumentation-flask's signature).
    :param response_hook: ``response_hook(span, status, response_headers)``, called with the status
        line and headers the response starts with.
    """

    def __init__(
        self,
        app: Flask | None = None,
        storage: UsageStorage | Sequence[UsageStorage] | None = None,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        logger_provider: Any = None,
        request_hook: Callable[[Any, dict[str, Any]], None] | None = None,
        response_hook: Callable[[Any, str, list[tuple[str, str]]], None] | None = None,
        _fake_time: datetime | None = None,
    ) -> None:
        if _fake_time is not None:
            warn_legacy_name("TrackUsage(_fake_time=...)", "a test that reads the time the rows hold")
        self._fake_time = _fake_time
        self._storage = storage
        self._registry = registry
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._logger_provider = logger_provider
        self._hooks = {"request_hook": request_hook, "response_hook": response_hook}
        self._filter = RequestFilter()
        self._trackers: weakref.WeakKeyDictionary[Flask, RequestTracker] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._mounts: weakref.WeakKeyDictionary[Flask, MetricsMount] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, storage: UsageStorage | Sequence[UsageStorage] | None = None) -> None:
        """Validate the app's ``TRACK_USAGE_*`` settings and install the request hooks.

        Called again for an app this object already tracks, it sets the app up anew (with
        this storage and the app's settings as they are now): Flask-Track-Usage's order,
        ``t = TrackUsage(app)`` then ``t.init_app(app, storage)``, works.

        :param app: the Flask app.
        :param storage: storage for this app, overriding the constructor's.
        :raises ConfigError: a setting is invalid (the message names the key).
        :raises RuntimeError: another ``TrackUsage`` tracks the app.
        """
        registered = app.extensions.get(EXTENSION_KEY)
        if registered is not None and registered is not self:
            raise RuntimeError(
                "A TrackUsage is already registered on this app; call init_app once per app "
                "(one TrackUsage object may serve several apps)."
            )
        settings = load_settings(app.config)
        # Every check that can refuse the app runs before anything is registered on it (or an
        # earlier set-up of it is taken down).
        storages = adapt_storages(_as_list(storage if storage is not None else self._storage))
        for storage_object in storages:
            check_settings = getattr(storage_object, "check_settings", None)
            if check_settings is not None:
                check_settings(settings)
        previous = self._trackers.get(app) if registered is self else None
        if previous is not None:
            self._check_replaceable(app, previous)
        multiprocess = multiprocess_dir() is not None
        registry = self._registry
        if registry is None:
            from prometheus_client import REGISTRY

            registry = REGISTRY

        sinks: list[Sink] = []
        if settings.otel is not False:
            from .otel import create_otel_sink

            # First: its start sets the trace ids the other sinks' observations carry.
            otel_sink = create_otel_sink(
                app, settings, self._tracer_provider, self._meter_provider, self._logger_provider, **self._hooks
            )
            if otel_sink is not None:
                sinks.append(otel_sink)
        metrics = metrics_for(registry, settings) if settings.prometheus else None
        if metrics is not None and storages:
            metrics.add_storage_metrics()  # only then: /metrics of an app without a storage shows none
        if metrics is not None:
            # <prefix>route_info lists the app's tracked routes from its URL map at each scrape.
            metrics.routes.add(app, self._filter.rule_filter(app, settings))
            sinks.append(
                PrometheusSink(
                    metrics, exception_label_limit=settings.exception_label_limit, exemplars=not multiprocess
                )
            )
        for storage_object in storages:
            # A storage on Flask-SQLAlchemy's engine needs the app outside any request context:
            # requests finish after Flask has popped it (as the wsgi_app wrapper unwinds).
            bind_app = getattr(storage_object, "bind_app", None)
            if bind_app is not None:
                bind_app(app)
        context = _record_context(app, settings)
        if storages:
            from .storage.sink import storage_sink

            fake_time = self._fake_time
            sinks.extend(
                storage_sink(s if fake_time is None else FakeTimeStorage(s, fake_time), settings, metrics, context)
                for s in storages
            )
        if settings.otel_logs:
            from .otel.logs import create_log_sink

            sinks.append(create_log_sink(settings, context, self._logger_provider, metrics))

        tracker = RequestTracker(settings, self._filter, sinks, storages, metrics, context)
        if previous is not None:
            self._take_down(app, previous)
        with self._lock:
            self._trackers[app] = tracker
        app.extensions[EXTENSION_KEY] = self

        tracker.install(app)

        if settings.metrics_path is not None and settings.prometheus:
            self._filter.never_track(METRICS_ENDPOINT)
            view = MetricsView(registry, settings.metrics_auth, multiprocess)
            # Added at the app's first request, when the app has no route there by then (see MetricsMount).
            self._mounts[app] = MetricsMount(app, settings.metrics_path, METRICS_ENDPOINT, view)
        atexit.register(_shutdown_sinks, weakref.ref(tracker))

    def _check_replaceable(self, app: Flask, tracker: RequestTracker) -> None:
        """Refuse a new set-up that could not take the earlier one out of ``app.wsgi_app``."""
        mount = self._mounts.get(app)
        below = mount.inner if mount is not None and mount.is_top(app) else app.wsgi_app
        if below != tracker.wsgi_app:
            raise RuntimeError(
                "app.wsgi_app was wrapped after TrackUsage(app) (by middleware such as ProxyFix), so this "
                "TrackUsage cannot set the app up anew: call init_app(app, storage) before wrapping app.wsgi_app"
            )

    def _take_down(self, app: Flask, tracker: RequestTracker) -> None:
        """Undo what ``init_app`` installed for ``tracker`` (checked by ``_check_replaceable``)."""
        mount = self._mounts.pop(app, None)
        if mount is not None:
            mount.cancel(app)
        app.wsgi_app = tracker._inner  # type: ignore[method-assign]
        for hooks, hook in (
            (app.before_request_funcs, tracker.before_request),
            (app.after_request_funcs, tracker.after_request),
        ):
            with contextlib.suppress(ValueError):
                hooks.get(None, []).remove(hook)  # type: ignore[arg-type]
        got_request_exception.disconnect(tracker.on_exception, app)
        _shutdown_sinks(weakref.ref(tracker))

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
        self._filter.set_blueprint(blueprint, tracked)
        self._forget_decisions()

    def _forget_decisions(self) -> None:
        with self._lock:
            for tracker in list(self._trackers.values()):
                tracker.endpoints.clear()

    # -- storage ----------------------------------------------------------------------

    def get_usage(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Rows from the current app's first storage; arguments as ``UsageStorage.get_usage``.

        With ``SQLStorage`` these are in Flask-Track-Usage's form; :meth:`read_usage` gives decoded rows.
        """
        storages = self._tracker().storages
        if not storages:
            raise RuntimeError("this app has no storage; pass storage=SQLStorage(...) to TrackUsage")
        return storages[0].get_usage(*args, **kwargs)

    def read_usage(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Decoded rows (every field) from the current app's first storage that has ``read_usage``."""
        for storage in self._tracker().storages:
            read = getattr(storage, "read_usage", None)
            if read is not None:
                return read(*args, **kwargs)
        raise RuntimeError("this app has no storage with read_usage; pass storage=SQLStorage(...) to TrackUsage")

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Write out every queued row of the current app's storages; True when none is left."""
        return flush_sinks(self._tracker().sinks, timeout)

    def forget(self, username: str | None = None, remote_addr: str | None = None) -> int:
        """Delete a person's rows from the current app's storages (an erasure request); returns how many.

        Queued rows are written first, so none escapes. The values given are transformed as
        the app wrote them (``TRACK_USAGE_ANONYMIZE_IP``, column widths), so the raw address
        or user id finds the rows.

        :raises flask_usage_otel.privacy.ErasureRefused: addresses are stored truncated, which
            cannot single out a person (nothing is deleted).
        :raises RuntimeError: no storage of the app can delete rows, or its queued rows could
            not be written first (nothing is deleted then).
        """
        if username is None and remote_addr is None:
            raise ValueError("forget needs a username, a remote_addr or both")
        tracker = self._tracker()
        storages = [s for s in tracker.storages if callable(getattr(s, "forget", None))]
        if not storages:
            raise RuntimeError("this app has no storage that can delete rows (SQLStorage can)")
        # Only the sinks of the storages erased from: a slow collector elsewhere must not hold up an erasure.
        erased_sinks = [sink for sink in tracker.sinks if getattr(sink, "storage", None) in storages]
        if not flush_sinks(erased_sinks, 10.0):
            # A row still queued would be written after the erasure and outlive it.
            raise RuntimeError("the queued rows could not be written (is the database up?); nothing was deleted")
        anonymizer = tracker.record_context.anonymizer
        options: dict[str, Any] = {} if anonymizer is None else {"anonymizer": anonymizer}
        return sum(s.forget(username=username, remote_addr=remote_addr, **options) for s in storages)  # type: ignore[attr-defined]

    def anonymizer_for(self, app: Flask) -> Anonymizer | None:
        """The ``Anonymizer`` ``app``'s rows are written with (None: addresses as they are), which
        erasure applies to an address; ``SQLStorage.forget`` asks for it.

        :raises LookupError: ``app`` is not tracked by this object.
        """
        tracker = self._trackers.get(app)
        if tracker is None:
            raise LookupError(f"{app!r} is not tracked by this TrackUsage")
        return tracker.record_context.anonymizer

    def storages(self) -> list[UsageStorage]:
        """The storages of the current app (inside an app context, or the only app)."""
        return list(self._tracker().storages)

    def _tracker(self) -> RequestTracker:
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
    redactor = QueryRedactor(settings.redact_query_params) if settings.redact_query_params else None
    return RecordContext(app.name, anonymizer, geoip, redactor)


def _as_list(storage: UsageStorage | Sequence[UsageStorage] | None) -> list[UsageStorage]:
    if storage is None:
        return []
    if isinstance(storage, list | tuple):
        return list(storage)
    return [storage]  # type: ignore[list-item]


def _shutdown_sinks(tracker_ref: weakref.ref[RequestTracker]) -> None:
    tracker = tracker_ref()
    if tracker is None:
        return
    flush_sinks(tracker.sinks, 5.0)  # in parallel: one slow sink must not cost the others their rows
    for sink in tracker.sinks:
        try:
            sink.shutdown(timeout=5.0)
        except Exception:
            logger.exception("flask-usage-otel sink %r failed to shut down", sink.name)
