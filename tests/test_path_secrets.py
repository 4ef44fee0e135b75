"""Secrets in URL paths (``/reset/<token>``): redacted in rows, exports, spans and log records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import ConfigError, SQLStorage, TrackUsage
from flask_usage_otel.privacy import redact_secrets
from tests.conftest import ListStorage

TOKEN = "tok-3f9a8b7c6d5e"
ODD_TOKEN = "a b/é%c"  # spaces, a slash (path converter), non-ASCII, a percent sign


def secrets_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask("secrets")
    app.config.update({"TRACK_USAGE_SYNC_WRITES": True, **(config or {})})

    @app.get("/reset/<token>")
    def reset(token: str) -> str:
        return "reset"

    @app.get("/files/<path:Signature>/<name>")
    def signed(Signature: str, name: str) -> str:
        return name

    @app.get("/items/<code>")
    def item(code: str) -> str:
        return code

    return app


@pytest.mark.parametrize("sync_writes", [True, False], ids=["sync", "background writer"])
def test_a_token_in_the_path_never_reaches_the_row_or_the_exports(tmp_path: Path, sync_writes: bool) -> None:
    from flask_usage_otel.cli import usage

    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}")
    app = secrets_app({"TRACK_USAGE_SYNC_WRITES": sync_writes})
    track = TrackUsage(app, storage, registry=CollectorRegistry())
    assert app.test_client().get(f"/reset/{TOKEN}?next=/home").status_code == 200
    assert track.flush()
    (row,) = storage.read_usage()
    assert row["path"] == "/reset/REDACTED"
    assert row["url"] == "http://localhost/reset/REDACTED?next=/home"
    assert row["view_args"] == {"token": "REDACTED"}
    assert row["route"] == "/reset/<token>"
    (legacy,) = storage.get_usage()
    runner = app.test_cli_runner()
    outputs = [runner.invoke(usage, ["export", "--format", fmt]).output for fmt in ("csv", "json", "jsonl")]
    outputs.append(runner.invoke(usage, ["summary", "--by", "url", "--format", "csv"]).output)
    assert all("REDACTED" in output for output in outputs)
    assert not any(TOKEN in text for text in (repr(row), repr(legacy), *outputs))


def test_case_insensitive_names_path_converters_and_odd_characters() -> None:
    storage = ListStorage()
    app = secrets_app()
    TrackUsage(app, storage, registry=CollectorRegistry())
    client = app.test_client()
    assert client.get("/files/" + ODD_TOKEN.replace("%", "%25") + "/report.pdf").status_code == 200
    assert client.get("/items/ABC-123").status_code == 200
    signed, item = storage.records
    assert signed.view_args == {"Signature": "REDACTED", "name": "report.pdf"}
    assert signed.path == "/files/REDACTED/report.pdf"
    assert "/files/REDACTED/report.pdf" in signed.url
    assert "a%20b" not in signed.url
    # <code> is not in the default list: a product code stays (a secret one can be listed).
    assert (item.path, item.view_args) == ("/items/ABC-123", {"code": "ABC-123"})


def test_the_list_is_configurable_and_checked_at_init_app() -> None:
    storage = ListStorage()
    app = secrets_app({"TRACK_USAGE_REDACT_VIEW_ARGS": ["code"]})
    TrackUsage(app, storage, registry=CollectorRegistry())
    app.test_client().get("/items/ABC-123")
    app.test_client().get(f"/reset/{TOKEN}")
    item, reset = storage.records
    assert (item.path, item.view_args) == ("/items/REDACTED", {"code": "REDACTED"})
    assert reset.path == f"/reset/{TOKEN}", "only the listed names"
    for bad in ("token", ["ok", ""], ["a-b"], [3]):
        bad_app = Flask("bad")
        bad_app.config["TRACK_USAGE_REDACT_VIEW_ARGS"] = bad
        with pytest.raises(ConfigError, match="TRACK_USAGE_REDACT_VIEW_ARGS"):
            TrackUsage(bad_app, registry=CollectorRegistry())


def test_read_before_the_apps_own_preprocessor_pops_it() -> None:
    storage = ListStorage()
    app = secrets_app()

    @app.url_value_preprocessor
    def take_token(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if values:
            values.pop("token", None)

    TrackUsage(app, storage, registry=CollectorRegistry())
    app.test_client().get(f"/reset/{TOKEN}")
    (record,) = storage.records
    assert record.path == "/reset/REDACTED"
    assert TOKEN not in repr(record)


def test_the_span_and_the_log_record_hold_no_token() -> None:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    app = secrets_app({"TRACK_USAGE_OTEL": True, "TRACK_USAGE_OTEL_LOGS": True})
    track = TrackUsage(
        app, registry=CollectorRegistry(), tracer_provider=tracer_provider, logger_provider=logger_provider
    )
    app.test_client().get(f"/reset/{TOKEN}")
    assert track.flush()
    (span,) = spans.get_finished_spans()
    assert span.name == "GET /reset/<token>"
    assert span.attributes["url.path"] == "/reset/REDACTED"
    (log,) = logs.get_finished_logs()
    attributes = dict(log.log_record.attributes)
    assert attributes["url.path"] == "/reset/REDACTED"
    assert TOKEN not in repr(dict(span.attributes)) + repr(attributes) + repr(log.log_record.body)


def test_the_instrumentors_span_is_scrubbed_too() -> None:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    app = secrets_app({"TRACK_USAGE_OTEL": True})
    FlaskInstrumentor.instrument_app(app, tracer_provider=tracer_provider)
    try:
        TrackUsage(app, registry=CollectorRegistry(), tracer_provider=tracer_provider)
        assert app.test_client().get(f"/reset/{TOKEN}?a=1").status_code == 200
    finally:
        FlaskInstrumentor.uninstrument_app(app)
    (span,) = spans.get_finished_spans()
    assert TOKEN not in repr(dict(span.attributes))
    assert span.attributes["url.path"] == "/reset/REDACTED"


@pytest.mark.parametrize(
    ("text", "secrets", "redacted"),
    [
        ("/reset/abc", ["abc"], "/reset/REDACTED"),
        ("http://h/a%20b/x", ["a b"], "http://h/REDACTED/x"),
        ("/f/a%2Fb", ["a/b"], "/f/REDACTED"),
        ("/reset/abc", [""], "/reset/abc"),  # an empty value hides nothing and replaces nothing
        ("/x", [], "/x"),
    ],
)
def test_redact_secrets(text: str, secrets: list[str], redacted: str) -> None:
    assert redact_secrets(text, [("token", secret) for secret in secrets]) == redacted
