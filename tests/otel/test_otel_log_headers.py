"""The span's captured headers on the ``flask_usage.request`` log records (``TRACK_USAGE_OTEL_LOGS_HEADERS``).

Through the front door: ``TrackUsage`` with the SDK's in-memory exporters, real requests, the real
background writer. The headers are captured on the request thread into the captured request, and
become ``record.headers`` on the writer's; the SQL table never holds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, Response
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from flask_usage_otel import ConfigError, SQLStorage, TrackUsage
from flask_usage_otel.record import CapturedRequest
from tests.conftest import ListStorage
from tests.otel.otel_helpers import server_spans

REQUEST_VARIABLE = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"
RESPONSE_VARIABLE = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE"
SANITIZE_VARIABLE = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"

CREDENTIALS = ("Bearer abc-credential", "Basic proxy-credential", "session=cookie-credential", "session=set-credential")
REQUEST_HEADERS = {
    "X-Request-Id": "req-1",
    "X-Custom-Secret": "s3cret",
    "X-Custom-Plain": "plain",
    "Accept": "text/html",
    "Authorization": CREDENTIALS[0],
    "Proxy-Authorization": CREDENTIALS[1],
    "Cookie": CREDENTIALS[2],  # sent as is by a client without a cookie jar (use_cookies=False)
}
HEADER_PREFIXES = ("http.request.header.", "http.response.header.")
UNSET = object()
"""A setting left out of the app's config."""


@pytest.fixture
def capture_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Credentials named on purpose, in mixed case: they are stored [REDACTED] all the same.
    monkeypatch.setenv(
        REQUEST_VARIABLE, "X-Request-Id, x-custom-.*, AUTHORIZATION, proxy-authorization, Cookie, content-type"
    )
    monkeypatch.setenv(RESPONSE_VARIABLE, "x-response-.*,Set-Cookie,Content-Type")
    monkeypatch.setenv(SANITIZE_VARIABLE, "SECRET")


