"""Prometheus: metric definitions, the sink that observes them, the ``/metrics`` view, multiprocess mode.

Each job has its own module; the names below are the package's public surface and
stay importable from ``flask_usage_otel.prometheus``.
"""

from __future__ import annotations

from ..record import OTHER, STANDARD_METHODS, method_label
from .exposition import MetricsView, render
from .metrics import LABELS, PrometheusMetrics, metrics_for
from .multiprocess import MULTIPROC_ENV, multiprocess_dir
from .sink import PrometheusSink

__all__ = [
    "LABELS",
    "MULTIPROC_ENV",
    "OTHER",
    "STANDARD_METHODS",
    "MetricsView",
    "PrometheusMetrics",
    "PrometheusSink",
    "method_label",
    "metrics_for",
    "multiprocess_dir",
    "render",
]
