"""Include/exclude of views, blueprints and paths, as seen through real requests."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Blueprint, Flask
from flask.views import MethodView
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.filters import RequestFilter, blueprint_of
from tests.conftest import Requests


def _app(mode: str = "exclude", **config: Any) -> tuple[Flask, TrackUsage, Requests]:
    registry = CollectorRegistry()
    app = Flask("filters")
    app.config["TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS"] = mode
    app.config.update(config)
    return app, TrackUsage(app, registry=registry), Requests(registry)


def _hit(app: Flask, *paths: str) -> None:
    client = app.test_client()
    for path in paths:
        client.get(path)


@pytest.mark.parametrize("order", ["decorator_above_route", "decorator_below_route"])
@pytest.mark.parametrize("mode", ["include", "exclude"])
def test_view_decorators_in_either_order(order: str, mode: str) -> None:
    app, t, requests = _app(mode)
    decorate = t.include if mode == "include" else t.exclude

    if order == "decorator_above_route":

        @decorate
        @app.route("/chosen")
        def chosen() -> str:
            return "chosen"
    else:

        @app.route("/chosen")
        @decorate
        def chosen() -> str:
            return "chosen"

    @app.route("/other")
    def other() -> str:
        return "other"

    assert callable(chosen), "the decorator must return the view, not None"
    _hit(app, "/chosen", "/other")
    tracked = {s["route"] for s in requests.series()}
    assert tracked == ({"/chosen"} if mode == "include" else {"/other"})


def test_include_mode_tracks_nothing_by_default_not_even_404s() -> None:
    app, _, requests = _app("include")
    app.add_url_rule("/a", "a", lambda: "a")
    _hit(app, "/a", "/missing")
    assert requests.series() == []


def test_endpoint_names_work_like_functions() -> None:
    app, t, requests = _app()
    app.add_url_rule("/a", "a", lambda: "a")
    app.add_url_rule("/b", "b", lambda: "b")
    t.exclude("a")
    _hit(app, "/a", "/b")
    assert {s["route"] for s in requests.series()} == {"/b"}


def _blueprint_app(mode: str) -> tuple[Flask, TrackUsage, Requests, Blueprint]:
    app, t, requests = _app(mode)
    bp = Blueprint("bp", __name__, url_prefix="/bp")
    calls: list[str] = []

    @bp.before_request
    def bp_hook() -> None:
        calls.append("hook")

    @bp.route("/one")
    def one() -> str:
        return "one"

    @app.route("/plain")
    def plain() -> str:
        return "plain"

    app.extensions["calls"] = calls
    return app, t, requests, bp


@pytest.mark.parametrize(
    ("mode", "method", "expected"),
    [
        ("exclude", "exclude_blueprint", {"/plain"}),
        ("include", "include_blueprint", {"/bp/one", "/bp/late"}),
    ],
)
def test_blueprint_rules_cover_views_added_later_and_keep_its_hooks(mode: str, method: str, expected: set[str]) -> None:
    app, t, requests, bp = _blueprint_app(mode)
    getattr(t, method)(bp)

    @bp.route("/late")  # added after the include/exclude call
    def late() -> str:
        return "late"

    app.register_blueprint(bp)
    _hit(app, "/plain", "/bp/one", "/bp/late")
    assert {s["route"] for s in requests.series()} == expected
    assert app.extensions["calls"] == ["hook", "hook"], "the blueprint's own before_request must still run"


def test_view_rule_beats_its_blueprint_rule() -> None:
    app, t, requests = _app("exclude")
    bp = Blueprint("admin", __name__, url_prefix="/admin")

    @bp.route("/audited")
    @t.include
    def audited() -> str:
        return "audited"

    @bp.route("/noise")
    def noise() -> str:
        return "noise"

    t.exclude_blueprint(bp)
    app.register_blueprint(bp)
    _hit(app, "/admin/audited", "/admin/noise")
    assert {s["route"] for s in requests.series()} == {"/admin/audited"}


def test_nested_blueprints_match_by_own_and_dotted_name() -> None:
    app, t, requests = _app("exclude")
    parent = Blueprint("parent", __name__, url_prefix="/p")
    child = Blueprint("child", __name__, url_prefix="/c")
    child.add_url_rule("/x", "x", lambda: "x")
    parent.add_url_rule("/y", "y", lambda: "y")
    parent.register_blueprint(child)
    app.register_blueprint(parent)
    t.exclude_blueprint(child)
    _hit(app, "/p/c/x", "/p/y")
    series = requests.series()
    assert [(s["route"], s["blueprint"]) for s in series] == [("/p/y", "parent")]


def test_class_based_views_can_be_excluded_by_class() -> None:
    app, t, requests = _app()

    @t.exclude
    class Things(MethodView):
        def get(self) -> str:
            return "things"

    app.add_url_rule("/things", view_func=Things.as_view("things"))
    app.add_url_rule("/ok", "ok", lambda: "ok")
    _hit(app, "/things", "/ok")
    assert {s["route"] for s in requests.series()} == {"/ok"}


def test_exclude_paths_full_match_including_static_and_404s() -> None:
    app, _, requests = _app(TRACK_USAGE_EXCLUDE_PATHS=[r"/healthz", r"/static/.*", r"/wp-.*"])
    app.add_url_rule("/healthz", "healthz", lambda: "ok")
    app.add_url_rule("/healthz/deep", "deep", lambda: "ok")
    _hit(app, "/healthz", "/healthz/deep", "/static/app.css", "/wp-login.php", "/missing")
    assert sorted((s["route"], s["status"]) for s in requests.series()) == [
        ("/healthz/deep", "200"),
        ("<unmatched>", "404"),
    ]


def test_metrics_view_never_tracks_itself() -> None:
    app, t, requests = _app()
    t.include("track_usage_metrics")  # even when asked to
    _hit(app, "/metrics", "/metrics")
    assert requests.series() == []


def test_a_later_rule_change_applies_to_endpoints_already_seen() -> None:
    app, t, requests = _app()
    app.add_url_rule("/a", "a", lambda: "a")
    _hit(app, "/a")
    t.exclude("a")
    _hit(app, "/a")
    assert requests.count(route="/a") == 1


def test_decisions_are_cached_per_endpoint() -> None:
    calls: list[str | None] = []
    request_filter = RequestFilter()
    original = request_filter.decide

    def counting(endpoint: str | None, view: Any, mode: str, registered: Any = None) -> bool:
        calls.append(endpoint)
        return original(endpoint, view, mode, registered)

    request_filter.decide = counting  # type: ignore[method-assign]
    app, t, _ = _app()
    t._filter = request_filter
    app.extensions["track_usage"]._trackers[app].request_filter = request_filter
    app.add_url_rule("/a/<int:n>", "a", lambda n: "a")
    _hit(app, "/a/1", "/a/2", "/a/3", "/x", "/y")
    assert calls == ["a", None]


def test_blueprint_of() -> None:
    assert blueprint_of(None) is None
    assert blueprint_of("index") is None
    assert blueprint_of("shop.cart") == "shop"
    assert blueprint_of("parent.child.view") == "parent.child"


@pytest.mark.parametrize(("mode", "method"), [("exclude", "exclude_blueprint"), ("include", "include_blueprint")])
def test_blueprint_object_covers_every_registration_name(mode: str, method: str) -> None:
    app, t, requests = _app(mode)
    bp = Blueprint("api", __name__)

    @bp.route("/ping")
    def ping() -> str:
        return "pong"

    @app.route("/plain")
    def plain() -> str:
        return "plain"

    getattr(t, method)(bp)
    app.register_blueprint(bp, url_prefix="/v1")
    app.register_blueprint(bp, url_prefix="/v2", name="api_v2")
    _hit(app, "/v1/ping", "/v2/ping", "/plain")
    tracked = {(s["route"], s["blueprint"]) for s in requests.series()}
    if mode == "exclude":
        assert tracked == {("/plain", "")}
    else:
        assert tracked == {("/v1/ping", "api"), ("/v2/ping", "api_v2")}


def test_registration_name_covers_only_that_registration() -> None:
    app, t, requests = _app("exclude")
    bp = Blueprint("api", __name__)

    @bp.route("/ping")
    def ping() -> str:
        return "pong"

    t.exclude_blueprint("api_v2")
    app.register_blueprint(bp, url_prefix="/v1")
    app.register_blueprint(bp, url_prefix="/v2", name="api_v2")
    _hit(app, "/v1/ping", "/v2/ping")
    assert {s["route"] for s in requests.series()} == {"/v1/ping"}
