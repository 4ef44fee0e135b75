"""Spans and log records over OTLP/HTTP and OTLP/gRPC to a real OpenTelemetry collector.

The collector is rotel (the ``rotel`` package on PyPI, in the dev extra): a Rust collector whose
wheel ships the ``rotel-agent`` binary. It listens for OTLP on both transports and forwards what it
received with its OTLP exporter to the in-repo receiver (``tests/otel/otlp_receiver.py``), which
decodes it for the assertions. So a span or record seen there went app -> SDK exporter -> a
collector's OTLP receiver -> the collector's exporter; an encoding a real collector rejects fails.

rotel publishes wheels for x86-64 Linux only: elsewhere these tests skip, saying so, and the OTLP
tests (test_otel_otlp.py, test_otel_logs.py) still export to the in-repo receiver directly. On
x86-64 Linux a missing rotel skips outside CI and fails under CI=true.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.otel import build_tracer_provider
from flask_usage_otel.otel.logs import EVENT_NAME, build_logger_provider
from tests.integration.servers import free_port, unavailable, wait_until
from tests.otel.otlp_receiver import Received, attributes, otlp_receiver
from tests.otel.test_otel_otlp import assert_order_span

ROTEL_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64"


def rotel_agent() -> Path:
    """The collector binary inside the installed ``rotel`` wheel."""
    if not ROTEL_PLATFORM:
        pytest.skip(
            "rotel ships its collector for x86-64 Linux only; on this platform the OTLP tests "
            "export to the in-repo receiver (tests/otel/otlp_receiver.py) alone"
        )
    try:
        import rotel
    except ImportError:
        unavailable("the rotel package is not installed (pip install -e '.[dev]' installs it)")
    agent = Path(rotel.__file__).parent / "rotel-agent"
    if not agent.is_file():
        unavailable(f"the rotel package has no collector binary at {agent}")
    return agent


@dataclass
class Collector:
    http: str  # OTLP/HTTP base URL (the SDK appends /v1/traces, /v1/logs)
    grpc: str  # OTLP/gRPC URL
    spans: Received  # what the collector forwarded
    records: Received


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    agent = rotel_agent()
    with (
        otlp_receiver(ExportTraceServiceRequest, ExportTraceServiceResponse) as (spans, spans_url),
        otlp_receiver(ExportLogsServiceRequest, ExportLogsServiceResponse) as (records, records_url),
    ):
        grpc_port, http_port = free_port(), free_port()
        command = [
            str(agent),
            "start",
            f"--otlp-grpc-endpoint=127.0.0.1:{grpc_port}",
            f"--otlp-http-endpoint=127.0.0.1:{http_port}",
            "--otlp-receiver-metrics-disabled",
            "--exporter=otlp",
            "--otlp-exporter-protocol=http",
            f"--otlp-exporter-traces-endpoint={spans_url}/v1/traces",
            f"--otlp-exporter-logs-endpoint={records_url}/v1/logs",
            f"--otlp-exporter-metrics-endpoint={spans_url}/v1/metrics",  # required, though none are received
            "--batch-timeout=50ms",  # forward at once, not after the default 200 ms
            f"--pid-file={tmp_path}/rotel.pid",
            f"--log-file={tmp_path}/rotel-agent.log",
        ]
        log = tmp_path / "rotel.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:

            def listening() -> bool:
                assert process.poll() is None, f"rotel exited: {log.read_text(errors='replace')[-2000:]}"
                return port_open(grpc_port) and port_open(http_port)

            wait_until(listening, 30, "rotel to listen")
            yield Collector(f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{grpc_port}", spans, records)
        except BaseException:
            print(log.read_text(errors="replace")[-3000:])
            raise
        finally:
            process.terminate()
            process.wait(timeout=15)


def log_exporter(protocol: str) -> object:
    """The SDK's OTLP log exporter for ``protocol``, configured by the OTEL_EXPORTER_OTLP_* variables."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    return OTLPLogExporter()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_collector_receives_the_span_and_the_log_record(
    collector: Collector, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.grpc if protocol == "grpc" else collector.http)
    tracer_provider = build_tracer_provider("otlp", "shop")  # gRPC or HTTP as the variable says
    logger_provider = build_logger_provider("shop", exporter=log_exporter(protocol))
    app = Flask("shop")
    app.config.update(TRACK_USAGE_OTEL_LOGS=True, TRACK_USAGE_FLUSH_INTERVAL=0.05)

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> str:
        return "order"

    tracker = TrackUsage(
        app, registry=CollectorRegistry(), tracer_provider=tracer_provider, logger_provider=logger_provider
    )
    try:
        assert app.test_client().get("/orders/12?full=1").status_code == 200
        with app.app_context():
            assert tracker.flush(10)
        assert tracer_provider.force_flush(10_000)
        assert logger_provider.force_flush(10_000)
        wait_until(lambda: collector.spans.spans() and collector.records.records(), 15, "rotel to forward")
    finally:
        tracer_provider.shutdown()
        logger_provider.shutdown()

    assert_order_span(collector.spans)
    ((_, span),) = collector.spans.spans()

    ((resource, scope, record),) = collector.records.records()
    assert resource["service.name"] == "shop"
    assert scope == "flask_usage_otel"
    assert record.event_name == EVENT_NAME
    assert record.body.string_value == "GET /orders/<int:order_id> 200"
    assert (record.trace_id, record.span_id) == (span.trace_id, span.span_id)
    record_attrs = attributes(record)
    assert record_attrs["url.path"] == "/orders/12"
    assert record_attrs["http.route"] == "/orders/<int:order_id>"
    assert record_attrs["http.response.status_code"] == 200
