"""OTLP/HTTP export to a receiver on loopback that decodes the protobuf payload."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.otel import build_tracer_provider
from tests.otel.otlp_receiver import Received, attributes, otlp_receiver


@pytest.fixture
def receiver() -> Iterator[tuple[Received, str]]:
    with otlp_receiver(ExportTraceServiceRequest, ExportTraceServiceResponse) as served:
        yield served


def test_otlp_exporter_posts_the_server_span(receiver, monkeypatch):
    received, endpoint = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = build_tracer_provider("otlp", "shop")
    try:
        from flask import Flask

        app = Flask("shop")

        @app.get("/orders/<int:order_id>")
        def order(order_id: int) -> str:
            return "order"

        TrackUsage(app, registry=CollectorRegistry(), tracer_provider=provider)
        assert app.test_client().get("/orders/12?full=1").status_code == 200
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()

    assert received.paths == ["/v1/traces"]
    assert_order_span(received)


def assert_order_span(received: Received) -> None:
    """The one span received is the server span of ``GET /orders/12?full=1`` of service "shop"."""
    ((resource, span),) = received.spans()
    assert resource["service.name"] == "shop"
    assert span.name == "GET /orders/<int:order_id>"
    assert span.kind == SpanKind.SERVER.value + 1  # the protobuf enum counts from UNSPECIFIED
    attrs = attributes(span)
    assert attrs["http.route"] == "/orders/<int:order_id>"
    assert attrs["url.path"] == "/orders/12"
    assert attrs["url.query"] == "full=1"
    assert attrs["http.response.status_code"] == 200
    assert attrs["flask.endpoint"] == "order"


DOCS = Path(__file__).resolve().parents[2] / "docs" / "opentelemetry.md"
DOC_BLOCKS = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
DRIVER = "import app; assert app.app.test_client().get('/pay').status_code == 200"


def _run_app(tmp_path: Path, code: str, endpoint: str, command: list[str], **extra: str) -> None:
    (tmp_path / "app.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACK_USAGE_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        PYTHONPATH=str(tmp_path),
        **extra,
    )
    # No flush in the app: the SDK provider exports what is queued when the process exits.
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert "OpenTelemetryNotConfiguredWarning" not in result.stderr


def _assert_pay_spans(received: Received) -> None:
    spans = {span.name: (resource, span) for resource, span in received.spans()}
    assert set(spans) == {"GET /pay", "charge card"}
    resource, server = spans["GET /pay"]
    assert resource["service.name"] == "shop"
    assert server.kind == SpanKind.SERVER.value + 1
    assert attributes(server)["http.route"] == "/pay"
    _, child = spans["charge card"]
    assert child.trace_id == server.trace_id
    assert child.parent_span_id == server.span_id


def test_docs_have_the_four_set_ups() -> None:
    assert len(DOC_BLOCKS) == 8  # the four set-ups in five, the OTel variables, headers on log records, the hooks
    assert "configure_opentelemetry" not in DOC_BLOCKS[0] + DOC_BLOCKS[1]


def test_docs_set_up_1_opentelemetry_instrument(receiver, tmp_path):
    received, endpoint = receiver
    launcher = str(Path(sys.executable).parent / "opentelemetry-instrument")
    _run_app(tmp_path, DOC_BLOCKS[0], endpoint, [launcher, sys.executable, "-c", DRIVER], OTEL_SERVICE_NAME="shop")
    _assert_pay_spans(received)


def test_docs_set_up_2_sdk_in_code(receiver, tmp_path):
    received, endpoint = receiver
    _run_app(tmp_path, DOC_BLOCKS[1], endpoint, [sys.executable, "-c", DRIVER])
    _assert_pay_spans(received)


def test_docs_set_up_3_configure_opentelemetry(receiver, tmp_path):
    received, endpoint = receiver
    _run_app(tmp_path, DOC_BLOCKS[2], endpoint, [sys.executable, "-c", DRIVER])
    _assert_pay_spans(received)


def test_docs_set_up_3_app_factory(receiver, tmp_path):
    received, endpoint = receiver
    driver = "import app; assert app.create_app().test_client().get('/nothing').status_code == 404"
    _run_app(tmp_path, DOC_BLOCKS[3], endpoint, [sys.executable, "-c", driver])
    ((resource, span),) = received.spans()
    assert resource["service.name"] == "shop"
    assert span.name == "GET"  # unmatched: never the raw path
    assert attributes(span)["http.response.status_code"] == 404


def test_docs_set_up_4_own_provider(tmp_path):
    (tmp_path / "example.py").write_text(DOC_BLOCKS[4])
    result = subprocess.run(
        [sys.executable, str(tmp_path / "example.py")], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_demo_app_sets_up_export_from_the_environment(receiver, tmp_path):
    """The compose stack's app: the factory sets the SDK up from the OTEL_* variables."""
    received, endpoint = receiver
    root = Path(__file__).resolve().parents[2]
    driver = (
        "import sys; sys.path.insert(0, sys.argv[1]); from examples.demo_app import create_app; "
        "from prometheus_client import CollectorRegistry; "
        "assert create_app(registry=CollectorRegistry()).test_client().get('/api/items/3').status_code == 200"
    )
    _run_app(tmp_path, "", endpoint, [sys.executable, "-c", driver, str(root)], OTEL_SERVICE_NAME="shop")
    ((resource, span),) = received.spans()
    assert resource["service.name"] == "shop"
    assert span.name == "GET /api/items/<int:item_id>"
