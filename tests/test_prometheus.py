"""Prometheus metrics: names, labels, bounded cardinality, /metrics formats and auth."""

from __future__ import annotations

import base64
import random
import string
from typing import Any

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from flask_usage_otel import TrackUsage
from flask_usage_otel.prometheus import method_label
from tests.conftest import Requests, build_app


def _tracked(**config: Any) -> tuple[Flask, CollectorRegistry]:
    registry = CollectorRegistry()
    app = build_app(config)
    TrackUsage(app, registry=registry)
    return app, registry


def test_metric_names_and_labels() -> None:
    app, registry = _tracked()
    client = app.test_client()
    client.get("/items/7")
    client.get("/shop/cart")
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))}
    assert {
        "flask_usage_requests",
        "flask_usage_request_duration_seconds",
        "flask_usage_response_size_bytes",
        "flask_usage_requests_in_progress",
        "flask_usage_request_exceptions",
        "flask_usage_info",
    } <= set(families)
    assert families["flask_usage_requests"].type == "counter"
    assert families["flask_usage_request_duration_seconds"].type == "histogram"
    samples = [s for s in families["flask_usage_requests"].samples if s.name == "flask_usage_requests_total"]
    assert sorted(
        (s.labels["route"], s.labels["blueprint"], s.labels["method"], s.labels["status"]) for s in samples
    ) == [
        ("/items/<int:item_id>", "", "GET", "200"),
        ("/shop/cart", "shop", "GET", "200"),
    ]
    buckets = [
        s.labels["le"]
        for s in families["flask_usage_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["route"] == "/shop/cart"
    ]
    assert buckets[:3] == ["0.0001", "0.00025", "0.0005"]
    assert buckets[-2:] == ["30.0", "+Inf"]
    size = registry.get_sample_value(
        "flask_usage_response_size_bytes_sum", {"method": "GET", "route": "/shop/cart", "blueprint": "shop"}
    )
    assert size == len("cart")


def test_prefix_and_buckets_are_configurable() -> None:
    app, registry = _tracked(TRACK_USAGE_METRICS_PREFIX="shop_", TRACK_USAGE_BUCKETS=[0.1, 1])
    app.test_client().get("/")
    labels = {"method": "GET", "route": "/", "blueprint": "", "status": "200"}
    assert registry.get_sample_value("shop_requests_total", labels) == 1
    assert registry.get_sample_value("shop_request_duration_seconds_bucket", {**labels, "le": "1.0"}) == 1
    assert registry.get_sample_value("flask_usage_requests_total", labels) is None


def test_random_paths_and_methods_do_not_explode_cardinality() -> None:
    app, registry = _tracked()
    client = app.test_client()
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "-_.~%"
    methods = ["GET", "POST", "PROPFIND", "BREW", "get", "X" * 50]
    for _ in range(10_000):
        path = "/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        client.open(path, method=rng.choice(methods))
    series = Requests(registry).series()
    assert Requests(registry).count() == 10_000
    assert len(series) <= 6, series
    assert {s["route"] for s in series} <= {"<unmatched>", "/"}
    assert {s["method"] for s in series} <= {"GET", "POST", "_OTHER"}


@pytest.mark.parametrize(
    ("method", "label"), [("GET", "GET"), ("PATCH", "PATCH"), ("QUERY", "QUERY"), ("get", "_OTHER"), ("BREW", "_OTHER")]
)
def test_method_label(method: str, label: str) -> None:
    assert method_label(method) == label


def test_exception_label_is_bounded() -> None:
    app, registry = _tracked(TRACK_USAGE_EXCEPTION_LABEL_LIMIT=2)
    kinds = [type(f"Error{i}", (Exception,), {}) for i in range(5)]

    @app.route("/raise/<int:n>")
    def raise_n(n: int) -> str:
        raise kinds[n]()

    client = app.test_client()
    for n in range(5):
        client.get(f"/raise/{n}")
    labels = {
        s.labels["exception"] for m in registry.collect() for s in m.samples if s.name.endswith("exceptions_total")
    }
    assert labels == {"Error0", "Error1", "_OTHER"}


def test_openmetrics_when_the_scraper_asks() -> None:
    app, _ = _tracked()
    client = app.test_client()
    client.get("/")
    plain = client.get("/metrics")
    assert plain.content_type.startswith("text/plain; version=0.0.4")
    assert b"# EOF" not in plain.data
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"})
    assert om.content_type.startswith("application/openmetrics-text")
    assert om.data.endswith(b"# EOF\n")
    assert b'flask_usage_requests_total{blueprint="",method="GET",route="/",status="200"} 1.0' in om.data


def test_metrics_path_is_configurable_or_off() -> None:
    app, _ = _tracked(TRACK_USAGE_METRICS_PATH="/internal/prom")
    assert app.test_client().get("/internal/prom").status_code == 200
    assert app.test_client().get("/metrics").status_code == 404
    app, _ = _tracked(TRACK_USAGE_METRICS_PATH=None)
    assert "track_usage_metrics" not in app.view_functions


def _owned_metrics_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "has its own view at '/metrics'" in r.getMessage()]


