"""``user_agent.synthetic.type``, the exception log event (``OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN``)
and the time-to-first-byte histogram, through TrackUsage and real requests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.util.http import detect_synthetic_user_agent
from otel_helpers import only_server_span

from flask_usage_otel import ConfigError

AGENTS = ["kube-probe/1.29", "Mozilla/5.0 (compatible; Googlebot/2.1)", "AlwaysOn", "bingbot/2.0", "Mozilla/5.0"]


@pytest.fixture
def log_exporter() -> InMemoryLogRecordExporter:
    return InMemoryLogRecordExporter()


@pytest.fixture
def logger_provider(log_exporter) -> LoggerProvider:
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    return provider


def test_synthetic_type_on_spans_and_log_records(make_app, exporter, logger_provider, log_exporter) -> None:
    config = {"TRACK_USAGE_OTEL_LOGS": True, "TRACK_USAGE_SYNC_WRITES": True}
    app, t = make_app(config, logger_provider=logger_provider)
    client = app.test_client()
    for agent in AGENTS:
        client.get("/items/1", headers={"User-Agent": agent})
    with app.app_context():
        t.flush()
    on_spans = [
        span.attributes.get("user_agent.synthetic.type")
        for span in exporter.get_finished_spans()
        if span.kind.name == "SERVER"
    ]
    on_logs = [log.log_record.attributes.get("user_agent.synthetic.type") for log in log_exporter.get_finished_logs()]
    assert on_spans == on_logs == ["test", "bot", "test", "bot", None]
    # Where opentelemetry-util-http knows an agent, it says the same.
    for agent, ours in zip(AGENTS, on_spans, strict=True):
        theirs = detect_synthetic_user_agent(agent)
        assert theirs is None or theirs == ours


def _exception_events(log_exporter: InMemoryLogRecordExporter) -> list[Any]:
    return [
        log.log_record
        for log in log_exporter.get_finished_logs()
        if log.log_record.event_name == "http.server.request.exception"
    ]


@pytest.mark.parametrize(
    ("signal", "span_event", "log_event"), [("", True, False), ("logs", False, True), ("logs/dup", True, True)]
)
def test_the_exception_is_a_log_event_linked_to_the_span_when_opted_in(
    monkeypatch, make_app, exporter, logger_provider, log_exporter, signal, span_event, log_event
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN", signal)
    app, _ = make_app(logger_provider=logger_provider)
    app.logger.disabled = True
    assert app.test_client().get("/boom").status_code == 500
    span = only_server_span(exporter)
    assert [e.name for e in span.events] == (["exception"] if span_event else [])
    events = _exception_events(log_exporter)
    if not log_event:
        assert events == []
        return
    (event,) = events
    assert (event.trace_id, event.span_id) == (span.context.trace_id, span.context.span_id)
    assert event.severity_number.value == 17
    attributes = event.attributes
    assert attributes["exception.type"] == "ValueError"
    assert attributes["exception.message"] == "broken view"
    assert 'raise ValueError("broken view")' in attributes["exception.stacktrace"]
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.route"] == "/boom"
    assert attributes["http.response.status_code"] == 500


def test_no_exception_event_without_an_unhandled_exception(
    monkeypatch, make_app, logger_provider, log_exporter
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN", "logs")
    app, _ = make_app(logger_provider=logger_provider)
    assert app.test_client().get("/unavailable").status_code == 503
    assert _exception_events(log_exporter) == []


def test_exception_logs_without_a_logger_provider_fail_at_init_app(monkeypatch, make_app) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN", "logs")
    with pytest.raises(ConfigError, match=r"^OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN: .*logger provider"):
        make_app()


def _points(reader: InMemoryMetricReader, name: str) -> dict[frozenset[Any], Any]:
    data = reader.get_metrics_data()
    return {
        frozenset(point.attributes.items()): point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    }


def test_time_to_first_byte_histogram_beside_the_duration(make_app) -> None:
    reader = InMemoryMetricReader()
    app, _ = make_app({"TRACK_USAGE_OTEL_METRICS": True}, meter_provider=MeterProvider(metric_readers=[reader]))

    @app.get("/stream")
    def stream() -> Any:
        def body() -> Iterator[str]:
            yield "first"
            time.sleep(0.2)
            yield "rest"

        return app.response_class(body())

    client = app.test_client()
    assert client.get("/stream").data == b"firstrest"
    assert client.get("/items/1").status_code == 200
    durations = _points(reader, "http.server.request.duration")
    first_bytes = _points(reader, "flask_usage.server.time_to_first_byte")
    assert durations.keys() == first_bytes.keys()  # the same attributes
    for attributes, duration in durations.items():
        first_byte = first_bytes[attributes]
        assert first_byte.explicit_bounds == duration.explicit_bounds
        if ("http.route", "/stream") in attributes:
            assert first_byte.sum < 0.1 <= 0.2 <= duration.sum  # the streamed body: first byte before the sleep
        else:
            assert first_byte.sum == duration.sum  # in memory: sent at once, at the end
