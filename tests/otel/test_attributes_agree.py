"""Spans, OTel metrics and log records agree on every HTTP attribute they share.

One app, all three signals on, the same requests: odd and lower-case methods, every protocol
spelling, Host with and without a port, https, query strings, a 404, a 500 and an exception.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from flask import Blueprint, Flask
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from tests.otel.otel_helpers import server_spans

# (method, path, options for werkzeug's test client's open())
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/items/1?full=1&page=2", {"headers": {"Host": "shop.example:8443"}}),
    ("GET", "/items/2", {"headers": {"Host": "shop.example"}}),
    ("GET", "/items/3", {"base_url": "https://secure.example"}),
    ("GET", "/items/4?q=x", {"base_url": "https://secure.example:9443"}),
    ("GET", "/items/5", {"headers": {"Host": "[::1]:5000"}}),
    ("GET", "/items/6", {"environ_overrides": {"SERVER_PROTOCOL": "HTTP/1.0"}}),
    ("GET", "/items/7", {"environ_overrides": {"SERVER_PROTOCOL": "HTTP/1.1"}}),
    ("GET", "/items/8", {"environ_overrides": {"SERVER_PROTOCOL": "HTTP/2"}}),
    ("GET", "/items/9", {"environ_overrides": {"SERVER_PROTOCOL": "HTTP/2.0"}}),
    ("GET", "/items/10", {"environ_overrides": {"SERVER_PROTOCOL": "HTTP/3"}}),
    ("GET", "/items/11", {"environ_overrides": {"SERVER_PROTOCOL": "HTTP/1.7"}}),
    ("GET", "/items/12", {"environ_overrides": {"REQUEST_METHOD": "get"}}),
    ("PURGE", "/items/13", {}),
    ("BREW", "/items/14", {}),  # a method the route does not allow: 405
    ("POST", "/items/15", {"data": b"12345", "environ_base": {"REMOTE_ADDR": "2001:db8:1:2::9"}}),
    ("GET", "/nowhere?x=1", {}),
    ("GET", "/failing", {}),
    ("GET", "/boom", {}),
    ("GET", "/shop/basket", {"environ_overrides": {"wsgi.url_scheme": "gopher"}}),
    ("GET", "/items/16", {"environ_overrides": {"HTTP_HOST": ""}}),  # no Host: SERVER_NAME and SERVER_PORT
    ("GET", "/items/17", {"environ_overrides": {"HTTP_HOST": "", "SERVER_PORT": "8080"}}),
]


Signals = tuple[Flask, TrackUsage, InMemorySpanExporter, InMemoryMetricReader, InMemoryLogRecordExporter]


@pytest.fixture
def signals() -> Signals:
    return make_signals()


def make_signals(config: dict[str, Any] | None = None) -> Signals:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))

    app = Flask("agree")
    app.config.update(
        {
            "TRACK_USAGE_OTEL_METRICS": True,
            "TRACK_USAGE_OTEL_LOGS": True,
            "TRACK_USAGE_ANONYMIZE_IP": "truncate",
            "TRACK_USAGE_CAPTURE_USER": lambda: "u-7",
            "TRACK_USAGE_OTEL_CAPTURE_USER": True,
            "TRACK_USAGE_FLUSH_INTERVAL": 0.05,
            **(config or {}),
        }
    )
    app.logger.disabled = True

    @app.route("/items/<int:item_id>", methods=["GET", "POST", "PURGE"])
    def item(item_id: int) -> str:
        return f"item {item_id}"

    @app.get("/failing")
    def failing() -> tuple[str, int]:
        return "down", 500

    @app.get("/boom")
    def boom() -> str:
        raise KeyError("gone")

    shop = Blueprint("shop", __name__, url_prefix="/shop")

    @shop.get("/basket")
    def basket() -> str:
        return "empty"

    app.register_blueprint(shop)
    tracker = TrackUsage(
        app,
        registry=CollectorRegistry(),
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
        logger_provider=logger_provider,
    )
    return app, tracker, spans, reader, logs


def send_all(app: Flask, tracker: TrackUsage, headers: dict[str, str] | None = None) -> list[int]:
    client = app.test_client()
    statuses = []
    for method, path, options in REQUESTS:
        options = {"environ_base": {"REMOTE_ADDR": "203.0.113.77"}, **options}
        if headers:
            options["headers"] = {**headers, **options.get("headers", {})}
        statuses.append(client.open(path, method=method, **options).status_code)
    with app.app_context():
        assert tracker.flush(10)
    return statuses


def duration_points(reader: InMemoryMetricReader) -> Counter[frozenset[tuple[str, Any]]]:
    data = reader.get_metrics_data()
    assert data is not None
    points: Counter[frozenset[tuple[str, Any]]] = Counter()
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "http.server.request.duration":
                    for point in metric.data.data_points:
                        points[frozenset(point.attributes.items())] += point.count
    return points


def by_span(
    span_exporter: InMemorySpanExporter, log_exporter: InMemoryLogRecordExporter
) -> tuple[dict[int, ReadableSpan], dict[int, dict[str, Any]]]:
    """Each request's span and its log record's attributes, keyed by span id."""
    spans: dict[int, ReadableSpan] = {s.context.span_id: s for s in server_spans(span_exporter)}
    logs = {log.log_record.span_id: dict(log.log_record.attributes) for log in log_exporter.get_finished_logs()}
    assert len(spans) == len(logs) == len(REQUESTS)
    assert set(spans) == set(logs)
    return spans, logs


def disagreements(spans: dict[int, ReadableSpan], logs: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per path, each span attribute whose log record's value differs: (span's, log record's)."""
    found = {}
    for span_id, span in spans.items():
        span_attributes = dict(span.attributes)
        log_attributes = logs[span_id]
        differing = {
            key: (value, log_attributes.get(key))
            for key, value in span_attributes.items()
            if log_attributes.get(key) != value
        }
        if differing:
            found[span_attributes["url.path"]] = differing
    return found