@pytest.mark.parametrize("when", ["before TrackUsage", "after TrackUsage", "in a blueprint after TrackUsage"])
def test_the_apps_own_metrics_view_is_kept(when: str, caplog: pytest.LogCaptureFixture) -> None:
    from flask import Blueprint

    registry = CollectorRegistry()
    app = build_app({"TRACK_USAGE_SYNC_WRITES": True})

    def own_metrics() -> str:
        return "the app's own metrics"

    if when == "before TrackUsage":
        app.add_url_rule("/metrics", "own_metrics", own_metrics)
    TrackUsage(app, registry=registry)
    if when == "after TrackUsage":
        app.add_url_rule("/metrics", "own_metrics", own_metrics)
    elif when == "in a blueprint after TrackUsage":
        ops = Blueprint("ops", __name__)
        ops.add_url_rule("/metrics", "own_metrics", own_metrics)
        app.register_blueprint(ops)
    client = app.test_client()
    for _ in range(2):
        response = client.get("/metrics")
        assert response.get_data(as_text=True) == "the app's own metrics"
    # The app's view is an ordinary view: tracked like the others.
    assert Requests(registry).count(route="/metrics", status="200") == 2
    [warning] = _owned_metrics_warnings(caplog)  # once, saying how to serve ours elsewhere
    assert "TRACK_USAGE_METRICS_PATH" in warning


def test_metrics_served_elsewhere_when_the_app_owns_the_path(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = _tracked(TRACK_USAGE_METRICS_PATH="/usage/metrics")
    app.add_url_rule("/metrics", "own_metrics", lambda: "mine")
    client = app.test_client()
    assert client.get("/metrics").get_data() == b"mine"
    assert b"flask_usage_requests_total" in client.get("/usage/metrics").data
    assert not _owned_metrics_warnings(caplog)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    ("auth", "good", "bad"),
    [
        ("s3cret-token", {"Authorization": "Bearer s3cret-token"}, {"Authorization": "Bearer s3cret-tokeN"}),
        ("s3cret-token", {"Authorization": "bearer s3cret-token"}, {"Authorization": "Basic s3cret-token"}),
        (("scraper", "pw"), _basic("scraper", "pw"), _basic("scraper", "pW")),
        (("scraper", "pw"), _basic("scraper", "pw"), _basic("scrapeR", "pw")),
        (("scraper", "pw"), _basic("scraper", "pw"), {"Authorization": "Basic !!!not-base64"}),
        (lambda req: req.headers.get("X-Scraper") == "yes", {"X-Scraper": "yes"}, {"X-Scraper": "no"}),
    ],
)
def test_metrics_auth(auth: Any, good: dict[str, str], bad: dict[str, str]) -> None:
    app, _ = _tracked(TRACK_USAGE_METRICS_AUTH=auth)
    client = app.test_client()
    client.get("/")
    for headers in (bad, {}):
        denied = client.get("/metrics", headers=headers)
        assert denied.status_code == 401
        assert b"flask_usage" not in denied.data
        assert denied.headers["WWW-Authenticate"]
    allowed = client.get("/metrics", headers=good)
    assert allowed.status_code == 200
    assert b"flask_usage_requests_total" in allowed.data


def test_failing_auth_callable_refuses() -> None:
    def broken(req: Any) -> bool:
        raise RuntimeError("auth backend down")

    app, _ = _tracked(TRACK_USAGE_METRICS_AUTH=broken)
    assert app.test_client().get("/metrics").status_code == 401


def test_auth_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    from flask_usage_otel.prometheus import exposition

    calls: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(exposition.hmac, "compare_digest", spy)
    app, _ = _tracked(TRACK_USAGE_METRICS_AUTH=("scraper", "pw"))
    app.test_client().get("/metrics", headers=_basic("intruder", "pw"))
    assert calls == [(b"intruder", b"scraper"), (b"pw", b"pw")], "both parts compared, each with compare_digest"