class Tracked:
    """One app with spans and log records in memory."""

    def __init__(self, config: dict[str, Any] | None = None, storage: Any = None) -> None:
        self.spans, self.logs = InMemorySpanExporter(), InMemoryLogRecordExporter()
        tracer_provider, logger_provider = TracerProvider(), LoggerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.logs))
        self.app = app = Flask("log_headers")
        settings = {
            "TRACK_USAGE_OTEL_LOGS": True,
            "TRACK_USAGE_OTEL_LOGS_HEADERS": True,
            "TRACK_USAGE_FLUSH_INTERVAL": 0.05,
            **(config or {}),
        }
        app.config.update({key: value for key, value in settings.items() if value is not UNSET})

        @app.get("/page")
        def page() -> Response:
            response = Response("hello", content_type="text/plain")
            response.headers["X-Response-Id"] = "resp-9"
            response.headers.add("X-Response-Multi", "a")
            response.headers.add("X-Response-Multi", "b")
            response.headers["Set-Cookie"] = CREDENTIALS[3]
            return response

        @app.get("/stream")
        def stream() -> Response:
            def chunks() -> Any:
                yield "one "
                yield "two"

            return Response(chunks(), content_type="text/plain", headers={"X-Response-Id": "stream-3"})

        @app.get("/boom")
        def boom() -> str:
            raise KeyError("gone")

        @app.after_request
        def late_header(response: Response) -> Response:  # added after the view: still seen
            response.headers["X-Response-Late"] = "late"
            return response

        self.registry = CollectorRegistry()
        self.tracker = TrackUsage(
            app, storage, registry=self.registry, tracer_provider=tracer_provider, logger_provider=logger_provider
        )

    def get(self, path: str = "/page", **options: Any) -> int:
        options.setdefault("headers", REQUEST_HEADERS)
        return self.app.test_client(use_cookies=False).get(path, content_type="text/csv", **options).status_code

    def flush(self) -> None:
        with self.app.app_context():
            assert self.tracker.flush(10)

    def log_attributes(self) -> list[dict[str, Any]]:
        return [dict(log.log_record.attributes) for log in self.logs.get_finished_logs()]

    def pairs(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(span's, log record's) header attributes of each request, matched by span id."""
        logs = {log.log_record.span_id: log.log_record.attributes for log in self.logs.get_finished_logs()}
        spans = server_spans(self.spans)
        assert len(spans) == len(logs)
        return [(headers_of(span.attributes), headers_of(logs[span.context.span_id])) for span in spans]


def headers_of(attributes: Any) -> dict[str, list[str]]:
    return {key: list(value) for key, value in attributes.items() if key.startswith(HEADER_PREFIXES)}


def test_log_records_carry_the_spans_header_attributes(capture_env: None) -> None:
    tracked = Tracked()
    assert tracked.get() == 200
    assert tracked.app.test_client().post("/page").status_code == 405  # an error response's headers too
    tracked.flush()
    pairs = tracked.pairs()
    assert len(pairs) == 2
    for span_headers, log_headers in pairs:
        assert span_headers == log_headers  # same names, same values, same sanitising
        assert log_headers
    page = headers_of(next(a for a in tracked.log_attributes() if a["http.response.status_code"] == 200))
    assert page == {
        "http.request.header.x-request-id": ["req-1"],
        "http.request.header.x-custom-secret": ["[REDACTED]"],  # SANITIZE_FIELDS is searched, ignoring case
        "http.request.header.x-custom-plain": ["plain"],
        "http.request.header.content-type": ["text/csv"],  # WSGI's CONTENT_TYPE, without HTTP_
        "http.request.header.authorization": ["[REDACTED]"],  # named, and still never stored as sent
        "http.request.header.proxy-authorization": ["[REDACTED]"],
        "http.request.header.cookie": ["[REDACTED]"],
        "http.response.header.x-response-id": ["resp-9"],
        "http.response.header.x-response-multi": ["a,b"],  # repeated response headers joined
        "http.response.header.x-response-late": ["late"],
        "http.response.header.set-cookie": ["[REDACTED]"],
        "http.response.header.content-type": ["text/plain"],
    }
    # No credential anywhere in any record, under any attribute.
    for attributes in tracked.log_attributes():
        text = repr(attributes)
        assert not [credential for credential in CREDENTIALS if credential in text]


def test_a_streamed_body_and_a_raising_view_carry_their_headers(capture_env: None) -> None:
    """The response's headers as it started: a body streamed after the view returned, Flask's 500 page."""
    tracked = Tracked()
    assert tracked.get("/stream") == 200
    assert tracked.get("/boom") == 500
    tracked.flush()
    pairs = tracked.pairs()
    assert len(pairs) == 2
    for span_headers, log_headers in pairs:
        assert span_headers == log_headers
    by_status = {a["http.response.status_code"]: headers_of(a) for a in tracked.log_attributes()}
    sent = {
        "http.request.header.x-request-id": ["req-1"],
        "http.request.header.x-custom-secret": ["[REDACTED]"],
        "http.request.header.x-custom-plain": ["plain"],
        "http.request.header.content-type": ["text/csv"],
        "http.request.header.authorization": ["[REDACTED]"],
        "http.request.header.proxy-authorization": ["[REDACTED]"],
        "http.request.header.cookie": ["[REDACTED]"],
    }
    assert by_status[200] == {
        **sent,
        "http.response.header.x-response-id": ["stream-3"],
        "http.response.header.x-response-late": ["late"],
        "http.response.header.content-type": ["text/plain"],
    }
    assert by_status[500] == {
        **sent,
        "http.response.header.x-response-late": ["late"],  # after_request runs on the error response too
        "http.response.header.content-type": ["text/html; charset=utf-8"],
    }


@pytest.mark.parametrize(
    ("request_patterns", "response_patterns"),
    [
        ("x-request-id,x-custom-plain", "x-response-multi"),
        ("X-REQUEST-ID,X-Custom-PLAIN", "X-RESPONSE-MULTI"),
        ("x-request-.*|X-CUSTOM-P.*", "X-Response-M.*"),
    ],
)
def test_patterns_match_names_ignoring_case(
    monkeypatch: pytest.MonkeyPatch, request_patterns: str, response_patterns: str
) -> None:
    monkeypatch.setenv(REQUEST_VARIABLE, request_patterns)
    monkeypatch.setenv(RESPONSE_VARIABLE, response_patterns)
    monkeypatch.delenv(SANITIZE_VARIABLE, raising=False)
    tracked = Tracked()
    tracked.get()
    tracked.flush()
    ((span_headers, log_headers),) = tracked.pairs()
    assert (
        span_headers
        == log_headers
        == {
            "http.request.header.x-request-id": ["req-1"],
            "http.request.header.x-custom-plain": ["plain"],
            "http.response.header.x-response-multi": ["a,b"],
        }
    )


@pytest.mark.parametrize("setting", [UNSET, False, "off"])
def test_no_headers_on_log_records_unless_the_setting_asks(capture_env: None, setting: Any) -> None:
    storage = ListStorage()
    tracked = Tracked({"TRACK_USAGE_OTEL_LOGS_HEADERS": setting}, storage)
    assert "TRACK_USAGE_OTEL_LOGS_HEADERS" in tracked.app.config or setting is UNSET
    sinks = tracked.tracker._trackers[tracked.app].sinks
    assert [s.record_headers for s in sinks] == [None] * len(sinks)  # nothing to capture on the request thread
    tracked.get()
    tracked.flush()
    ((span_headers, log_headers),) = tracked.pairs()
    assert span_headers["http.request.header.x-request-id"] == ["req-1"]  # the span still has them
    assert log_headers == {}
    (record,) = storage.records
    assert record.headers is None


def test_no_headers_when_no_variable_names_any(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (REQUEST_VARIABLE, RESPONSE_VARIABLE, SANITIZE_VARIABLE):
        monkeypatch.delenv(variable, raising=False)
    storage = ListStorage()
    tracked = Tracked(storage=storage)
    sinks = tracked.tracker._trackers[tracked.app].sinks
    assert [s.record_headers for s in sinks] == [None] * len(sinks)  # nothing to capture on the request thread
    tracked.get()
    tracked.flush()
    ((span_headers, log_headers),) = tracked.pairs()
    assert span_headers == log_headers == {}
    assert storage.records[0].headers is None


@pytest.mark.parametrize("value", ["maybe", None, 2, ["x-request-id"]])
def test_a_bad_value_fails_at_init_app_naming_the_key(value: Any) -> None:
    app = Flask("bad")
    app.config.update(TRACK_USAGE_OTEL_LOGS=True, TRACK_USAGE_OTEL_LOGS_HEADERS=value)
    with pytest.raises(ConfigError, match=r"^TRACK_USAGE_OTEL_LOGS_HEADERS: ") as info:
        TrackUsage(app, registry=CollectorRegistry(), logger_provider=LoggerProvider())
    assert info.value.key == "TRACK_USAGE_OTEL_LOGS_HEADERS"
    assert "track_usage" not in app.extensions


def test_no_header_value_reaches_a_sql_row(capture_env: None, tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}")
    received = ListStorage()
    tracked = Tracked(storage=[storage, received])
    marked = {**REQUEST_HEADERS, "X-Request-Id": "marker-req-4411", "X-Custom-Plain": "marker-plain-4412"}
    assert tracked.get(headers=marked) == 200
    tracked.flush()
    (log,) = tracked.log_attributes()
    assert log["http.request.header.x-request-id"] == ("marker-req-4411",)
    assert log["http.response.header.x-response-id"] == ("resp-9",)
    # Another storage receives the record with its headers (record.headers, as_dict) ...
    (record,) = received.records
    assert record.headers == headers_of(log)
    assert record.as_dict()["headers"] == record.headers
    # ... the SQL table has no column for them, and none of their values is in a row.
    with storage.engine.connect() as conn:
        rows = conn.execute(sa.select(storage.table)).mappings().all()
    assert len(rows) == 1
    assert "headers" not in rows[0]
    text = repr(dict(rows[0]))
    assert not [v for v in ("marker-req-4411", "marker-plain-4412", "resp-9", "a,b", "late") if v in text]
    with tracked.app.app_context():
        (read,) = tracked.tracker.get_usage()
    assert "headers" not in read
    assert "marker" not in repr(read)


def test_the_byte_bound_counts_the_captured_headers(capture_env: None) -> None:
    """8,000 characters of a captured header per request: the writer's byte bound counts them."""
    tracked = Tracked({"TRACK_USAGE_QUEUE_BYTES": 64 * 1024, "TRACK_USAGE_FLUSH_INTERVAL": 60})
    [writer] = [s.writer for s in tracked.tracker._trackers[tracked.app].sinks if s.name == "otel_logs"]
    big = {"X-Custom-Plain": "p" * 8000}  # in no field of the record but headers
    try:
        for _ in range(40):
            assert tracked.get(headers=big) == 200
        items = list(writer._queue)
        assert items
        assert {type(item) for item in items} == {CapturedRequest}
        assert all(item.headers["http.request.header.x-custom-plain"] == [big["X-Custom-Plain"]] for item in items)
        assert all(item.size > 8000 for item in items)
        assert writer.queued_bytes >= 8000 * len(items)
        # Uncounted, 40 requests of about 1 kB each would fit; counted, the bound drops most.
        assert writer.dropped["queue_full"] > 0
        assert len(items) <= 64 * 1024 // 8000
    finally:
        tracked.flush()
    assert len(tracked.logs.get_finished_logs()) + writer.rows_dropped == 40
