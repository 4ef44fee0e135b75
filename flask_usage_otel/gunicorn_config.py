"""A ready-made gunicorn configuration for an app tracked by flask-usage-otel.

    gunicorn -c python:flask_usage_otel.gunicorn_config 'yourapp:create_app()'

It turns on prometheus_client's multiprocess mode (so ``/metrics`` adds up every worker)
and installs the hooks of :mod:`flask_usage_otel.gunicorn`. Every value can be overridden
from the environment (``GUNICORN_BIND``, ``GUNICORN_WORKERS``, ``GUNICORN_ACCESSLOG``,
``PROMETHEUS_MULTIPROC_DIR``) or on the command line (``--bind``, ``--workers`` ...), which
gunicorn applies after this module.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile

from flask_usage_otel.gunicorn import child_exit, on_starting, worker_exit
from flask_usage_otel.internals import choose_value_class_again

__all__ = [
    "accesslog",
    "bind",
    "child_exit",
    "graceful_timeout",
    "keepalive",
    "on_starting",
    "preload_app",
    "timeout",
    "worker_class",
    "worker_exit",
    "workers",
]

os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"flask-usage-metrics-{os.getuid()}")
)


def _use_multiprocess_values() -> None:
    """Make prometheus_client pick its value store again, now that the directory is set.

    prometheus_client chooses the store when it is imported, and importing this module
    imports the package, which imports prometheus_client. The choice only matters for
    metrics created afterwards, and the master creates none (each worker builds the app
    after the fork), so choosing again here is what setting the variable first would do.
    """
    choose_value_class_again()


_use_multiprocess_values()

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", min(2 * multiprocessing.cpu_count() + 1, 8)))
worker_class = "sync"
# Workers import the app themselves: each gets its own database connections and
# storage writer thread, and the master stays small.
preload_app = False
timeout = 30
# On SIGTERM workers finish the request in hand and flush queued usage rows within this time.
graceful_timeout = 20
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESSLOG")  # e.g. "-" for stdout; off by default
