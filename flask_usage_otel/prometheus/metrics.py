"""The Prometheus metric definitions, created once per (registry, prefix) and shared.

Sharing them means several apps or test cases on one registry never hit "Duplicated
timeseries"; the sink (``sink.py``) caches their labelled children per label tuple.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .._version import __version__
from ..config import ConfigError, Settings
from ..writer import DROP_REASONS, Observer
from .routes import RouteInventory

LABELS = ("method", "route", "blueprint", "status")
"""The labels of the request counter and the duration histogram."""
ROUTE_LABELS = ("method", "route", "blueprint")
"""The labels of the time-to-first-byte and size histograms: no ``status``, so each costs a scrape a third
(or less) of what it would per status; a route's blueprint is fixed by its rule, so it adds no series."""


class _WithConstLabels:
    """A labelled metric whose ``labels()`` adds the values of ``TRACK_USAGE_METRICS_CONST_LABELS``."""

    __slots__ = ("_const", "_metric")

    def __init__(self, metric: Any, const: tuple[str, ...]) -> None:
        self._metric = metric
        self._const = const

    def labels(self, *values: str) -> Any:
        return self._metric.labels(*values, *self._const)


class PrometheusMetrics:
    """Every metric flask-usage-otel exports, registered once on one registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        prefix: str,
        buckets: tuple[float, ...],
        size_buckets: tuple[float, ...],
        const_labels: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.prefix = prefix
        self.buckets = buckets
        self.size_buckets = size_buckets
        self.const_labels = const_labels
        # Constant labels are real labels (the last ones) with one value each: so they also reach
        # the files of multiprocess mode, which keep values by their labels.
        self._const_names = tuple(name for name, _ in const_labels)
        self._const_values = tuple(value for _, value in const_labels)
        self._registry = registry
        self.requests = self._labelled(Counter, "requests", "HTTP requests tracked, by route template.", LABELS)
        self.duration = self._labelled(
            Histogram,
            "request_duration_seconds",
            "Time from the request reaching the app to the end of the response body.",
            LABELS,
            buckets=buckets,
        )
        self.first_byte = self._labelled(
            Histogram,
            "time_to_first_byte_seconds",
            "Time from the request reaching the app to the first chunk of the response handed to the server "
            "(the whole request for a body already in memory).",
            ROUTE_LABELS,
            buckets=buckets,
        )
        self.response_size = self._labelled(
            Histogram,
            "response_size_bytes",
            "Response body size in bytes, as sent.",
            ROUTE_LABELS,
            buckets=size_buckets,
        )
        self.in_progress = self._labelled(
            Gauge,
            "requests_in_progress",
            "Tracked requests being served now.",
            ("method",),
            multiprocess_mode="livesum",
        )
        self.exceptions = self._labelled(
            Counter,
            "request_exceptions",
            "Requests whose view raised an exception that nothing handled, by exception class.",
            ("method", "route", "exception"),
        )
        self.tracking_errors = self._labelled(
            Counter,
            "tracking_errors",
            "Failures inside the tracking itself, by hook or sink; the request was served all the same.",
            ("component",),
        )
        info = self._labelled(Gauge, "info", "flask-usage-otel version.", ("version",), multiprocess_mode="max")
        info.labels(__version__).set(1)
        self.routes = RouteInventory(f"{prefix}route_info", const_labels)
        registry.register(self.routes)
        self._storage_lock = threading.Lock()

    def _labelled(self, kind: type, name: str, documentation: str, labels: tuple[str, ...], **options: Any) -> Any:
        """A metric on ``labels`` (plus the constant labels); without any labels, its one child."""
        metric = kind(
            f"{self.prefix}{name}", documentation, (*labels, *self._const_names), registry=self._registry, **options
        )
        if not labels:
            return metric.labels(*self._const_values) if self._const_names else metric
        return _WithConstLabels(metric, self._const_values) if self._const_names else metric

    # Made by add_storage_metrics: an app without a storage shows no storage metric on /metrics.
    storage_queue_rows: Gauge
    storage_rows_written: Counter
    storage_rows_dropped: Counter
    storage_write_errors: Counter
    storage_dropped: Counter
    storage_write_timeouts: Counter

    def __getattr__(self, name: str) -> object:
        # A writer given these metrics directly (not through init_app) makes them on first use.
        if name.startswith("storage_") and name in PrometheusMetrics.__annotations__:
            self.add_storage_metrics()
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def add_storage_metrics(self) -> None:
        """Register the storage writer's metrics (once; for an app that has a storage)."""
        with self._storage_lock:
            if "storage_write_timeouts" in self.__dict__:
                return
            self.storage_queue_rows = self._labelled(
                Gauge,
                "storage_queue_rows",
                "Rows waiting in the storage writer's queue.",
                (),
                multiprocess_mode="livesum",
            )
            self.storage_rows_written = self._labelled(
                Counter, "storage_rows_written", "Rows the storage writer has written.", ()
            )
            self.storage_rows_dropped = self._labelled(
                Counter,
                "storage_rows_dropped",
                "Rows the storage writer dropped, for any reason (see storage_dropped_total by reason).",
                (),
            )
            self.storage_write_errors = self._labelled(
                Counter, "storage_write_errors", "Failed attempts to write a batch (the batch is retried).", ()
            )
            self.storage_dropped = self._labelled(
                Counter, "storage_dropped", f"Rows not written, by reason: {', '.join(DROP_REASONS)}.", ("reason",)
            )
            for reason in DROP_REASONS:  # every reason shows as 0 from the start: rate() and alerts see them
                self.storage_dropped.labels(reason)
            self.storage_write_timeouts = self._labelled(
                Counter,
                "storage_write_timeouts",
                "Write attempts abandoned because the database did not answer within the deadline (retried).",
                (),
            )

    def storage_observer(self) -> StorageObserver:
        """An observer of one storage writer, reporting into these metrics."""
        return StorageObserver(self)


