"""No secret query value and, with anonymization on, no raw client address in any span or OTel metric attribute:
ours, opentelemetry-instrumentation-flask's, and the OTel WSGI middleware's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import SpanKind

CLIENT = "198.51.100.77"
FORWARDED = "203.0.113.9, 2001:db8:1:2::7"
RAW = (CLIENT, "203.0.113.9", "2001:db8:1:2::7")
SECRETS = ("s3cret-token", "s3cret-password", "s3cret-signature")
QUERY = "token=s3cret-token&page=2&Pass%77ord=s3cret-password&X-Amz-Signature=s3cret-signature"
PRIVATE = {"TRACK_USAGE_ANONYMIZE_IP": "truncate", "TRACK_USAGE_OTEL": True}


def _request(app: Any) -> None:
    response = app.test_client().get(
        f"/items/5?{QUERY}", environ_base={"REMOTE_ADDR": CLIENT}, headers={"X-Forwarded-For": FORWARDED}
    )
    assert response.status_code == 200


def _leaks(attributes: Any) -> list[str]:
    """Every attribute whose value holds a raw address or a secret."""
    text = {key: json.dumps(value, default=str) for key, value in dict(attributes or {}).items()}
    return [f"{key}={value}" for key, value in text.items() if any(s in value for s in RAW + SECRETS)]


def _server_span(exporter: Any) -> Any:
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    return span


def test_own_span_has_no_secret_and_no_raw_address(make_app, exporter) -> None:
    app, _ = make_app(PRIVATE)
    _request(app)
    span = _server_span(exporter)
    assert _leaks(span.attributes) == []
    assert span.attributes["url.query"] == "token=REDACTED&page=2&Pass%77ord=REDACTED&X-Amz-Signature=REDACTED"
    assert span.attributes["client.address"] == "198.51.100.0"


def test_redaction_is_on_without_anonymization(make_app, exporter) -> None:
    app, _ = make_app({"TRACK_USAGE_OTEL": True})
    _request(app)
    assert not any(s in str(_server_span(exporter).attributes) for s in SECRETS)


def test_redaction_can_be_configured_or_turned_off(make_app, exporter) -> None:
    app, _ = make_app({"TRACK_USAGE_OTEL": True, "TRACK_USAGE_REDACT_QUERY_PARAMS": ["page"]})
    _request(app)
    assert _server_span(exporter).attributes["url.query"].startswith("token=s3cret-token&page=REDACTED&")
    exporter.clear()
    app, _ = make_app({"TRACK_USAGE_OTEL": True, "TRACK_USAGE_REDACT_QUERY_PARAMS": []})
    _request(app)
    assert _server_span(exporter).attributes["url.query"] == QUERY


@pytest.fixture
def instrumented(make_app, tracer_provider) -> Iterator[Any]:
    app, _ = make_app(PRIVATE)
    FlaskInstrumentor().instrument_app(app, tracer_provider=tracer_provider)
    yield app
    FlaskInstrumentor().uninstrument_app(app)


def test_flask_instrumentor_span_keeps_no_raw_address_or_secret(instrumented, exporter) -> None:
    _request(instrumented)
    span = _server_span(exporter)
    assert span.instrumentation_scope.name == "opentelemetry.instrumentation.flask"
    assert "net.peer.ip" in span.attributes  # the instrumentor's own attribute, anonymized
    assert _leaks(span.attributes) == []
    assert span.attributes["net.peer.ip"] == "198.51.100.0"


def test_wsgi_middleware_span_keeps_no_raw_address_or_secret(make_app, tracer_provider, exporter) -> None:
    app, _ = make_app(PRIVATE)
    app.wsgi_app = OpenTelemetryMiddleware(app.wsgi_app, tracer_provider=tracer_provider)
    _request(app)
    span = _server_span(exporter)
    assert span.instrumentation_scope.name == "opentelemetry.instrumentation.wsgi"
    assert _leaks(span.attributes) == []
    assert span.name == "GET /items/<int:item_id>"


def test_otel_metric_attributes_hold_no_address_or_secret(make_app) -> None:
    reader = InMemoryMetricReader()
    app, _ = make_app({**PRIVATE, "TRACK_USAGE_OTEL_METRICS": True}, meter_provider=MeterProvider([reader]))
    _request(app)
    data = reader.get_metrics_data()
    points = [
        point
        for resource_metrics in data.resource_metrics
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]
    assert points
    for point in points:
        assert _leaks(point.attributes) == []


def test_new_and_duplicated_conventions_of_the_instrumentor_are_scrubbed_too() -> None:
    """``OTEL_SEMCONV_STABILITY_OPT_IN=http/dup`` adds client.address, network.peer.address, url.query..."""
    code = textwrap.dedent(
        f"""
        import json
        from flask import Flask
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from prometheus_client import CollectorRegistry
        from flask_usage_otel import TrackUsage

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        app = Flask("dup")
        app.config.update({PRIVATE!r})
        app.add_url_rule("/items/<int:item_id>", "item", lambda item_id: "ok")
        TrackUsage(app, registry=CollectorRegistry(), tracer_provider=provider)
        FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
        app.test_client().get(
            "/items/5?{QUERY}", environ_base={{"REMOTE_ADDR": "{CLIENT}"}}, headers={{"X-Forwarded-For": "{FORWARDED}"}}
        )
        (span,) = exporter.get_finished_spans()
        print("RESULT", json.dumps(dict(span.attributes), default=str))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACK_USAGE_"))}
    env.update(
        OTEL_SEMCONV_STABILITY_OPT_IN="http/dup",
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST="X-Forwarded-For",
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    attributes = json.loads(line.removeprefix("RESULT "))
    # The instrumentor did put them there: each one is now anonymized or redacted.
    for key in ("net.peer.ip", "client.address", "url.query", "http.target"):
        assert key in attributes, key
    assert "http.request.header.x_forwarded_for" in attributes
    assert _leaks(attributes) == []
