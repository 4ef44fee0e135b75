"""Helpers shared by the whole suite: the test app, an in-memory storage and a reader for the request counter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask, Response, abort
from prometheus_client import CollectorRegistry

from flask_usage_otel import UsageRecord


def build_app(config: dict[str, Any] | None = None) -> Flask:
    """A small app with a plain route, a converter route, a blueprint, errors and a stream."""
    app = Flask("tracked")
    app.config.update(config or {})

    @app.route("/")
    def index() -> str:
        return "home"

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.route("/boom")
    def boom() -> str:
        raise ValueError("deliberate")

    @app.route("/forbidden")
    def forbidden() -> str:
        abort(403)

    @app.route("/stream")
    def stream() -> Response:
        return Response(iter(["a", "b", "c"]), mimetype="text/plain")

    shop = Blueprint("shop", __name__, url_prefix="/shop")

    @shop.route("/cart")
    def cart() -> str:
        return "cart"

    app.register_blueprint(shop)
    return app


class Requests:
    """Reads the request counter of a registry: ``count(route=..., status=...)``."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "flask_usage_") -> None:
        self.registry = registry
        self.prefix = prefix

    def count(self, **labels: str) -> float:
        """Sum of ``requests_total`` over the series matching ``labels``."""
        return self._sum("requests_total", labels)

    def series(self, metric: str = "requests_total") -> list[dict[str, str]]:
        name = self.prefix + metric
        return [s.labels for m in self.registry.collect() for s in m.samples if s.name == name]

    def _sum(self, metric: str, labels: dict[str, str]) -> float:
        name = self.prefix + metric
        return sum(
            s.value
            for m in self.registry.collect()
            for s in m.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


class DownStorage:
    """A storage whose database is down: every batch fails as a lost connection does, and waits in the queue."""

    def store(self, records: Any) -> None:
        raise ConnectionError("down")

    def get_usage(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return []


class ListStorage:
    """A storage that keeps records in a list (written synchronously with ``TRACK_USAGE_SYNC_WRITES``)."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def store(self, records: Sequence[UsageRecord]) -> None:
        self.records.extend(records)

    def get_usage(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return [r.as_dict() for r in reversed(self.records)]


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--integration-in",
        action="append",
        default=[],
        metavar="PATH",
        help="run integration tests only from these files or directories (repeatable); others are deselected",
    )


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Keep the markers honest: everything under tests/integration/ needs a real server, so it is marked.

    ``make unit`` selects ``not integration``; a server test that forgot its marker would run
    there and fail (or skip) on a machine without the servers.

    With ``--integration-in PATH`` the integration tests outside those paths are deselected, unit
    tests stay: the floors run (``tools/floors.py``) adds the database-backed ones this way.
    """
    unmarked = [
        item.nodeid
        for item in items
        if "integration" in item.path.parts
        and item.path.parent.name == "integration"
        and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(f"tests under tests/integration/ must be marked integration: {unmarked}")
    paths = [(Path(config.rootpath) / path).resolve() for path in config.getoption("integration_in")]
    if paths:
        missing = [str(path) for path in paths if not path.exists()]
        if missing:
            raise pytest.UsageError(f"--integration-in: no such file or directory: {missing}")
        kept: list[Any] = []
        outside: list[Any] = []
        for item in items:
            inside = any(item.path == path or path in item.path.parents for path in paths)
            (kept if inside or item.get_closest_marker("integration") is None else outside).append(item)
        if outside:
            config.hook.pytest_deselected(items=outside)
            items[:] = kept