_metrics_lock = threading.Lock()
_metrics_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, PrometheusMetrics]] = (
    weakref.WeakKeyDictionary()
)


class StorageObserver(Observer):
    """Reports a storage writer's rows written and dropped (by reason), its failed writes and its queue."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics
        self._by_reason = {reason: metrics.storage_dropped.labels(reason) for reason in DROP_REASONS}

    def written(self, rows: int) -> None:
        self._metrics.storage_rows_written.inc(rows)

    def dropped(self, reason: str, rows: int) -> None:
        self._metrics.storage_rows_dropped.inc(rows)
        self._by_reason[reason].inc(rows)

    def write_failed(self, timed_out: bool) -> None:
        self._metrics.storage_write_errors.inc()
        if timed_out:
            self._metrics.storage_write_timeouts.inc()

    def queue_depth(self, rows: int) -> None:
        self._metrics.storage_queue_rows.set(rows)


def metrics_for(registry: CollectorRegistry, settings: Settings) -> PrometheusMetrics:
    """The metrics for ``registry`` and the settings' prefix, created on first use."""
    with _metrics_lock:
        by_prefix = _metrics_by_registry.setdefault(registry, {})
        metrics = by_prefix.get(settings.metrics_prefix)
        if metrics is None:
            metrics = PrometheusMetrics(
                registry,
                settings.metrics_prefix,
                settings.buckets,
                settings.size_buckets,
                settings.metrics_const_labels,
            )
            by_prefix[settings.metrics_prefix] = metrics
        elif (metrics.buckets, metrics.size_buckets) != (settings.buckets, settings.size_buckets):
            raise ConfigError(
                "TRACK_USAGE_BUCKETS",
                f"metrics with prefix {settings.metrics_prefix!r} already exist on this registry with other "
                "buckets; use the same buckets, another TRACK_USAGE_METRICS_PREFIX, or another registry",
            )
        elif metrics.const_labels != settings.metrics_const_labels:
            raise ConfigError(
                "TRACK_USAGE_METRICS_CONST_LABELS",
                f"metrics with prefix {settings.metrics_prefix!r} already exist on this registry with other "
                "constant labels; use the same ones, another TRACK_USAGE_METRICS_PREFIX, or another registry",
            )
        return metrics


def route_inventories(registry: CollectorRegistry) -> Iterator[RouteInventory]:
    """The route inventories of every metrics prefix on ``registry``."""
    with _metrics_lock:
        found = list(_metrics_by_registry.get(registry, {}).values())
    return (metrics.routes for metrics in found)


def owned_metrics(registry: CollectorRegistry) -> list[Any]:
    """The request metrics of every metrics prefix on ``registry`` (what ``/metrics`` renders itself)."""
    with _metrics_lock:
        found = list(_metrics_by_registry.get(registry, {}).values())
    names = ("requests", "duration", "first_byte", "response_size", "exceptions", "in_progress", "tracking_errors")
    wrapped = (getattr(m, name) for m in found for name in names)
    return [getattr(metric, "_metric", metric) for metric in wrapped]  # a _WithConstLabels holds the metric
