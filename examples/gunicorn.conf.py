"""A ready-made gunicorn config for a Flask app tracked by flask-usage-otel.

    gunicorn -c examples/gunicorn.conf.py 'examples.demo_app:create_app()'

Every value can be overridden from the environment (``GUNICORN_BIND``, ``GUNICORN_WORKERS``,
``PROMETHEUS_MULTIPROC_DIR``) or on the command line (``--bind``, ``--workers``...).
"""

import multiprocessing
import os
import tempfile

# prometheus_client picks its multiprocess value store when it is first imported, so the
# directory goes into the environment before anything imports it (the hooks below do not).
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"flask-usage-metrics-{os.getuid()}")
)

from flask_usage_otel.gunicorn import child_exit, on_starting, worker_exit  # noqa: F401

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
