"""End to end: a Flask app with TrackUsage(storage=SQLStorage(...)) whose requests come back from get_usage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.storage.sql import SQLStorage

from .conftest import drop_table

WAIT = 10.0


def make_app(storage: Any, **config: Any) -> tuple[Flask, TrackUsage, CollectorRegistry]:
    app = Flask("shop")
    app.config.update(config)

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> str:
        g.track_var = {"seen": item_id}
        return f"item {item_id}"

    @app.route("/boom")
    def boom() -> str:
        raise KeyError("nope")

    registry = CollectorRegistry()
    return app, TrackUsage(app, storage=storage, registry=registry), registry


def test_requests_show_up_in_get_usage(storage: SQLStorage) -> None:
    app, tracker, registry = make_app(storage, TRACK_USAGE_FLUSH_INTERVAL=0.05)
    client = app.test_client()
    ipv6_chain = "2001:db8::17, 2001:db8:ffff::1"
    for item_id in range(5):
        response = client.get(
            f"/items/{item_id}?ref=mail",
            headers={"User-Agent": "curl/8.5.0", "X-Forwarded-For": ipv6_chain, "Accept-Language": "fr"},
        )
        assert response.status_code == 200
    assert client.get("/boom").status_code == 500
    assert client.get("/missing").status_code == 404
    with app.app_context():
        assert tracker.flush(WAIT)
        rows = storage.read_usage()
    assert [r["path"] for r in rows] == ["/missing", "/boom", *[f"/items/{i}" for i in range(4, -1, -1)]]
    missing, boom, newest_item = rows[0], rows[1], rows[2]
    assert (missing["status"], missing["route"], missing["endpoint"]) == (404, "<unmatched>", None)
    assert (boom["status"], boom["exception"]) == (500, "KeyError")
    assert newest_item["url"] == "http://localhost/items/4?ref=mail"
    assert newest_item["view_args"] == {"item_id": 4}
    assert newest_item["track_var"] == {"seen": 4}
    assert newest_item["xforwardedfor"] == ipv6_chain
    assert newest_item["user_agent"]["language"] == "fr"
    assert newest_item["server_name"] == "shop"
    assert registry.get_sample_value("flask_usage_storage_rows_written_total") == 7
    assert registry.get_sample_value("flask_usage_storage_queue_rows") == 0


def test_sync_writes_store_before_the_response_returns(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'sync.db'}")
    app, _, _ = make_app(storage, TRACK_USAGE_SYNC_WRITES=True)
    app.test_client().get("/items/3")
    assert [r["path"] for r in storage.get_usage()] == ["/items/3"]  # no flush needed


@pytest.fixture
def flask_sqlalchemy_app(tmp_path: Path, table_name: str) -> Iterator[tuple[Flask, Any, SQLStorage, TrackUsage]]:
    from flask_sqlalchemy import SQLAlchemy

    db = SQLAlchemy()
    storage = SQLStorage(db=db, table_name=table_name)
    app, tracker, _ = make_app(storage, SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'app.db'}")
    db.init_app(app)
    yield app, db, storage, tracker
    with app.app_context():
        drop_table(db.engine, table_name)


def test_flask_sqlalchemy_engine_and_metadata_are_reused(flask_sqlalchemy_app: Any) -> None:
    app, db, storage, tracker = flask_sqlalchemy_app
    assert storage.table.name in db.metadata.tables  # db.create_all() and migrations see it
    with app.app_context():
        db.create_all()
    app.test_client().get("/items/1")
    app.test_client().get("/items/2")
    with app.app_context():
        assert tracker.flush(WAIT)  # written by the writer thread, outside any app context
        assert storage.engine is db.engine
        assert [r["path"] for r in tracker.get_usage()] == ["/items/2", "/items/1"]


def test_db_storage_outside_an_app_context_says_what_to_do() -> None:
    from flask_sqlalchemy import SQLAlchemy

    storage = SQLStorage(db=SQLAlchemy())
    with pytest.raises(RuntimeError, match="app context"):
        storage.get_usage()