# One difference: the record keeps the method as Flask gives it, upper-cased, so a log record
# has no `get` to name as the original of `GET` (the span reads it from the environ).
ONLY_DISAGREEMENT = {"/items/12": {"http.request.method_original": ("get", None)}}


def test_spans_metrics_and_log_records_agree(signals) -> None:
    app, tracker, span_exporter, reader, log_exporter = signals
    statuses = send_all(app, tracker)
    assert statuses.count(200) == len(REQUESTS) - 4
    assert sorted(s for s in statuses if s != 200) == [404, 405, 500, 500]

    spans, logs = by_span(span_exporter, log_exporter)
    # Every attribute of each span is on its log record, with the same value.
    assert disagreements(spans, logs) == ONLY_DISAGREEMENT

    # The metric's attribute sets are the spans' attributes restricted to the metric's keys.
    points = duration_points(reader)
    metric_keys = {key for attributes in points for key, _ in attributes}
    expected = Counter(
        frozenset((key, value) for key, value in span.attributes.items() if key in metric_keys)
        for span in spans.values()
    )
    assert points == expected

    # What the three share, and that each kind of request was seen as the conventions say.
    assert metric_keys == {
        "http.request.method",
        "http.route",
        "url.scheme",
        "http.response.status_code",
        "network.protocol.version",
        "error.type",
    }
    by_path = {span.attributes["url.path"]: span.attributes for span in spans.values()}
    versions = [by_path[f"/items/{n}"]["network.protocol.version"] for n in range(6, 12)]
    assert versions == ["1.0", "1.1", "2", "2", "3", "_OTHER"]
    assert (by_path["/items/1"]["server.address"], by_path["/items/1"]["server.port"]) == ("shop.example", 8443)
    assert (by_path["/items/2"]["server.address"], by_path["/items/2"]["server.port"]) == ("shop.example", 80)
    assert (by_path["/items/3"]["url.scheme"], by_path["/items/3"]["server.port"]) == ("https", 443)
    assert (by_path["/items/4"]["url.query"], by_path["/items/4"]["server.port"]) == ("q=x", 9443)
    assert (by_path["/items/5"]["server.address"], by_path["/items/5"]["server.port"]) == ("::1", 5000)
    assert by_path["/items/12"]["http.request.method"] == "GET"
    assert by_path["/items/12"]["enduser.id"] == "u-7"
    assert (by_path["/items/13"]["http.request.method"], by_path["/items/13"]["http.request.method_original"]) == (
        "_OTHER",
        "PURGE",
    )
    assert by_path["/items/14"]["http.response.status_code"] == 405
    assert "http.route" not in by_path["/items/14"]
    assert by_path["/items/15"]["client.address"] == "2001:db8:1::"
    assert by_path["/nowhere"]["http.response.status_code"] == 404
    assert by_path["/failing"]["error.type"] == "500"
    assert by_path["/boom"]["error.type"] == "KeyError"
    assert by_path["/shop/basket"]["url.scheme"] == "_OTHER"
    assert by_path["/shop/basket"]["flask.blueprint"] == "shop"
    assert (by_path["/items/16"]["server.address"], by_path["/items/16"]["server.port"]) == ("localhost", 80)
    assert (by_path["/items/17"]["server.address"], by_path["/items/17"]["server.port"]) == ("localhost", 8080)


