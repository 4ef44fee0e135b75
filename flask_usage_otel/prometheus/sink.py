"""The Prometheus sink: observes each tracked request into the shared metrics.

Labelled children are cached per label tuple: a tracked request costs one dict
lookup and three observations.
"""

from __future__ import annotations

from typing import Any

from ..record import OTHER
from ..sinks import RequestState, Sink
from .metrics import PrometheusMetrics


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
