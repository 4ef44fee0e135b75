"""Secrets in URL paths (``/reset/<token>``): redacted in rows, exports, spans and log records."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote

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

    @app.get("/activate/<uuid:token>")
    def activate(token: Any) -> str:
        return "activated"

    @app.get("/confirm/<token>/")
    def confirm(token: str) -> str:
        return "confirmed"

    @app.get("/otp/<int:otp>")
    def one_time(otp: int) -> str:
        return "ok"

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


# -- neighbouring forms: the value as the client spelled it, in all seven places ---------------

UUID_TEXT = "ABCDEF01-2345-6789-ABCD-EF0123456789"  # what the client sent; str(UUID(...)) is lower case


# (request target as sent, status, the secret's decoded text, the path once redacted)
NEIGHBOURS = {
    "as the view argument": (f"/reset/{TOKEN}?next=/home", 200, TOKEN, "/reset/REDACTED"),
    "upper-case uuid": (f"/activate/{UUID_TEXT}?a=1", 200, UUID_TEXT, "/activate/REDACTED"),
    "lower-case percent-encoding": ("/reset/tok%2bx%3d?a=1", 200, "tok+x=", "/reset/REDACTED"),
    "405 on a GET-only route": (f"/reset/{TOKEN}?a=1", 405, TOKEN, "/reset/REDACTED"),
    "308 to the trailing slash": (f"/confirm/{TOKEN}?a=1", 308, TOKEN, "/confirm/REDACTED"),
    "405 with a converted value": (f"/activate/{UUID_TEXT}", 405, UUID_TEXT, "/activate/REDACTED"),
    "int with leading zeros": ("/otp/0077", 200, "0077", "/otp/REDACTED"),
    "308 to the merged slashes": (f"/reset//{TOKEN}", 308, TOKEN, "/reset//REDACTED"),
}


def _request(app: Flask, target: str, status: int) -> None:
    client = app.test_client()
    response = client.post(target) if status == 405 else client.get(target)
    assert response.status_code == status


def _places_of_our_span_rows_and_log_records(tmp_path: Path, target: str, status: int) -> dict[str, str]:
    """Row path and url, the CSV export, our span's url.path, the log record's url.path and url.full."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from flask_usage_otel.cli import usage

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}")
    app = secrets_app({"TRACK_USAGE_OTEL": True, "TRACK_USAGE_OTEL_LOGS": True})
    track = TrackUsage(
        app, storage, registry=CollectorRegistry(), tracer_provider=tracer_provider, logger_provider=logger_provider
    )
    _request(app, target, status)
    assert track.flush()
    (row,) = storage.read_usage()
    (span,) = spans.get_finished_spans()
    (log,) = logs.get_finished_logs()
    log_attributes = dict(log.log_record.attributes)
    return {
        "row path": row["path"],
        "row url": row["url"],
        "csv export": app.test_cli_runner().invoke(usage, ["export", "--format", "csv"]).output,
        "span url.path": span.attributes["url.path"],
        "log url.path": log_attributes["url.path"],
        "log url.full": log_attributes["url.full"],
        "every span attribute": repr(dict(span.attributes)),
        "every log attribute": repr(log_attributes),
    }


def _places_of_the_instrumentors_span(target: str, status: int) -> dict[str, str]:
    """The instrumentor's ``http.target`` (the request target as sent) and its span's other attributes."""
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
        _request(app, target, status)
    finally:
        FlaskInstrumentor.uninstrument_app(app)
    (span,) = spans.get_finished_spans()
    attributes = dict(span.attributes)
    return {"http.target": attributes["http.target"], "every instrumented span attribute": repr(attributes)}


@pytest.mark.parametrize("form", NEIGHBOURS)
def test_every_neighbouring_form_is_redacted_in_all_seven_places(tmp_path: Path, form: str) -> None:
    target, status, secret, redacted_path = NEIGHBOURS[form]
    places = _places_of_our_span_rows_and_log_records(tmp_path, target, status)
    places.update(_places_of_the_instrumentors_span(target, status))
    for place, text in places.items():
        # Every spelling: percent-encoded or not, either case.
        assert secret.lower() not in unquote(text).lower(), f"{place} holds the secret: {text!r}"
        assert redacted_path in text, f"{place}: {text!r}"
    assert places["row path"] == places["span url.path"] == places["log url.path"] == redacted_path
    assert places["http.target"].startswith(redacted_path)


def test_apps_without_secret_variables_look_nothing_up() -> None:
    storage = ListStorage()
    app = Flask("plain")
    app.config["TRACK_USAGE_SYNC_WRITES"] = True
    app.add_url_rule("/items/<code>", "item", lambda code: code)
    track = TrackUsage(app, storage, registry=CollectorRegistry())
    app.test_client().get("/items/tok")
    app.test_client().post("/items/tok")
    tracker = track._trackers[app]
    assert {info.secrets for info in tracker.endpoints.values()} == {None}
    assert [record.path for record in storage.records] == ["/items/tok", "/items/tok"]


def test_secret_variables_are_read_from_every_rule_of_the_endpoint() -> None:
    storage = ListStorage()
    app = Flask("invites")
    app.config["TRACK_USAGE_SYNC_WRITES"] = True

    @app.get("/invite/<token>")
    @app.get("/invite/<group>/<member>")  # registered first: the endpoint's first rule has no secret
    def invite(token: str | None = None, group: str | None = None, member: str | None = None) -> str:
        return "invited"

    assert [rule.rule for rule in app.url_map.iter_rules("invite")] == ["/invite/<group>/<member>", "/invite/<token>"]
    TrackUsage(app, storage, registry=CollectorRegistry())
    client = app.test_client()
    assert client.get("/invite/staff/bob").status_code == 200
    assert client.get(f"/invite/{TOKEN}").status_code == 200
    assert client.get("/invite/staff/bob").status_code == 200
    first, second, third = storage.records
    assert (first.path, first.view_args) == ("/invite/staff/bob", {"group": "staff", "member": "bob"})
    assert (second.path, second.view_args) == ("/invite/REDACTED", {"token": "REDACTED"})
    assert third.path == "/invite/staff/bob"
