"""OTLP/HTTP export to a receiver on loopback that decodes the protobuf payload."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.otel import build_tracer_provider


class Receiver:
    """The decoded ``ExportTraceServiceRequest`` bodies POSTed to ``/v1/traces``."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every received span."""
        found = []
        with self.lock:
            for request in self.requests:
                for resource_spans in request.resource_spans:
                    resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        found.extend((resource, span) for span in scope_spans.spans)
        return found


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


def attributes(span: Any) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.attributes}


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    received = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            with received.lock:
                received.paths.append(self.path)
                received.requests.append(request)
            payload = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield received, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


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


SCRIPT = textwrap.dedent(
    """
    from flask import Flask
    from opentelemetry import trace
    from prometheus_client import CollectorRegistry

    from flask_usage_otel import TrackUsage

    app = Flask("configured_by_env")
    app.config["TRACK_USAGE_OTEL_EXPORTER"] = "otlp"

    @app.get("/pay")
    def pay():
        with trace.get_tracer("checkout").start_as_current_span("charge card"):
            return "paid"

    TrackUsage(app, registry=CollectorRegistry())
    assert app.test_client().get("/pay").status_code == 200
    # No flush: the provider set up from the settings exports what is queued at exit.
    """
)


def test_exporter_setting_sets_up_the_global_provider(receiver, tmp_path):
    received, endpoint = receiver
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACK_USAGE_"))}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME="checkout")
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    spans = {span.name: (resource, span) for resource, span in received.spans()}
    assert set(spans) == {"GET /pay", "charge card"}
    resource, server = spans["GET /pay"]
    assert resource["service.name"] == "checkout"
    _, child = spans["charge card"]
    assert child.parent_span_id == server.span_id  # the view's tracer is the global one we set up
