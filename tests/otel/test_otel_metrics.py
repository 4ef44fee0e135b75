"""``http.server.*`` metrics through the OTel meter provider (TRACK_USAGE_OTEL_METRICS)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from flask_usage_otel.config import DEFAULT_BUCKETS, load_settings
from flask_usage_otel.otel import otel_metrics_enabled


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    if data is None:  # nothing was recorded
        return {}
    return {
        metric.name: metric
        for resource_metrics in data.resource_metrics
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
    }


def test_duration_histogram_and_active_requests(make_app, reader, exporter):
    app, _ = make_app({"TRACK_USAGE_OTEL_METRICS": True}, meter_provider=MeterProvider(metric_readers=[reader]))
    app.logger.disabled = True
    client = app.test_client()
    client.get("/items/1")
    client.get("/items/2")
    client.get("/boom")

    metrics = collect(reader)
    duration = metrics["http.server.request.duration"]
    assert duration.unit == "s"
    points = {tuple(sorted(p.attributes.items())): p for p in duration.data.data_points}
    ok = points[
        (
            ("http.request.method", "GET"),
            ("http.response.status_code", 200),
            ("http.route", "/items/<int:item_id>"),
            ("network.protocol.version", "1.1"),
            ("url.scheme", "http"),
        )
    ]
    assert ok.count == 2
    assert tuple(ok.explicit_bounds) == DEFAULT_BUCKETS
    failed = [p for p in duration.data.data_points if p.attributes.get("error.type") == "ValueError"]
    assert len(failed) == 1
    assert failed[0].attributes["http.response.status_code"] == 500

    active = metrics["http.server.active_requests"]
    assert active.unit == "{request}"
    (point,) = active.data.data_points
    assert dict(point.attributes) == {"http.request.method": "GET", "url.scheme": "http"}
    assert point.value == 0  # every request that started has finished


def test_duration_carries_an_exemplar_of_the_span(make_app, reader, exporter):
    app, _ = make_app({"TRACK_USAGE_OTEL_METRICS": True}, meter_provider=MeterProvider(metric_readers=[reader]))
    app.test_client().get("/items/1")
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("GET")]
    (point,) = collect(reader)["http.server.request.duration"].data.data_points
    assert [e.trace_id for e in point.exemplars] == [span.context.trace_id]


def test_unmatched_requests_have_no_route(make_app, reader):
    app, _ = make_app({"TRACK_USAGE_OTEL_METRICS": True}, meter_provider=MeterProvider(metric_readers=[reader]))
    app.test_client().get("/missing/123")
    (point,) = collect(reader)["http.server.request.duration"].data.data_points
    assert "http.route" not in point.attributes
    assert point.attributes["http.response.status_code"] == 404


def test_off_by_default_when_prometheus_is_on(make_app, reader):
    app, _ = make_app(meter_provider=MeterProvider(metric_readers=[reader]))
    app.test_client().get("/items/1")
    assert "http.server.request.duration" not in collect(reader)


@pytest.mark.parametrize(
    ("config", "enabled"),
    [
        ({}, False),
        ({"TRACK_USAGE_PROMETHEUS": False}, True),
        ({"TRACK_USAGE_OTEL_METRICS": True}, True),
        ({"TRACK_USAGE_PROMETHEUS": False, "TRACK_USAGE_OTEL_METRICS": False}, False),
    ],
)
def test_default_follows_the_prometheus_setting(config, enabled):
    assert otel_metrics_enabled(load_settings(config)) is enabled


def _call(app: Any, environ: dict[str, Any]) -> None:
    body = app(environ, lambda *args: None)
    for _chunk in body:
        pass
    body.close()


def test_hostile_protocol_spellings_and_hosts_stay_bounded(make_app, reader, exporter):
    """Werkzeug's server passes any ``HTTP/1.x`` spelling through as ``SERVER_PROTOCOL``."""
    from werkzeug.test import EnvironBuilder

    app, _ = make_app({"TRACK_USAGE_OTEL_METRICS": True}, meter_provider=MeterProvider(metric_readers=[reader]))
    base = EnvironBuilder(path="/items/1").get_environ()
    spellings = ["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/3"] + [f"HTTP/1.{i}" for i in range(2, 2000)]
    for i, protocol in enumerate(spellings):
        _call(app, {**base, "SERVER_PROTOCOL": protocol, "HTTP_HOST": f"h{i}.example:{1000 + i}"})

    duration = collect(reader)["http.server.request.duration"]
    versions = {p.attributes["network.protocol.version"] for p in duration.data.data_points}
    assert versions == {"1.1", "1.0", "2", "3", "_OTHER"}
    assert len(duration.data.data_points) == 5
    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("GET /items")]
    assert len(spans) == len(spellings)
    assert {s.attributes["network.protocol.version"] for s in spans} == versions
    sink = app.extensions["track_usage"]._trackers[app].sinks[0]
    assert len(sink._shapes) <= 1024, "a cache keyed by the Host header is bounded"


def test_hostile_scheme_is_not_a_metric_attribute_value(make_app, reader, exporter):
    from werkzeug.test import EnvironBuilder

    app, _ = make_app({"TRACK_USAGE_OTEL_METRICS": True}, meter_provider=MeterProvider(metric_readers=[reader]))
    base = EnvironBuilder(path="/items/1").get_environ()
    for i in range(50):  # ProxyFix copies X-Forwarded-Proto into wsgi.url_scheme
        _call(app, {**base, "wsgi.url_scheme": f"proto{i}"})
    metrics = collect(reader)
    schemes = {p.attributes["url.scheme"] for p in metrics["http.server.request.duration"].data.data_points}
    assert schemes == {"_OTHER"}
    assert len(metrics["http.server.active_requests"].data.data_points) == 1


def test_buckets_setting_applies_to_the_otel_histogram(make_app, reader, exporter):
    buckets = [0.001, 0.01, 0.1, 1.0]
    app, _ = make_app(
        {"TRACK_USAGE_OTEL_METRICS": True, "TRACK_USAGE_BUCKETS": buckets},
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    app.test_client().get("/items/1")
    (point,) = collect(reader)["http.server.request.duration"].data.data_points
    assert list(point.explicit_bounds) == buckets
