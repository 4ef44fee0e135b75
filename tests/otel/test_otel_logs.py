"""Raw rows as OpenTelemetry log records, exported over OTLP/HTTP to a receiver on loopback."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g
from opentelemetry import _logs
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from flask_usage_otel import ConfigError, TrackUsage
from flask_usage_otel.otel.logs import EVENT_NAME, LogRecordTarget, build_logger_provider
from tests.integration.servers import free_port
from tests.otel.otlp_receiver import Received, attributes, otlp_receiver


@pytest.fixture
def receiver() -> Iterator[tuple[Received, str]]:
    with otlp_receiver(ExportLogsServiceRequest, ExportLogsServiceResponse) as served:
        yield served


@pytest.fixture
def otlp_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def shop_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask("shop")
    app.config.update(
        {
            "TRACK_USAGE_OTEL_LOGS": True,
            "TRACK_USAGE_ANONYMIZE_IP": "truncate",
            "TRACK_USAGE_FLUSH_INTERVAL": 0.05,
            **(config or {}),
        }
    )

    @app.route("/items/<int:item_id>", methods=["GET", "POST", "PURGE"])
    def item(item_id: int) -> str:
        g.track_var = {"basket": 3}
        return "x" * 11

    @app.get("/boom")
    def boom() -> str:
        raise KeyError("gone")

    return app


def test_every_field_of_known_requests_reaches_the_receiver(receiver, otlp_env) -> None:
    received, endpoint = receiver
    otlp_env.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", f"{endpoint}/v1/logs")
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    app = shop_app()
    registry = CollectorRegistry()
    provider = build_logger_provider("shop")  # OTLP/HTTP to OTEL_EXPORTER_OTLP_LOGS_ENDPOINT
    tracker = TrackUsage(app, registry=registry, tracer_provider=tracer_provider, logger_provider=provider)
    assert not isinstance(_logs.get_logger_provider(), LoggerProvider), "a global provider was installed"

    client = app.test_client()
    before = time.time()
    get = client.get(
        "/items/12?full=1&q=%C3%A9",
        headers={
            "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0",
            "X-Forwarded-For": "198.51.100.23, 10.1.2.3",
            "Accept-Language": "fr-CH, fr;q=0.9",
            "Authorization": "Bearer secret-token",
        },
        environ_base={"REMOTE_ADDR": "203.0.113.77"},
    )
    post = client.post("/items/7", data=b"12345", environ_base={"REMOTE_ADDR": "2001:db8:1:2::9"})
    purge = client.open("/items/7", method="PURGE")
    boom = client.get("/boom")
    assert [r.status_code for r in (get, post, purge, boom)] == [200, 200, 200, 500]
    with app.app_context():
        assert tracker.flush(10)
    provider.shutdown()

    assert set(received.paths) == {"/v1/logs"}
    records = received.records()
    assert len(records) == 4
    span_ids = {span.attributes["url.path"]: span.context for span in spans.get_finished_spans()}
    by_method = {
        (attributes(r)["http.request.method"], attributes(r)["url.path"]): (resource, scope, r)
        for resource, scope, r in records
    }
    assert set(by_method) == {("GET", "/items/12"), ("POST", "/items/7"), ("_OTHER", "/items/7"), ("GET", "/boom")}

    resource, scope, record = by_method["GET", "/items/12"]
    assert resource["service.name"] == "shop"
    assert scope == "flask_usage_otel"
    assert record.event_name == EVENT_NAME
    assert record.severity_text == "INFO"
    assert record.body.string_value == "GET /items/<int:item_id> 200"
    assert before - 1 < record.time_unix_nano / 1e9 <= time.time()
    context = next(
        c for s in spans.get_finished_spans() for c in [s.context] if s.attributes["url.query"] == "full=1&q=%C3%A9"
    )
    assert record.trace_id == context.trace_id.to_bytes(16, "big")
    assert record.span_id == context.span_id.to_bytes(8, "big")
    assert attributes(record) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/items/12",
        "url.query": "full=1&q=%C3%A9",
        "url.full": "http://localhost/items/12?full=1&q=%C3%A9",
        "server.address": "localhost",
        "server.port": 80,
        "http.route": "/items/<int:item_id>",
        "flask.endpoint": "item",
        "flask_usage.route": "/items/<int:item_id>",
        "http.response.status_code": 200,
        "http.response.body.size": 11,
        "network.protocol.version": "1.1",
        "client.address": "203.0.113.0",  # anonymised as in SQL rows
        "flask_usage.xforwardedfor": "198.51.100.0, 10.1.2.0",
        "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0",
        "user_agent.name": "firefox",
        "user_agent.version": "120.0",
        "user_agent.os.name": "linux",
        "flask_usage.language": "fr-CH",
        "flask_usage.authorization": True,  # only that the header was there
        "flask_usage.speed": pytest.approx(attributes(record)["flask_usage.speed"]),
        "flask_usage.server_name": "shop",
        "flask_usage.view_args": '{"item_id": 12}',
        "flask_usage.track_var": '{"basket": 3}',
    }
    assert 0 < attributes(record)["flask_usage.speed"] < 5
    assert "secret-token" not in str(records)

    _, _, record = by_method["POST", "/items/7"]
    post_attributes = attributes(record)
    assert post_attributes["client.address"] == "2001:db8:1::"
    assert post_attributes["http.request.body.size"] == 5
    assert post_attributes["flask_usage.authorization"] is False
    assert "url.query" not in post_attributes
    assert "user_agent.original" in post_attributes  # werkzeug's test client sends one

    _, _, record = by_method["_OTHER", "/items/7"]
    assert attributes(record)["http.request.method_original"] == "PURGE"
    boom_record = next(r for _, _, r in records if attributes(r)["url.path"] == "/boom")
    boom_attributes = attributes(boom_record)
    assert boom_attributes["http.request.method"] == "GET"
    assert boom_attributes["error.type"] == "KeyError"
    assert boom_attributes["http.response.status_code"] == 500
    assert boom_record.trace_id == span_ids["/boom"].trace_id.to_bytes(16, "big")
    assert registry.get_sample_value("flask_usage_tracking_errors_total", {"component": "otel_logs"}) == 0


def test_collector_down_drops_and_counts_records_and_requests_are_unaffected(otlp_env) -> None:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    nobody_listens = f"http://127.0.0.1:{free_port()}/v1/logs"
    app = shop_app()
    registry = CollectorRegistry()
    provider = build_logger_provider("shop", OTLPLogExporter(endpoint=nobody_listens, timeout=1))
    tracker = TrackUsage(app, registry=registry, logger_provider=provider)
    client = app.test_client()
    started = time.perf_counter()
    statuses = [client.get(f"/items/{i}").status_code for i in range(20)]
    elapsed = time.perf_counter() - started
    assert statuses == [200] * 20
    assert elapsed < 2.0, "requests waited for the unreachable collector"

    def dropped() -> float:
        return registry.get_sample_value("flask_usage_tracking_errors_total", {"component": "otel_logs"}) or 0.0

    with app.app_context():
        tracker.flush(15)
    deadline = time.monotonic() + 30
    while dropped() < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dropped() == 20
    provider.shutdown()


def test_a_full_queue_drops_and_counts_without_waiting() -> None:
    provider = LoggerProvider()
    exported = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exported))
    app = shop_app({"TRACK_USAGE_QUEUE_SIZE": 3, "TRACK_USAGE_BATCH_SIZE": 3, "TRACK_USAGE_FLUSH_INTERVAL": 60})
    registry = CollectorRegistry()
    tracker = TrackUsage(app, registry=registry, logger_provider=provider)
    release = threading.Event()
    real_store = LogRecordTarget.store

    def stuck_store(self: LogRecordTarget, batch: Any) -> None:
        release.wait(10)
        real_store(self, batch)

    LogRecordTarget.store = stuck_store  # type: ignore[method-assign]
    try:
        client = app.test_client()
        # The first three fill a batch the writer takes and holds; three more fill the queue.
        for i in range(3):
            assert client.get(f"/items/{i}").status_code == 200
        time.sleep(0.3)
        for i in range(3, 10):
            assert client.get(f"/items/{i}").status_code == 200
    finally:
        release.set()
        LogRecordTarget.store = real_store  # type: ignore[method-assign]
    with app.app_context():
        assert tracker.flush(10)
    assert len(exported.get_finished_logs()) == 6
    assert registry.get_sample_value("flask_usage_tracking_errors_total", {"component": "otel_logs"}) == 4


def test_the_request_thread_only_enqueues() -> None:
    provider = LoggerProvider()
    exported = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exported))
    app = shop_app()
    emitting_threads: list[threading.Thread] = []
    real_store = LogRecordTarget.store

    def spy(self: LogRecordTarget, batch: Any) -> None:
        emitting_threads.append(threading.current_thread())
        real_store(self, batch)

    tracker = TrackUsage(app, registry=CollectorRegistry(), logger_provider=provider)
    LogRecordTarget.store = spy  # type: ignore[method-assign]
    try:
        assert app.test_client().get("/items/3").status_code == 200
        assert exported.get_finished_logs() == ()  # nothing built or emitted during the request
        with app.app_context():
            assert tracker.flush(10)
    finally:
        LogRecordTarget.store = real_store  # type: ignore[method-assign]
    assert emitting_threads
    assert threading.current_thread() not in emitting_threads
    (log,) = exported.get_finished_logs()
    assert log.log_record.event_name == EVENT_NAME
    assert log.log_record.trace_id == 0  # no tracer here: no trace, and no stray context


def test_no_logger_provider_fails_at_init_app_and_none_is_installed() -> None:
    app = shop_app()
    with pytest.raises(ConfigError, match=r"TRACK_USAGE_OTEL_LOGS.*logger provider"):
        TrackUsage(app, registry=CollectorRegistry())
    assert "track_usage" not in app.extensions
    assert not isinstance(_logs.get_logger_provider(), LoggerProvider)


def test_the_setting_is_validated() -> None:
    app = shop_app({"TRACK_USAGE_OTEL_LOGS": "maybe"})
    with pytest.raises(ConfigError, match="TRACK_USAGE_OTEL_LOGS"):
        TrackUsage(app, registry=CollectorRegistry())
    assert "track_usage" not in app.extensions


def test_the_sdk_queue_is_never_overfilled() -> None:
    import weakref

    from flask_usage_otel.otel.logs import SDK_QUEUE_SIZE, CountingExporter, _forget_in_flight, _Full
    from tests.storage.conftest import make_record

    provider = LoggerProvider()
    exported = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exported))
    counter = CountingExporter(exported)
    emitter = LogRecordTarget(provider.get_logger("test"), counter)
    counter.emitted = SDK_QUEUE_SIZE - 1  # as if the exporter were stuck with that many
    with pytest.raises(_Full):
        emitter.store([make_record(), make_record()])  # whole batch refused: a retry never duplicates
    assert exported.get_finished_logs() == ()
    emitter.store([make_record()])
    assert len(exported.get_finished_logs()) == 1
    assert counter.in_flight == SDK_QUEUE_SIZE
    _forget_in_flight(weakref.ref(counter))  # what a forked child does
    assert counter.in_flight == 0


def test_log_records_queue_plain_data_bounded_in_bytes_and_a_poisoned_request_drops_alone() -> None:
    # The same queue as SQL rows: plain data only, TRACK_USAGE_QUEUE_BYTES bounds it.
    provider = LoggerProvider()
    exported = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exported))
    app = shop_app({"TRACK_USAGE_QUEUE_BYTES": 64 * 1024, "TRACK_USAGE_FLUSH_INTERVAL": 60})

    @app.get("/deep")
    def deep() -> str:
        value: dict[str, Any] = {}
        for _ in range(5000):
            value = {"d": value}
        g.track_var = {"deep": value}
        return "ok"

    registry = CollectorRegistry()
    tracker = TrackUsage(app, registry=registry, logger_provider=provider)
    client = app.test_client()
    assert client.get("/deep").status_code == 200
    assert client.get("/items/1").status_code == 200
    # 8 KB headers: a few fill 64 KiB while the writer waits out its interval.
    big = {"User-Agent": "u" * 8000}
    for i in range(40):
        assert client.get(f"/items/{i}", headers=big).status_code == 200
    with app.app_context():
        assert tracker.flush(10)
    [writer] = [s.writer for s in tracker._trackers[app].sinks if s.name == "otel_logs"]
    assert writer.dropped["unserialisable"] == 1
    assert writer.dropped["queue_full"] > 0
    emitted = len(exported.get_finished_logs())
    assert emitted + writer.rows_dropped == 42
    assert registry.get_sample_value("flask_usage_tracking_errors_total", {"component": "otel_logs"}) == (
        writer.rows_dropped
    )


class FileLogExporter:
    """A ``LogRecordExporter`` that appends (exporting pid, url.path) of each record to a file: what a
    forked child exports is seen by the parent."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, batch: Any) -> Any:
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        with self.path.open("a") as out:
            out.write("".join(f"{os.getpid()} {log.log_record.attributes['url.path']}\n" for log in batch))
        return LogRecordExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_emits_its_own_records_once_and_never_the_parents(tmp_path: Path) -> None:
    """As with gunicorn --preload: records queued in the parent stay the parent's; a child's go out once."""
    out = tmp_path / "exported.txt"
    provider = build_logger_provider("shop", exporter=FileLogExporter(out))
    app = shop_app({"TRACK_USAGE_FLUSH_INTERVAL": 60, "TRACK_USAGE_BATCH_SIZE": 1000})
    tracker = TrackUsage(app, registry=CollectorRegistry(), logger_provider=provider)
    client = app.test_client()
    for i in range(3):
        assert client.get(f"/items/{i}").status_code == 200  # queued, the writer waiting out its interval
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only, never return into pytest
        code = 1
        try:
            ok = all(app.test_client().get(f"/items/{100 + i}").status_code == 200 for i in range(2))
            with app.app_context():
                ok = ok and tracker.flush(10)
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with app.app_context():
        assert tracker.flush(10)
    provider.shutdown()
    lines = [tuple(line.split()) for line in out.read_text().splitlines()]
    assert sorted(lines) == sorted(
        [(str(os.getpid()), f"/items/{i}") for i in range(3)] + [(str(pid), f"/items/{100 + i}") for i in range(2)]
    )
