"""gunicorn server hooks for correct metrics and complete raw rows under several workers.

Use them from a ``gunicorn.conf.py`` (``examples/gunicorn.conf.py`` is a ready-made one)::

    from flask_usage_otel.gunicorn import child_exit, on_starting, worker_exit  # noqa: F401

- ``on_starting`` (master, once): creates ``PROMETHEUS_MULTIPROC_DIR`` and deletes the
  metric files a previous run left there. Stale files would otherwise be summed into the
  new run's counters and keep old label sets (an old version's ``flask_usage_info``) alive.
- ``child_exit`` (master, per worker): marks the worker dead, so the in-progress gauge
  (``livesum``) stops counting its requests, and folds its counters and histograms into
  one archive file per type (``prometheus/multiprocess.py``): totals stay exact when a worker
  is replaced, and the directory stays small however many workers ``max_requests`` recycles.
- ``worker_exit`` (worker, on a graceful stop): writes out the rows still queued for
  storage before the process ends.

``PROMETHEUS_MULTIPROC_DIR`` must be in the environment before ``prometheus_client`` is
first imported (it picks its value store at import time); this module imports it only
inside the hooks, so importing the hooks at the top of ``gunicorn.conf.py`` is safe.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The files prometheus_client's multiprocess mode writes: {counter,gauge_<mode>,histogram,summary}_<pid>.db.
# Only these are deleted, so a directory set by mistake to a shared path loses nothing else.
_METRIC_FILE_PATTERNS = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")

_FLUSH_TIMEOUT = 10.0


def prepare_multiprocess_dir(path: str) -> int:
    """Create ``path`` if missing and delete the metric files in it; returns how many were deleted."""
    os.makedirs(path, exist_ok=True)
    removed = 0
    for pattern in _METRIC_FILE_PATTERNS:
        for stale in glob.glob(os.path.join(glob.escape(path), pattern)):
            os.remove(stale)
            removed += 1
    return removed


def on_starting(server: Any) -> None:
    """gunicorn ``on_starting`` hook: start every run with an empty multiprocess directory."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    removed = prepare_multiprocess_dir(path)
    if removed:
        logger.info("removed %d metric files of a previous run from %s", removed, path)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn ``child_exit`` hook: drop the dead worker's live gauges, fold its counters into the archive."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    from prometheus_client import multiprocess

    from .prometheus.multiprocess import compact_dead_worker

    multiprocess.mark_process_dead(worker.pid, path)
    try:
        compact_dead_worker(path, worker.pid)
    except Exception:
        # The master must outlive any metrics trouble; the files stay and are merged as before.
        logger.exception("folding the metric files of worker %s into the archive failed", worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn ``worker_exit`` hook: flush the raw rows this worker still has queued."""
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", None)
    tracker = extensions.get("track_usage") if isinstance(extensions, dict) else None
    if tracker is None:
        return
    try:
        with app.app_context():  # type: ignore[union-attr]
            if not tracker.flush(_FLUSH_TIMEOUT):
                logger.warning("worker %s exited with usage rows still queued", worker.pid)
    except Exception:
        logger.exception("flushing usage rows at worker exit failed")
