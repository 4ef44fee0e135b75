"""The Prometheus metric definitions, created once per (registry, prefix) and shared.

Sharing them means several apps or test cases on one registry never hit "Duplicated
timeseries"; the sink (``sink.py``) caches their labelled children per label tuple.
"""

from __future__ import annotations

import threading
import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .._version import __version__
from ..config import ConfigError, Settings
from ..writer import DROP_REASONS, Observer

LABELS = ("method", "route", "blueprint", "status")


class PrometheusMetrics:
    """Every metric flask-usage-otel exports, registered once on one registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        prefix: str,
        buckets: tuple[float, ...],
        size_buckets: tuple[float, ...],
    ) -> None:
        self.prefix = prefix
        self.buckets = buckets
        self.size_buckets = size_buckets
        self.requests = Counter(
            f"{prefix}requests", "HTTP requests tracked, by route template.", LABELS, registry=registry
        )
        self.duration = Histogram(
            f"{prefix}request_duration_seconds",
            "Time from the request reaching the app to the end of the response body.",
            LABELS,
            buckets=buckets,
            registry=registry,
        )
        self.response_size = Histogram(
            f"{prefix}response_size_bytes",
            "Response body size, when known before sending.",
            LABELS,
            buckets=size_buckets,
            registry=registry,
        )
        self.in_progress = Gauge(
            f"{prefix}requests_in_progress",
            "Tracked requests being served now.",
            ("method",),
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.exceptions = Counter(
            f"{prefix}request_exceptions",
            "Requests whose view raised an exception that nothing handled, by exception class.",
            ("method", "route", "exception"),
            registry=registry,
        )
        self.tracking_errors = Counter(
            f"{prefix}tracking_errors",
            "Failures inside the tracking itself, by hook or sink; the request was served all the same.",
            ("component",),
            registry=registry,
        )
        info = Gauge(
            f"{prefix}info", "flask-usage-otel version.", ("version",), multiprocess_mode="max", registry=registry
        )
        info.labels(__version__).set(1)
        self._registry = registry
        self._storage_lock = threading.Lock()

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
            registry, prefix = self._registry, self.prefix
            self.storage_queue_rows = Gauge(
                f"{prefix}storage_queue_rows",
                "Rows waiting in the storage writer's queue.",
                multiprocess_mode="livesum",
                registry=registry,
            )
            self.storage_rows_written = Counter(
                f"{prefix}storage_rows_written", "Rows the storage writer has written.", registry=registry
            )
            self.storage_rows_dropped = Counter(
                f"{prefix}storage_rows_dropped",
                "Rows the storage writer dropped, for any reason (see storage_dropped_total by reason).",
                registry=registry,
            )
            self.storage_write_errors = Counter(
                f"{prefix}storage_write_errors",
                "Failed attempts to write a batch (the batch is retried).",
                registry=registry,
            )
            self.storage_dropped = Counter(
                f"{prefix}storage_dropped",
                f"Rows not written, by reason: {', '.join(DROP_REASONS)}.",
                ("reason",),
                registry=registry,
            )
            for reason in DROP_REASONS:  # every reason shows as 0 from the start: rate() and alerts see them
                self.storage_dropped.labels(reason)
            self.storage_write_timeouts = Counter(
                f"{prefix}storage_write_timeouts",
                "Write attempts abandoned because the database did not answer within the deadline (retried).",
                registry=registry,
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
            metrics = PrometheusMetrics(registry, settings.metrics_prefix, settings.buckets, settings.size_buckets)
            by_prefix[settings.metrics_prefix] = metrics
        elif (metrics.buckets, metrics.size_buckets) != (settings.buckets, settings.size_buckets):
            raise ConfigError(
                "TRACK_USAGE_BUCKETS",
                f"metrics with prefix {settings.metrics_prefix!r} already exist on this registry with other "
                "buckets; use the same buckets, another TRACK_USAGE_METRICS_PREFIX, or another registry",
            )
        return metrics
