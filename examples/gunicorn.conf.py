"""The demo's gunicorn config: the one that ships in the package, unchanged.

    gunicorn -c examples/gunicorn.conf.py 'examples.demo_app:create_app()'

is the same as ``gunicorn -c python:flask_usage_otel.gunicorn_config ...``; this file stays
so that a path-based ``-c`` keeps working. Copy it to add settings of your own.
"""

from flask_usage_otel.gunicorn_config import (  # noqa: F401
    accesslog,
    bind,
    child_exit,
    graceful_timeout,
    keepalive,
    on_starting,
    preload_app,
    timeout,
    worker_class,
    worker_exit,
    workers,
)
