"""The route inventory (``flask_usage_route_info``) and constant labels, through ``TrackUsage`` and real scrapes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from flask_usage_otel import ConfigError, TrackUsage
from tests.conftest import build_app

REPO = Path(__file__).resolve().parent.parent


def scrape(app: Flask) -> dict[str, Any]:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return {family.name: family for family in text_string_to_metric_families(text)}


def route_info(app: Flask) -> set[tuple[str, str, str, str]]:
    family = scrape(app)["flask_usage_route_info"]
    return {
        (s.labels["route"], s.labels["method"], s.labels["blueprint"], s.labels["endpoint"]) for s in family.samples
    }


def test_every_route_is_listed_before_any_traffic_and_later_blueprints_too() -> None:
    app = build_app()
    TrackUsage(app, registry=CollectorRegistry())
    late = Blueprint("late", __name__)
    late.add_url_rule("/late/<slug>", "page", lambda slug: slug, methods=["GET", "POST"])
    app.register_blueprint(late)  # after init_app

    listed = route_info(app)
    assert ("/items/<int:item_id>", "GET", "", "item") in listed
    assert ("/shop/cart", "GET", "shop", "shop.cart") in listed
    assert {("/late/<slug>", "GET", "late", "late.page"), ("/late/<slug>", "POST", "late", "late.page")} <= listed
    # HEAD and OPTIONS, which Werkzeug and Flask add to every rule, would all look unused.
    assert not any(method in {"HEAD", "OPTIONS"} for _, method, _, _ in listed)
    assert not any(route == "/metrics" for route, *_ in listed)  # ours, never tracked
    assert all(s.value == 1 for s in scrape(app)["flask_usage_route_info"].samples)


def test_the_inventory_adds_no_request_series() -> None:
    app = build_app()
    TrackUsage(app, registry=CollectorRegistry())
    families = scrape(app)
    assert len(families["flask_usage_route_info"].samples) == len(route_info(app)) > 5
    assert not families["flask_usage_requests"].samples  # no request yet: no request series


def test_unused_routes_are_the_inventory_minus_the_traffic() -> None:
    """What the dashboard's PromQL computes (``route_info unless on (route, method) requests``), from one scrape."""
    app = build_app()
    TrackUsage(app, registry=CollectorRegistry())
    client = app.test_client()
    client.get("/items/1")
    client.get("/shop/cart")
    families = scrape(app)
    used = {(s.labels["route"], s.labels["method"]) for s in families["flask_usage_requests"].samples}
    unused = {(route, method) for route, method, _, _ in route_info(app)} - used
    assert ("/items/<int:item_id>", "GET") not in unused
    assert ("/", "GET") in unused
    assert ("/stream", "GET") in unused


MULTIPROCESS_APP = """
import sys
from flask import Blueprint
from flask_usage_otel import TrackUsage
from tests.conftest import build_app
app = build_app()
TrackUsage(app)
late = Blueprint("late", __name__)
late.add_url_rule("/late", "page", lambda: "late")
app.register_blueprint(late)
client = app.test_client()
client.get("/items/3")
sys.stdout.write(client.get("/metrics").get_data(as_text=True))
"""


def test_the_inventory_is_served_in_multiprocess_mode(tmp_path: Path) -> None:
    """In multiprocess mode /metrics merges the workers' files into a registry of its own: the inventory is in it."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MULTIPROCESS_APP)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    families = {f.name: f for f in text_string_to_metric_families(done.stdout)}
    routes = {(s.labels["route"], s.labels["blueprint"]) for s in families["flask_usage_route_info"].samples}
    assert {("/items/<int:item_id>", ""), ("/late", "late")} <= routes
    requests = families["flask_usage_requests"].samples
    assert [s.labels["route"] for s in requests if s.name == "flask_usage_requests_total"] == ["/items/<int:item_id>"]
    assert not list(tmp_path.glob("gauge_*route*"))  # the inventory keeps no file


# -- constant labels -----------------------------------------------------------------------------


def test_constant_labels_are_on_every_metric() -> None:
    registry = CollectorRegistry()
    app = build_app({"TRACK_USAGE_METRICS_CONST_LABELS": {"service": "shop", "region": "eu"}})
    TrackUsage(app, registry=registry)
    client = app.test_client()
    client.get("/items/1")
    client.get("/boom")
    families = scrape(app)
    samples = [s for family in families.values() for s in family.samples]
    assert len({s.name for s in samples}) > 10
    for sample in samples:
        assert (sample.labels.get("service"), sample.labels.get("region")) == ("shop", "eu"), sample
    labels = {"method": "GET", "route": "/items/<int:item_id>", "blueprint": "", "status": "200"}
    assert registry.get_sample_value("flask_usage_requests_total", {**labels, "service": "shop", "region": "eu"}) == 1


def test_constant_labels_reach_the_storage_metrics_and_the_tracking_errors(tmp_path: Path) -> None:
    from flask_usage_otel import SQLStorage

    registry = CollectorRegistry()
    app = build_app({"TRACK_USAGE_METRICS_CONST_LABELS": {"service": "shop"}, "TRACK_USAGE_SYNC_WRITES": True})
    TrackUsage(app, SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}", table_name="const_labels"), registry=registry)
    app.test_client().get("/items/1")
    assert registry.get_sample_value("flask_usage_storage_rows_written_total", {"service": "shop"}) == 1
    assert (
        registry.get_sample_value("flask_usage_storage_dropped_total", {"reason": "queue_full", "service": "shop"}) == 0
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("service=shop", "must be a mapping"),
        ({"service-name": "shop"}, "'service-name' is not a valid Prometheus label name"),
        ({"__name": "x"}, "'__name' is not a valid Prometheus label name"),
        ({"route": "x"}, "'route' is a label the metrics"),
        ({"le": "x"}, "'le' is a label the metrics"),
        ({"instance": "x"}, "'instance' is a label the metrics"),
        ({"service": 3}, "the value of 'service' must be a string"),
    ],
)
def test_constant_labels_are_checked_at_init_app(value: object, message: str) -> None:
    app = build_app({"TRACK_USAGE_METRICS_CONST_LABELS": value})
    with pytest.raises(ConfigError, match=message) as caught:
        TrackUsage(app, registry=CollectorRegistry())
    assert caught.value.key == "TRACK_USAGE_METRICS_CONST_LABELS"


def test_two_apps_on_one_registry_must_agree_on_constant_labels() -> None:
    registry = CollectorRegistry()
    TrackUsage(build_app({"TRACK_USAGE_METRICS_CONST_LABELS": {"service": "a"}}), registry=registry)
    with pytest.raises(ConfigError, match="other constant labels"):
        TrackUsage(build_app({"TRACK_USAGE_METRICS_CONST_LABELS": {"service": "b"}}), registry=registry)


def test_routes_the_app_does_not_track_are_not_listed() -> None:
    app = build_app({"TRACK_USAGE_EXCLUDE_PATHS": ["/stream"]})
    t = TrackUsage(app, registry=CollectorRegistry())
    t.exclude(app.view_functions["boom"])
    routes = {route for route, *_ in route_info(app)}
    assert "/items/<int:item_id>" in routes
    assert "/stream" not in routes
    assert "/boom" not in routes
