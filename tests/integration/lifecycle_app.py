"""The app the request-lifecycle gunicorn test runs: the suite's test app plus a blueprint whose
``teardown_request`` raises, tracked with an in-memory OTel exporter that ``/spans`` reports on.

``tests.integration.lifecycle_app:create_app()``; ``USAGE_DB_URL`` in the environment turns SQL
storage on. ``/healthz`` and ``/spans`` are never tracked.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, jsonify
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from flask_usage_otel import SQLStorage, TrackUsage
from tests.conftest import build_app


def create_app() -> Flask:
    app = build_app({"TRACK_USAGE_EXCLUDE_PATHS": ["/healthz", "/spans"]})
    fragile = Blueprint("fragile", __name__, url_prefix="/fragile")

    @fragile.route("/page")
    def page() -> str:
        return "page"

    @fragile.teardown_request
    def broken_teardown(exc: BaseException | None) -> None:
        raise RuntimeError("teardown bug")

    app.register_blueprint(fragile)

    @app.route("/failing-stream/<when>")
    def failing_stream(when: str) -> Response:
        """A streamed body that fails: before its first chunk, after an empty one, or mid-way."""

        def body() -> Iterator[bytes]:
            if when == "after-empty":
                yield b""
            elif when == "mid-way":
                yield b"partial"
            raise RuntimeError("stream broke")

        return Response(body(), mimetype="text/plain")

    @app.route("/endless")
    def endless() -> Response:
        """A stream that ends only when the client goes away (the server then closes it)."""

        def body() -> Iterator[bytes]:
            while True:
                yield b"x" * 65536
                time.sleep(0.01)

        return Response(body(), mimetype="application/octet-stream")

    @app.route("/healthz")
    def healthz() -> str:
        return "ok"

    exporter = InMemorySpanExporter()

    @app.route("/spans")
    def spans() -> object:
        """The server spans this worker has ended: how many, how many had a parent, by status."""
        server = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
        return jsonify(
            ended=len(server),
            with_parent=sum(s.parent is not None for s in server),
            statuses=Counter(str(s.attributes.get("http.response.status_code")) for s in server),
        )

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    db_url = os.environ.get("USAGE_DB_URL")
    TrackUsage(app, SQLStorage(db_url) if db_url else None, tracer_provider=provider)
    return app
