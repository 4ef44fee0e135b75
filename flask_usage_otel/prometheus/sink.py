"""The Prometheus sink: observes each tracked request into the shared metrics.

Labelled children are looked up once per label tuple and kept as :class:`_Series`:
the value cells they count in and the histograms' bucket bounds. A tracked request
then costs one dict lookup, and each observation one ``bisect`` and the value cells'
own locked ``inc`` (and, with a sampled span, ``set_exemplar``): the same cells, in the
same order, that ``Counter.inc`` and ``Histogram.observe`` would touch, without their
per-call checks (made once here).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any

from prometheus_client.samples import Exemplar

from ..record import OTHER
from ..sinks import RequestState, Sink
from .metrics import PrometheusMetrics


class _Series:
    """One label tuple's children and the value cells they count in."""

    __slots__ = (
        "duration_bounds",
        "duration_buckets",
        "duration_sum",
        "requests_value",
        "size_bounds",
        "size_buckets",
        "size_sum",
    )

    def __init__(self, requests: Any, duration: Any, size: Any) -> None:
        self.requests_value = requests._value
        self.duration_sum = duration._sum
        self.duration_buckets = duration._buckets
        # Histogram.observe counts into the first bucket whose bound is >= the amount:
        # bisect_left over the same bounds (the last is +Inf) picks that bucket.
        self.duration_bounds = tuple(duration._upper_bounds)
        self.size_sum = size._sum
        self.size_buckets = size._buckets
        self.size_bounds = tuple(size._upper_bounds)


class PrometheusSink(Sink):
    """Observes each tracked request into the shared metrics."""

    name = "prometheus"
    uses_record = False  # labels and timings all come from the request state

    def __init__(self, metrics: PrometheusMetrics, *, exception_label_limit: int, exemplars: bool) -> None:
        self._metrics = metrics
        self._exemplars = exemplars
        self._series: dict[tuple[str, str, str, int], _Series] = {}
        self._in_progress: dict[str, Any] = {}
        self._exception_names: set[str] = set()
        self._exception_label_limit = exception_label_limit

    def start(self, state: RequestState) -> None:
        cell = self._in_progress.get(state.method_label)
        if cell is None:
            cell = self._in_progress[state.method_label] = self._metrics.in_progress.labels(state.method_label)._value
        cell.inc(1)

    def finish(self, state: RequestState) -> None:
        self._in_progress[state.method_label].inc(-1)
        status = state.status or 500
        key = (state.method_label, state.route, state.blueprint or "", status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._labelled(key)
        speed = state.speed
        series.requests_value.inc(1)
        series.duration_sum.inc(speed)
        bucket = series.duration_buckets[bisect_left(series.duration_bounds, speed)]
        bucket.inc(1)
        if self._exemplars and state.sampled:
            # What Counter.inc and Histogram.observe store with an exemplar, without their per-call
            # checks: the label names are fixed and the values are 32 and 16 hex digits, 63
            # characters in all, under the OpenMetrics limit of 128 that they check.
            labels = {"trace_id": state.trace_id, "span_id": state.span_id}
            now = time.time()
            series.requests_value.set_exemplar(Exemplar(labels, 1, now))
            bucket.set_exemplar(Exemplar(labels, speed, now))
        size = state.response_size
        if size is not None:
            series.size_sum.inc(size)
            series.size_buckets[bisect_left(series.size_bounds, size)].inc(1)
        if state.exception is not None:
            self._metrics.exceptions.labels(
                state.method_label, state.route, self._exception_label(state.exception)
            ).inc()

    def _labelled(self, key: tuple[str, str, str, int]) -> _Series:
        labels = (*key[:3], str(key[3]))
        m = self._metrics
        return _Series(m.requests.labels(*labels), m.duration.labels(*labels), m.response_size.labels(*labels))

    def _exception_label(self, name: str) -> str:
        if name in self._exception_names:
            return name
        if len(self._exception_names) < self._exception_label_limit:
            self._exception_names.add(name)
            return name
        return OTHER
