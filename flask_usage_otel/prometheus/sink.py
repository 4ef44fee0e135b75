"""The Prometheus sink: observes each tracked request into the shared metrics.

Labelled children are looked up once per label tuple and kept as :class:`_Series`: the
functions that count into them, from :mod:`flask_usage_otel.internals` (straight into
prometheus_client's value cells, the same cells in the same order as ``Counter.inc`` and
``Histogram.observe``, without their per-call checks; or those public methods when the cells
failed their check). A tracked request then costs one dict lookup and a call per metric.
"""

from __future__ import annotations

import time
from typing import Any

from ..internals import (
    Adder,
    ExemplarAdder,
    counter_adder,
    counter_exemplar_adder,
    histogram_exemplar_observer,
    histogram_observer,
    histograms_observer,
)
from ..record import OTHER
from ..sinks import RequestState, Sink
from .metrics import PrometheusMetrics


class _Series:
    """One label tuple's children, as the functions that count into them."""

    __slots__ = (
        "count",
        "count_exemplar",
        "observe_duration_exemplar",
        "observe_first_byte_exemplar",
        "observe_size",
        "observe_timings",
    )

    def __init__(self, requests: Any, duration: Any, first_byte: Any, size: Any) -> None:
        self.count: Adder = counter_adder(requests)
        self.count_exemplar: ExemplarAdder = counter_exemplar_adder(requests)
        self.observe_timings = histograms_observer(duration, first_byte)  # (duration, time to first byte)
        self.observe_duration_exemplar: ExemplarAdder = histogram_exemplar_observer(duration)
        self.observe_first_byte_exemplar: ExemplarAdder = histogram_exemplar_observer(first_byte)
        self.observe_size: Adder = histogram_observer(size)


class PrometheusSink(Sink):
    """Observes each tracked request into the shared metrics."""

    name = "prometheus"
    uses_record = False  # labels and timings all come from the request state

    def __init__(self, metrics: PrometheusMetrics, *, exception_label_limit: int, exemplars: bool) -> None:
        self._metrics = metrics
        self._exemplars = exemplars
        self._series: dict[tuple[str, str, str, int], _Series] = {}
        self._in_progress: dict[str, Adder] = {}
        self._exception_names: set[str] = set()
        self._exception_label_limit = exception_label_limit

    def start(self, state: RequestState) -> None:
        add = self._in_progress.get(state.method_label)
        if add is None:
            add = self._in_progress[state.method_label] = counter_adder(
                self._metrics.in_progress.labels(state.method_label)
            )
        add(1)

    def finish(self, state: RequestState) -> None:
        self._in_progress[state.method_label](-1)
        status = state.status or 500
        key = (state.method_label, state.route, state.blueprint or "", status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._labelled(key)
        speed = state.speed
        if self._exemplars and state.sampled:
            labels = {"trace_id": state.trace_id, "span_id": state.span_id}
            now = time.time()
            series.count_exemplar(1, labels, now)
            series.observe_duration_exemplar(speed, labels, now)
            series.observe_first_byte_exemplar(state.first_byte, labels, now)
        else:
            series.count(1)
            series.observe_timings(speed, state.first_byte)
        size = state.response_size
        if size is not None:
            series.observe_size(size)
        if state.exception is not None:
            self._metrics.exceptions.labels(
                state.method_label, state.route, self._exception_label(state.exception)
            ).inc()

    def _labelled(self, key: tuple[str, str, str, int]) -> _Series:
        labels = (*key[:3], str(key[3]))
        m = self._metrics
        route_labels = key[:3]  # the first-byte and size histograms have no status label
        return _Series(
            m.requests.labels(*labels),
            m.duration.labels(*labels),
            m.first_byte.labels(*route_labels),
            m.response_size.labels(*route_labels),
        )

    def _exception_label(self, name: str) -> str:
        if name in self._exception_names:
            return name
        if len(self._exception_names) < self._exception_label_limit:
            self._exception_names.add(name)
            return name
        return OTHER