def test_active_requests_use_the_durations_method_and_scheme(signals) -> None:
    app, tracker, _, reader, _ = signals
    send_all(app, tracker)
    data = reader.get_metrics_data()
    assert data is not None
    (active,) = [
        metric
        for resource_metrics in data.resource_metrics
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
        if metric.name == "http.server.active_requests"
    ]
    active_sets = {frozenset(point.attributes.items()) for point in active.data.data_points}
    duration_sets = {
        frozenset((k, v) for k, v in attributes if k in ("http.request.method", "url.scheme"))
        for attributes in duration_points(reader)
    }
    assert active_sets == duration_sets
    assert all(point.value == 0 for point in active.data.data_points)


def test_log_records_carry_the_spans_headers_with_the_same_values(monkeypatch) -> None:
    """TRACK_USAGE_OTEL_LOGS_HEADERS: the span's captured headers, sanitised and anonymised, on the log record."""
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
        "X-Request-Id,x-forwarded-for,X-Client,Authorization,Content-Type,Content-Length,Host",
    )
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "content-.*,allow")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "request-id")
    app, tracker, span_exporter, _, log_exporter = make_signals({"TRACK_USAGE_OTEL_LOGS_HEADERS": True})
    headers = {
        "X-Request-Id": "r-1",
        "X-Forwarded-For": "198.51.100.4, 192.0.2.9",
        "X-Client": "203.0.113.77",  # the raw client address, in any captured header, is anonymised
        "Authorization": "Bearer raw-token",
    }
    send_all(app, tracker, headers)
    spans, logs = by_span(span_exporter, log_exporter)
    assert disagreements(spans, logs) == ONLY_DISAGREEMENT
    prefixes = ("http.request.header.", "http.response.header.")
    for span_id, span in spans.items():
        span_headers = {k: v for k, v in span.attributes.items() if k.startswith(prefixes)}
        assert span_headers == {k: v for k, v in logs[span_id].items() if k.startswith(prefixes)}
        assert span_headers["http.request.header.authorization"] == ("[REDACTED]",)
        assert span_headers["http.request.header.x-request-id"] == ("[REDACTED]",)
        assert span_headers["http.response.header.content-type"][0].startswith("text/")
    by_path = {span.attributes["url.path"]: logs[span_id] for span_id, span in spans.items()}
    first = by_path["/items/1"]
    assert first["http.request.header.host"] == ("shop.example:8443",)
    assert first["http.request.header.x-forwarded-for"] == ("198.51.100.0, 192.0.2.0",)
    assert first["http.request.header.x-client"] == ("203.0.113.0",)
    assert "http.request.header.content-type" not in first  # a GET without a body
    assert by_path["/items/15"]["http.request.header.content-length"] == ("5",)  # WSGI's CONTENT_LENGTH
    assert by_path["/items/14"]["http.response.header.allow"]  # the 405's Allow header
    assert by_path["/boom"]["http.response.status_code"] == 500
    assert "raw-token" not in repr(logs)
