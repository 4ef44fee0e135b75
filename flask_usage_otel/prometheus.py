"""Prometheus metrics: definitions, the sink that observes them, and the ``/metrics`` view.

Metric objects are created once per (registry, prefix) and shared, so several
apps or test cases on one registry never hit "Duplicated timeseries". Labelled
children are cached per label tuple: a tracked request costs one dict lookup
and three observations.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from flask import Response, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import exposition as text_exposition

from . import __version__
from .config import ConfigError, MetricsAuth, Settings
from .sinks import RequestState, Sink

logger = logging.getLogger(__name__)

LABELS = ("method", "route", "blueprint", "status")
OTHER = "_OTHER"
"""The label value for HTTP methods outside the standard set and exception classes past the limit."""

STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"})

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def method_label(method: str) -> str:
    """The ``method`` label: the method itself when standard, else ``_OTHER``."""
    return method if method in STANDARD_METHODS else OTHER


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
            "Rows not written, by reason: queue_full, rejected, unserialisable, timeout, shutdown.",
            ("reason",),
            registry=registry,
        )
        self.storage_write_timeouts = Counter(
            f"{prefix}storage_write_timeouts",
            "Write attempts abandoned because the database did not answer within the deadline (retried).",
            registry=registry,
        )
        info = Gauge(
            f"{prefix}info", "flask-usage-otel version.", ("version",), multiprocess_mode="max", registry=registry
        )
        info.labels(__version__).set(1)


_metrics_lock = threading.Lock()
_metrics_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, PrometheusMetrics]] = (
    weakref.WeakKeyDictionary()
)


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


class PrometheusSink(Sink):
    """Observes each tracked request into the shared metrics."""

    name = "prometheus"
    uses_record = False  # labels and timings all come from the request state

    def __init__(self, metrics: PrometheusMetrics, *, exception_label_limit: int, exemplars: bool) -> None:
        self._metrics = metrics
        self._exemplars = exemplars
        self._children: dict[tuple[str, str, str, int], tuple[Any, Any, Any]] = {}
        self._in_progress: dict[str, Any] = {}
        self._exception_names: set[str] = set()
        self._exception_label_limit = exception_label_limit

    def start(self, state: RequestState) -> None:
        gauge = self._in_progress.get(state.method_label)
        if gauge is None:
            gauge = self._in_progress[state.method_label] = self._metrics.in_progress.labels(state.method_label)
        gauge.inc()

    def finish(self, state: RequestState) -> None:
        self._in_progress[state.method_label].dec()
        status = state.status or 500
        key = (state.method_label, state.route, state.blueprint or "", status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._labelled(key)
        requests, duration, size = children
        if self._exemplars and state.sampled:
            exemplar = {"trace_id": state.trace_id, "span_id": state.span_id}
            requests.inc(1, exemplar)
            duration.observe(state.speed, exemplar)
        else:
            requests.inc()
            duration.observe(state.speed)
        if state.response_size is not None:
            size.observe(state.response_size)
        if state.exception is not None:
            self._metrics.exceptions.labels(
                state.method_label, state.route, self._exception_label(state.exception)
            ).inc()

    def _labelled(self, key: tuple[str, str, str, int]) -> tuple[Any, Any, Any]:
        labels = (*key[:3], str(key[3]))
        m = self._metrics
        return m.requests.labels(*labels), m.duration.labels(*labels), m.response_size.labels(*labels)

    def _exception_label(self, name: str) -> str:
        if name in self._exception_names:
            return name
        if len(self._exception_names) < self._exception_label_limit:
            self._exception_names.add(name)
            return name
        return OTHER


# --- exposition -------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` when set, after checking it is a writable directory."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if not os.path.isdir(path):
        raise ConfigError(MULTIPROC_ENV, f"{path!r} is not a directory; create it before the app starts")
    if not os.access(path, os.W_OK):
        raise ConfigError(MULTIPROC_ENV, f"{path!r} is not writable by this process")
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        # prometheus_client chose its value store when first imported, before the variable
        # was set: every worker would count alone and /metrics would show a random worker.
        raise ConfigError(
            MULTIPROC_ENV,
            "was set after prometheus_client was imported; set it in the environment before the "
            "process starts (or at the top of gunicorn.conf.py, before any import that loads prometheus_client)",
        )
    return path


def render(registry: CollectorRegistry, accept: str | None, multiprocess: bool) -> tuple[bytes, str]:
    """Encode ``registry`` for a scrape that sent ``Accept: accept``: (body, content type)."""
    if multiprocess:
        from .prometheus_multiprocess import LockedMultiProcessCollector

        registry = CollectorRegistry()
        # Locked: gunicorn's child_exit may be folding a dead worker's files into the archive.
        LockedMultiProcessCollector(registry)
    encoder, content_type = text_exposition.choose_encoder(accept or "")
    if multiprocess and content_type.startswith("application/openmetrics-text"):
        # Exemplars do not exist in multiprocess mode; plain text is the honest answer.
        # (choose_encoder returns a functools.partial for OpenMetrics, so compare the type, not the function.)
        encoder, content_type = text_exposition.generate_latest, text_exposition.CONTENT_TYPE_PLAIN_0_0_4
    return encoder(registry), content_type


@dataclass(frozen=True, slots=True)
class MetricsView:
    """The ``/metrics`` view function, bound to one registry and one auth rule."""

    registry: CollectorRegistry
    auth: MetricsAuth
    multiprocess: bool

    def __call__(self) -> Response:
        if self.auth is not None and not _authorised(self.auth, request):
            return Response(
                "Unauthorized\n",
                status=401,
                mimetype="text/plain",
                headers={"WWW-Authenticate": _challenge(self.auth)},
            )
        body, content_type = render(self.registry, request.headers.get("Accept"), self.multiprocess)
        response = Response(body, content_type=content_type)
        response.headers["Cache-Control"] = "no-store"
        return response


def _challenge(auth: MetricsAuth) -> str:
    return 'Basic realm="metrics"' if isinstance(auth, tuple) else 'Bearer realm="metrics"'


def _authorised(auth: MetricsAuth, req: Any) -> bool:
    if callable(auth):
        try:
            return bool(auth(req))
        except Exception:
            logger.exception("TRACK_USAGE_METRICS_AUTH callable failed; refusing the scrape")
            return False
    # The WSGI server decoded the header's bytes as latin-1: encoding it back gives exactly
    # the bytes the client sent, which are compared with the token's UTF-8 bytes.
    header = req.environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.partition(" ")
    if isinstance(auth, str):
        return scheme.lower() == "bearer" and _equal_bytes(_wire_bytes(credentials.strip()), auth)
    if isinstance(auth, tuple) and scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        # Both comparisons always run, so timing does not tell which part was wrong.
        user_ok = _equal(user, auth[0])
        password_ok = _equal(password, auth[1])
        return bool(sep) and user_ok and password_ok
    return False


def _wire_bytes(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:  # not a WSGI string (a test client's own environ): its UTF-8 then
        return text.encode("utf-8", "surrogateescape")


def _equal_bytes(given: bytes, expected: str) -> bool:
    return hmac.compare_digest(given, expected.encode("utf-8"))


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))
