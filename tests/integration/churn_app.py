"""A minimal tracked app for the worker-churn test: quick to boot, Prometheus metrics only.

``tests.integration.churn_app:create_app()``; ``/healthz`` (untracked) is what the gunicorn
harness polls, ``/`` is the tracked route whose count must stay exact.
"""

from __future__ import annotations

from flask import Flask

from flask_usage_otel import TrackUsage


def create_app() -> Flask:
    app = Flask("churn")
    app.config["TRACK_USAGE_EXCLUDE_PATHS"] = ["/healthz"]

    @app.route("/")
    def index() -> str:
        return "home"

    @app.route("/healthz")
    def healthz() -> str:
        return "ok"

    TrackUsage(app)
    return app
