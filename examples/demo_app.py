"""The demo app: plain routes, a blueprint, a converter route, an error route and a stream.

``create_app()`` is an app factory, so the same app runs under ``make demo``,
gunicorn (``gunicorn 'examples.demo_app:create_app()'``) and docker-compose.
Storage is configured from the environment:

- ``USAGE_DB_URL``: an SQLAlchemy URL for raw rows (for example ``sqlite:///usage.db``);
  unset means metrics only.

Traces: when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_TRACES_EXPORTER``) is
set, the factory sets up the OpenTelemetry SDK itself with ``configure_opentelemetry`` (the
app's choice, made in each gunicorn worker after the fork; the library never does it). Run
under ``opentelemetry-instrument`` instead and the factory keeps the provider it set up.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from flask import Blueprint, Flask, Response, abort, g, jsonify

from flask_usage_otel import TrackUsage

api = Blueprint("api", __name__, url_prefix="/api")


@api.route("/items/<int:item_id>")
def get_item(item_id: int) -> Any:
    if item_id > 1000:
        abort(404)
    g.track_var = {"item": item_id}
    return jsonify(id=item_id, name=f"item {item_id}")


@api.route("/items", methods=["POST"])
def create_item() -> Any:
    return jsonify(created=True), 201


def create_app(config: dict[str, Any] | None = None, **track_usage_options: Any) -> Flask:
    """Build the demo app with tracking on.

    :param config: extra Flask config (``TRACK_USAGE_*`` keys and others).
    :param track_usage_options: passed to ``TrackUsage`` (``registry=``, ``tracer_provider=``...).
    """
    if "tracer_provider" not in track_usage_options and _export_asked_for():
        from flask_usage_otel import configure_opentelemetry

        configure_opentelemetry("flask-demo")
    app = Flask("demo")
    app.config["TRACK_USAGE_EXCLUDE_PATHS"] = [r"/healthz", r"/static/.*"]
    if os.environ.get("TRACK_USAGE_OTEL_LOGS"):  # raw rows as OTel log records (docker-compose.yml)
        from flask_usage_otel.otel import build_logger_provider

        app.config["TRACK_USAGE_OTEL_LOGS"] = os.environ["TRACK_USAGE_OTEL_LOGS"]
        # The app's choice, made in each worker: OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT.
        track_usage_options.setdefault("logger_provider", build_logger_provider("flask-demo"))
    app.config.update(config or {})

    @app.route("/")
    def index() -> str:
        return "Hello from the demo app"

    @app.route("/slow")
    def slow() -> str:
        time.sleep(random.uniform(0.01, 0.12))
        return "slow"

    @app.route("/error")
    def error() -> str:
        raise RuntimeError("the demo's deliberate failure")

    @app.route("/stream")
    def stream() -> Response:
        def chunks() -> Any:
            for i in range(5):
                time.sleep(0.002)
                yield f"chunk {i}\n"

        return Response(chunks(), mimetype="text/plain")

    @app.route("/healthz")
    def healthz() -> str:
        return "ok"

    app.register_blueprint(api)

    storage = None
    db_url = os.environ.get("USAGE_DB_URL")
    if db_url:
        from flask_usage_otel import SQLStorage

        storage = SQLStorage(db_url)
    TrackUsage(app, storage, **track_usage_options)
    return app


def _export_asked_for() -> bool:
    exporters = {n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()}
    return bool(exporters - {"none"}) or bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
