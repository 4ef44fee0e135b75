"""The app the hostile-input, fault and soak tests run under gunicorn.

``tests.integration.fault_app:create_app()`` is the suite's test app (tests/conftest.py) plus
``/echo/<path>``, which answers with what the app saw of the request, so a tracked and an
untracked server can be compared byte for byte, and ``/healthz`` (never tracked), which the
gunicorn harness polls, and ``/pid``, which names the worker that answered.
``USAGE_DB_URL`` in the environment turns SQL storage on (table ``USAGE_TABLE``, default ``flask_usage``;
``USAGE_CREATE_TABLE`` creates it when the app is made, as apps that create their tables at import do).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from flask import Flask, request

from flask_usage_otel import SQLStorage, TrackUsage
from tests.conftest import build_app

ECHO_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "FOO", "M-SEARCH"]


def create_app(tracked: bool = True, config: dict[str, Any] | None = None, otel: bool = False) -> Flask:
    """The test app; with ``tracked`` False the very same app without flask-usage-otel.

    :param config: extra Flask config (``TRACK_USAGE_*`` keys).
    :param otel: trace every request with an OpenTelemetry SDK provider whose exporter discards the spans.
    """
    app = build_app({"TRACK_USAGE_EXCLUDE_PATHS": ["/healthz"], **(config or {})})

    @app.route("/healthz")
    def healthz() -> str:
        return "ok"

    @app.route("/echo/<path:rest>", methods=ECHO_METHODS)
    def echo(rest: str) -> Any:
        seen = {
            "method": request.method,
            "path": request.path,
            "rest": rest,
            "query": request.query_string.decode("latin-1"),
            "args": sorted(request.args.items(multi=True)),
            "user_agent_length": len(request.headers.get("User-Agent", "")),
            "forwarded": request.headers.get("X-Forwarded-For"),
            "languages": [str(lang) for lang in request.accept_languages.values()],
            "authorization": request.headers.get("Authorization") is not None,
            "headers": sorted(request.headers.keys()),
        }
        return app.response_class(json.dumps(seen, ensure_ascii=True), mimetype="application/json")

    @app.route("/pid")
    def pid() -> str:
        return str(os.getpid())  # which worker served the request

    if tracked:
        db_url = os.environ.get("USAGE_DB_URL")
        table = os.environ.get("USAGE_TABLE", "flask_usage")
        storage = SQLStorage(db_url, table_name=table) if db_url else None
        if storage is not None and os.environ.get("USAGE_CREATE_TABLE"):
            storage.create_table()  # uses the pool before gunicorn --preload forks the workers
        TrackUsage(app, storage, tracer_provider=_discarding_tracer_provider() if otel else None)
    return app


def _discarding_tracer_provider() -> Any:
    """An SDK tracer provider that builds and batches every span as in production, then drops it."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DiscardingExporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DiscardingExporter()))
    return provider
