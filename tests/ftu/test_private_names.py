"""Flask-Track-Usage 2.0's private names that users' code copied work as there, with a deprecation warning;
and its SQLite set-up (``create_engine("sqlite://")``) works with synchronous writes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from flask import Blueprint, Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import ConfigError, TrackUsage
from flask_usage_otel.ftu_names import LegacyNameWarning
from flask_usage_otel.storage.sql import SQLStorage
from tests.conftest import ListStorage, Requests, build_app

T = TypeVar("T")


def _legacy(name: str, use: Callable[[], T]) -> T:
    """``use()``, which must warn that ``name`` is a Flask-Track-Usage private name."""
    with pytest.warns(LegacyNameWarning, match=name):
        return use()


def _app(mode: str = "exclude", **config: object) -> Flask:
    app = build_app({"TRACK_USAGE_SYNC_WRITES": True, "TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS": mode, **config})
    api = Blueprint("api", __name__)
    api.add_url_rule("/a", "a", lambda: "a")
    api.add_url_rule("/b", "b", lambda: "b")
    app.register_blueprint(api, url_prefix="/api")
    return app


def test_include_and_exclude_views_are_ftus_sets_of_view_functions() -> None:
    app = _app("include")
    storage = ListStorage()
    track = TrackUsage(app, storage, registry=CollectorRegistry())
    with pytest.warns(LegacyNameWarning, match="_include_views"):
        assert len(track._include_views) == 0
    with pytest.warns(LegacyNameWarning, match="_exclude_views"):
        assert len(track._exclude_views) == 0
    track.include_blueprint("api")
    track.exclude(app.view_functions["index"])
    included = _legacy("_include_views", lambda: track._include_views)
    assert set(included) == {app.view_functions["api.a"], app.view_functions["api.b"]}
    assert set(_legacy("_exclude_views", lambda: track._exclude_views)) == {app.view_functions["index"]}
    # Adding to the set includes the view, as FTU's include() did; discarding drops the view's rule.
    included.add(app.view_functions["item"])
    assert app.view_functions["item"] in included
    client = app.test_client()
    for path in ("/", "/items/1", "/api/a", "/shop/cart"):
        client.get(path)
    assert [r.path for r in storage.records] == ["/items/1", "/api/a"]
    included.discard(app.view_functions["item"])
    client.get("/items/2")
    assert [r.path for r in storage.records] == ["/items/1", "/api/a"]


def test_changing_type_after_set_up_takes_effect_as_in_ftu() -> None:
    app = _app("include")
    storage = ListStorage()
    track = TrackUsage(app, storage, registry=CollectorRegistry())
    client = app.test_client()
    client.get("/")
    assert storage.records == []
    assert _legacy(r"TrackUsage\._type", lambda: track._type) == "include"
    _legacy(r"TrackUsage\._type", lambda: setattr(track, "_type", "exclude"))
    client.get("/")
    assert [r.path for r in storage.records] == ["/"]
    # A mode FTU did not accept fails where it is set, with FTU's exception type too.
    mode_key = "INCLUDE_OR_EXCLUDE_VIEWS"
    with pytest.warns(LegacyNameWarning, match="_type"), pytest.raises(NotImplementedError, match=mode_key):
        track._type = ""
    with pytest.raises(ConfigError, match=mode_key), pytest.warns(LegacyNameWarning, match="_type"):
        track._type = "both"
    client.get("/")
    assert len(storage.records) == 2


def test_an_unknown_mode_is_also_ftus_not_implemented_error() -> None:
    with pytest.raises(NotImplementedError, match="TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS"):
        TrackUsage(_app(""), ListStorage(), registry=CollectorRegistry())


def _memory_storage(table: str = "ftu_memory") -> SQLStorage:
    return SQLStorage(engine=sa.create_engine("sqlite://"), table_name=table)


def test_ftus_in_memory_sqlite_engine_works_with_synchronous_writes() -> None:
    storage = _memory_storage()
    app = _app()
    TrackUsage(app, storage, registry=CollectorRegistry())
    app.test_client().get("/items/4")
    app.test_client().get("/api/a")
    assert _legacy(r"SQLStorage\._eng", lambda: storage._eng) is storage.engine
    assert [row["path"] for row in storage.get_usage()] == ["/api/a", "/items/4"]


def test_ftus_in_memory_sqlite_engine_is_refused_at_init_app_with_background_writes() -> None:
    app = _app(TRACK_USAGE_SYNC_WRITES=False)
    with pytest.raises(ConfigError, match="TRACK_USAGE_SYNC_WRITES"):
        TrackUsage(app, _memory_storage(), registry=CollectorRegistry())
    assert "track_usage" not in app.extensions  # refused means untouched
    assert not app.before_request_funcs.get(None)


def test_get_raw_and_get_usage_as_ftu_gave_them(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}", table_name="ftu_raw")
    app = _app()
    TrackUsage(app, storage, registry=CollectorRegistry())
    client = app.test_client()
    for path in ("/", "/api/b", "/items/9"):
        client.get(path)

    def get_raw(**arguments: Any) -> list[Any]:
        return _legacy(r"SQLStorage\._get_raw", lambda: storage._get_raw(**arguments))

    raw = get_raw()
    assert get_raw(start_date=datetime.now(timezone.utc) + timedelta(seconds=5)) == []
    assert len(get_raw(limit=2)) == 2
    assert [row[13] for row in get_raw(limit=1, page=2)] == ["/api/b"]
    # FTU's positions: 1 url, 6 blueprint, 8 status, 13 path, 14 speed, 15 datetime.
    assert [(row[1], row[6], row[8], row[13]) for row in raw] == [
        ("http://localhost/items/9", None, 200, "/items/9"),
        ("http://localhost/api/b", "api", 200, "/api/b"),
        ("http://localhost/", None, 200, "/"),
    ]
    assert all(isinstance(row[14], float) and isinstance(row[15], datetime) for row in raw)
    assert _legacy(r"SQLStorage\._get_usage", lambda: storage._get_usage(limit=2)) == storage.get_usage(limit=2)


def test_fake_time_fixes_the_time_of_stored_rows(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}", table_name="ftu_fake_time")
    app = _app()
    registry = CollectorRegistry()
    fixed = datetime(2018, 4, 15, 9, 45, 12)
    with pytest.warns(LegacyNameWarning, match="_fake_time"):
        TrackUsage(app, storage, registry=registry, _fake_time=fixed)
    app.test_client().get("/")
    app.test_client().get("/items/2")
    assert [row["date"] for row in storage.get_usage()] == [fixed, fixed]
    assert Requests(registry).count() == 2
