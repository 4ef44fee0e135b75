"""/metrics renders our families itself: byte for byte what prometheus_client's encoders write for the same registry."""

from __future__ import annotations

import math
from typing import Any

import pytest
from flask import Flask, request
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client import exposition as text_exposition
from prometheus_client.utils import floatToGoString

from flask_usage_otel import TrackUsage, internals
from flask_usage_otel.prometheus import renderer, textformat
from flask_usage_otel.prometheus.metrics import owned_metrics
from flask_usage_otel.prometheus.renderer import Renderer, check_renderer

ODD = ('a "quote"', "back\\slash", "new\nline", "ünï\u2028", "", "{},=")
ACCEPTS = (
    None,
    "text/plain",
    "text/plain; version=0.0.4",
    "text/plain; version=1.0.0; escaping=allow-utf-8",
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0;q=0.6,text/plain;version=0.0.4;q=0.3,*/*;q=0.1",
    "application/openmetrics-text; version=1.0.0; escaping=dots",  # names change: prometheus_client writes it
    "text/html",
)


def odd_app(registry: CollectorRegistry, *, otel: bool) -> Flask:
    """Many label sets (routes x methods x statuses), constant labels needing escaping, exemplars with OTel."""
    app = Flask("odd")
    app.config.update(
        TRACK_USAGE_OTEL=otel,
        TRACK_USAGE_METRICS_CONST_LABELS={"site": 'q"uo\\te\nnl', "zone": "ünï"},
    )
    for i in range(30):
        app.add_url_rule(
            f"/r{i}/<int:n>",
            endpoint=f"r{i}",
            view_func=lambda n: ("x" * n, int(request.args.get("status", 200))),
            methods=["GET", "POST", "PUT"],
        )

    @app.route("/boom")
    def boom() -> str:
        raise ValueError("deliberate")

    TrackUsage(app, registry=registry, tracer_provider=TracerProvider() if otel else None)
    client = app.test_client()
    for i in range(30):
        for method in (client.get, client.post, client.put):
            for status in (200, 404, 500):
                method(f"/r{i}/{i * 37}?status={status}")
    client.get("/boom")
    return app


def scrape(app: Flask, accept: str | None) -> tuple[bytes, str]:
    response = app.test_client().get("/metrics", headers={"Accept": accept} if accept else {})
    assert response.status_code == 200
    return response.get_data(), response.headers["Content-Type"]


@pytest.mark.parametrize("otel", [False, True], ids=["prometheus-only", "with-exemplars"])
def test_metrics_is_byte_for_byte_prometheus_clients_scrape(otel: bool) -> None:
    registry = CollectorRegistry()
    other = Gauge("app_own", "The app's own metric, between ours.", ["x"], registry=registry)
    other.labels("1").set(math.nan)
    app = odd_app(registry, otel=otel)
    seen_exemplars = False
    for accept in ACCEPTS:
        encoder, content_type = text_exposition.choose_encoder(accept or "")
        body, served_type = scrape(app, accept)
        assert served_type == content_type
        assert body == encoder(registry), accept
        seen_exemplars |= b"# {" in body
    assert seen_exemplars is otel
    text = scrape(app, None)[0].decode()
    series = 30 * 3 * 3 + 1  # each with 17 bounds and +Inf
    assert text.count("flask_usage_request_duration_seconds_bucket{") == series * 18
    assert 'site="q\\"uo\\\\te\\nnl"' in text


def test_the_renderer_is_used_and_the_encoder_only_for_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our families never reach prometheus_client's encoder; the app's own metrics do."""
    registry = CollectorRegistry()
    Counter("app_own", "Not ours.", registry=registry).inc()
    app = odd_app(registry, otel=False)
    encoded: list[str] = []
    real = renderer._encoded

    def spy(encode: Any, collectors: list[Any], form: str) -> str:
        text = real(encode, collectors, form)
        encoded.append(text)
        return text

    monkeypatch.setattr(renderer, "_encoded", spy)
    body = scrape(app, None)[0].decode()
    assert "flask_usage_request_duration_seconds_bucket" in body
    assert not any("flask_usage_request_duration_seconds" in text for text in encoded)
    assert any("app_own_total" in text for text in encoded)


def many_label_sets() -> tuple[CollectorRegistry, list[Any]]:
    registry = CollectorRegistry()
    requests = Counter("t_requests", 'Requests "all"\\ of\nthem.', ["route", "method", "status"], registry=registry)
    duration = Histogram("t_seconds", "d", ["route", "method", "status"], registry=registry)
    negative = Histogram("t_delta", "d", ["a", "z"], buckets=(-5.0, -1.0, 0.0, 1e9), registry=registry)
    gauge = Gauge("t_gauge", "g", ["k"], registry=registry)
    plain = Counter("t_plain", "p", registry=registry)
    Summary("t_summary", "not ours", ["k"], registry=registry).labels("x").observe(1.0)
    for i in range(200):
        route = f"/r{i}/{ODD[i % len(ODD)]}"
        for method in ("GET", "POST"):
            requests.labels(route, method, str(200 + i % 3)).inc(i * 0.1)
            requests.labels(route, method, "500").inc(1, {"trace_id": ODD[i % len(ODD)], "span_id": "0" * 16})
            duration.labels(route, method, "200").observe(i / 37, {"trace_id": "f" * 32})
            duration.labels(route, method, "404").observe(i * 1e6)
        negative.labels(ODD[i % len(ODD)], str(i)).observe(-i)
    values = (math.nan, math.inf, -math.inf, -0.0, 0.0, 1e20, 1234567.0, 123456.5, 1e-7, -1e22, 2**53 + 1.0)
    for i, value in enumerate(values):
        gauge.labels(str(i)).set(value)
    plain.inc(2**60)
    return registry, [requests, duration, negative, gauge, plain]


@pytest.mark.parametrize("accept", [a for a in ACCEPTS if a is None or ("dots" not in a and "html" not in a)])
def test_many_label_sets_odd_values_and_exemplars(accept: str | None) -> None:
    registry, ours = many_label_sets()
    encoder, _ = text_exposition.choose_encoder(accept or "")
    form = renderer.form_of(encoder, accept)
    assert form is not None
    writer = Renderer()
    first = writer.render(registry, form, ours)
    assert first == encoder(registry)
    assert writer.render(registry, form, ours) == first  # from what the first render kept


def test_series_added_and_removed_between_scrapes() -> None:
    registry, ours = many_label_sets()
    renderer = Renderer()
    renderer.render(registry, textformat.TEXT, ours)
    requests, duration = ours[0], ours[1]
    requests.remove("/r0/" + ODD[0], "GET", "200")
    duration.clear()
    requests.labels("/new", "GET", "200").inc()
    duration.labels("/new", "GET", "200").observe(0.2)
    assert renderer.render(registry, textformat.TEXT, ours) == text_exposition.generate_latest(registry)


FLOATS = (0.0, -0.0, 1.0, 0.1, 1e-7, 123456.0, 1234567.0, 1e16, 1e22, -1e22, 2.5e-300, math.inf, -math.inf, math.nan)


@pytest.mark.parametrize("value", FLOATS)
def test_go_float_spells_every_float_as_prometheus_client(value: float) -> None:
    assert textformat.go_float(value) == floatToGoString(value)


def test_the_check_refuses_a_renderer_that_differs() -> None:
    class SwappedBuckets(internals.ScrapeReads):
        buckets = staticmethod(lambda child: list(reversed(internals.ScrapeReads.buckets(child))))

    check_renderer(Renderer())
    with pytest.raises(internals.Mismatch, match="le="):
        check_renderer(Renderer(SwappedBuckets))


def test_owned_metrics_are_the_request_metrics() -> None:
    registry = CollectorRegistry()
    odd_app(registry, otel=False)
    names = {m.describe()[0].name for m in owned_metrics(registry)}
    assert {"flask_usage_requests", "flask_usage_request_duration_seconds", "flask_usage_response_size_bytes"} <= names