def test_two_trackers_on_one_registry_share_metrics() -> None:
    registry = CollectorRegistry()
    first, second = build_app(), build_app()
    TrackUsage(first, registry=registry)
    TrackUsage(second, registry=registry)
    first.test_client().get("/")
    second.test_client().get("/")
    assert Requests(registry).count(route="/") == 2


def test_prometheus_can_be_turned_off() -> None:
    registry = CollectorRegistry()
    app = build_app({"TRACK_USAGE_PROMETHEUS": False})
    TrackUsage(app, registry=registry)
    app.test_client().get("/")
    assert list(registry.collect()) == []
    assert app.test_client().get("/metrics").status_code == 404


def _histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs."""
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def test_default_buckets_resolve_a_sub_millisecond_route() -> None:
    from flask_usage_otel.config import load_settings
    from flask_usage_otel.prometheus import metrics_for

    registry = CollectorRegistry()
    metrics = metrics_for(registry, load_settings({}))
    child = metrics.duration.labels("GET", "/fast", "", "200")
    for i in range(100):
        child.observe(0.00015 + i * 0.000001)  # a 0.15-0.25 ms route
    buckets = [
        (float(s.labels["le"]), s.value)
        for m in registry.collect()
        for s in m.samples
        if s.name == "flask_usage_request_duration_seconds_bucket"
    ]
    p50, p99 = _histogram_quantile(0.5, buckets), _histogram_quantile(0.99, buckets)
    # With the OTel default buckets (first bound 5 ms) these read 2.5 ms and 4.95 ms.
    assert 0.0001 < p50 <= 0.00025
    assert 0.0001 < p99 <= 0.00025
    assert buckets[-2][0] >= 30.0, "and still tens of seconds at the top"


def test_sink_counts_into_the_same_buckets_as_observe() -> None:
    """The sink's direct path fills exactly the buckets, sums and counts that the public
    ``Histogram.observe`` / ``Counter.inc`` / ``Gauge.inc`` would, bounds included."""
    from prometheus_client import Histogram

    from flask_usage_otel.capture import RequestState
    from flask_usage_otel.config import Settings
    from flask_usage_otel.prometheus.metrics import PrometheusMetrics
    from flask_usage_otel.prometheus.sink import PrometheusSink
    from flask_usage_otel.record import RecordContext

    settings = Settings()
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, "t_", settings.buckets, settings.size_buckets)
    reference = Histogram("ref_seconds", "reference", buckets=settings.buckets, registry=registry)
    reference_size = Histogram("ref_bytes", "reference", buckets=settings.size_buckets, registry=registry)
    sink = PrometheusSink(metrics, exception_label_limit=5, exemplars=False)
    amounts = [0.0, *settings.buckets, *(b * 1.0001 for b in settings.buckets), 1e9]
    sizes = [0, *(int(b) for b in settings.size_buckets), *(int(b) + 1 for b in settings.size_buckets)]
    context = RecordContext("bench")
    for i, speed in enumerate(amounts):
        state = RequestState(None, 0.0, 0.0, "GET", "GET", "e", "/r", None, context)  # type: ignore[arg-type]
        sink.start(state)
        state.speed, state.status, state.response_size = speed, 200, sizes[i % len(sizes)]
        sink.finish(state)
        reference.observe(speed)
        reference_size.observe(sizes[i % len(sizes)])
    labels = {"method": "GET", "route": "/r", "blueprint": "", "status": "200"}
    for ours, ref in (("t_request_duration_seconds", "ref_seconds"), ("t_response_size_bytes", "ref_bytes")):
        ours_samples = {
            (s.name.removeprefix(ours), s.labels.get("le"), s.value)
            for f in registry.collect()
            if f.name == ours
            for s in f.samples
            if not s.name.endswith("_created") and s.labels.get("route") == "/r"
        }
        ref_samples = {
            (s.name.removeprefix(ref), s.labels.get("le"), s.value)
            for f in registry.collect()
            if f.name == ref
            for s in f.samples
            if not s.name.endswith("_created")
        }
        assert ours_samples == ref_samples
    assert registry.get_sample_value("t_requests_total", labels) == len(amounts)
    assert registry.get_sample_value("t_requests_in_progress", {"method": "GET"}) == 0
