"""OpenTelemetry's own variables mean what they mean for opentelemetry-instrumentation-flask:
excluded URLs (the instrumentor's matching, on the full URL) and known HTTP methods."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.http import get_excluded_urls
from otel_helpers import only_server_span, server_spans
from prometheus_client import CollectorRegistry

from flask_usage_otel import ConfigError, TrackUsage
from tests.conftest import ListStorage

URLS = [
    "/healthz",
    "/healthz/deep",
    "/items/1",
    "/items/7",
    "/items/8?ref=mail",
    "/items/9?page=2",
    "/unavailable",
    "/nowhere",
]
BASES = ["http://localhost", "https://shop.example:8443"]


def _app(name: str) -> Flask:
    app = Flask(name)

    @app.get("/healthz")
    @app.get("/healthz/deep")
    def health() -> str:
        return "ok"

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return str(item_id)

    @app.get("/unavailable")
    def unavailable() -> tuple[str, int]:
        return "busy", 503

    return app


def _requests_total(registry: CollectorRegistry) -> float:
    return sum(
        sample.value
        for family in registry.collect()
        if family.name == "flask_usage_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def _send_all(app: Flask) -> None:
    client = app.test_client()
    for base in BASES:
        for url in URLS:
            client.get(url, base_url=base)


def _traced(exporter: InMemorySpanExporter) -> set[tuple[str, str, str]]:
    """(scheme, path, query) of each server span, in the stable conventions' names or the older ones
    (the instrumentor picks one per process, from ``OTEL_SEMCONV_STABILITY_OPT_IN`` as first seen)."""
    out = set()
    for span in server_spans(exporter):
        a = span.attributes
        if "url.path" in a:
            out.add((a["url.scheme"], a["url.path"], a.get("url.query", "")))
        else:
            target = urlsplit(a["http.target"])
            out.add((a["http.scheme"], target.path, target.query))
    assert len(out) == len(server_spans(exporter))  # every request told apart
    return out


@pytest.mark.parametrize(
    ("value", "traced"),
    [
        ("healthz", 12),
        ("healthz$,items/7", 12),
        ("ref=,^https://shop", 7),  # searched in the full URL: scheme, host and query too
        (r"items/\d\?page", 14),
        ("healthz,", 0),  # the instrumentor's trailing empty pattern matches every URL
        ("HEALTHZ", 16),  # case-sensitive, as there
    ],
)
def test_excluded_urls_match_as_the_instrumentor_matches(monkeypatch, value, traced) -> None:
    monkeypatch.setenv("OTEL_PYTHON_FLASK_EXCLUDED_URLS", value)
    ours, theirs = InMemorySpanExporter(), InMemorySpanExporter()
    tracked, instrumented = _app("ours"), _app("theirs")
    registry = CollectorRegistry()
    storage = ListStorage()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ours))
    tracked.config["TRACK_USAGE_SYNC_WRITES"] = True
    TrackUsage(tracked, storage, registry=registry, tracer_provider=provider)
    their_provider = TracerProvider()
    their_provider.add_span_processor(SimpleSpanProcessor(theirs))
    # The instrumentor reads the variable when it is imported: handed the same value, it matches the same way.
    FlaskInstrumentor().instrument_app(instrumented, tracer_provider=their_provider, excluded_urls=value)
    try:
        _send_all(tracked)
        _send_all(instrumented)
    finally:
        FlaskInstrumentor().uninstrument_app(instrumented)

    assert _traced(ours) == _traced(theirs)
    # No span, no Prometheus count, no row for an excluded request.
    assert _requests_total(registry) == len(storage.records) == len(server_spans(ours))
    assert len(server_spans(ours)) == traced


@pytest.mark.parametrize(
    ("flask_value", "generic_value"),
    [(None, "items"), ("items/7", "healthz"), ("", "healthz"), (None, None)],
)
def test_the_flask_variable_wins_over_the_generic_one_even_empty(
    monkeypatch, make_app, exporter, flask_value, generic_value
) -> None:
    for name, value in (("OTEL_PYTHON_FLASK_EXCLUDED_URLS", flask_value), ("OTEL_PYTHON_EXCLUDED_URLS", generic_value)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    app, _ = make_app()
    client = app.test_client()
    for item_id in (1, 7):
        client.get(f"/items/{item_id}")
    excluded = get_excluded_urls("FLASK")  # the instrumentor's own reading of the same environment
    expected = {f"/items/{i}" for i in (1, 7) if not excluded.url_disabled(f"http://localhost/items/{i}")}
    assert {s.attributes["url.path"] for s in server_spans(exporter)} == expected


def test_an_invalid_pattern_fails_at_init_app_naming_the_variable(monkeypatch, make_app) -> None:
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "healthz,items(")
    with pytest.raises(ConfigError, match=r"^OTEL_PYTHON_EXCLUDED_URLS: "):
        make_app()


def _span_of(app: Flask, exporter: InMemorySpanExporter, method: str, path: str = "/items/3") -> Any:
    exporter.clear()
    app.test_client().open(path, method=method)
    return only_server_span(exporter)


def test_a_lower_case_method_is_the_canonical_one_with_the_original_kept(make_app, exporter, registry) -> None:
    app, _ = make_app()
    span = _span_of(app, exporter, "get")
    assert span.name == "GET /items/<int:item_id>"
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["http.request.method_original"] == "get"
    assert "http.request.method_original" not in _span_of(app, exporter, "GET").attributes
    unknown = _span_of(app, exporter, "purge")  # unknown: _OTHER, the span named HTTP, the original as sent
    assert (unknown.name, unknown.attributes["http.request.method"]) == ("HTTP", "_OTHER")
    assert unknown.attributes["http.request.method_original"] == "purge"
    labels = {"method": "GET", "route": "/items/<int:item_id>", "blueprint": "", "status": "200"}
    assert registry.get_sample_value("flask_usage_requests_total", labels) == 2


def test_known_methods_replace_the_default_set_on_spans_and_the_method_label(
    monkeypatch, make_app, exporter, registry
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "GET, PURGE")
    app, _ = make_app()
    purge = _span_of(app, exporter, "PURGE")  # known now; the rule allows only GET: 405, no route
    assert purge.name == "PURGE"
    assert purge.attributes["http.request.method"] == "PURGE"
    assert "http.request.method_original" not in purge.attributes
    post = _span_of(app, exporter, "POST")  # a default method left out of the list: _OTHER
    assert (post.name, post.attributes["http.request.method"]) == ("HTTP", "_OTHER")
    assert post.attributes["http.request.method_original"] == "POST"
    unmatched = {"route": "<unmatched>", "blueprint": "", "status": "405"}
    assert registry.get_sample_value("flask_usage_requests_total", {"method": "PURGE", **unmatched}) == 1
    assert registry.get_sample_value("flask_usage_requests_total", {"method": "_OTHER", **unmatched}) == 1
