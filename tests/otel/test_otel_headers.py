"""Header capture by the OTel variables, and request/response hooks, compared with what
opentelemetry-instrumentation-flask does on the same requests."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, Response
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otel_helpers import only_server_span
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage

REQUEST_HEADERS = {
    "X-Request-Id": "req-1",
    "X-Custom-Secret": "s3cret",
    "X-Custom-Plain": "plain",
    "Accept": "text/html",
    "Authorization": "Bearer abc",
    "Cookie": "session=xyz",  # sent as is by a client without a cookie jar (use_cookies=False)
}


def _app(name: str) -> Flask:
    app = Flask(name)

    @app.get("/page")
    def page() -> Response:
        response = Response("hello", content_type="text/plain")
        response.headers["X-Response-Id"] = "resp-9"
        response.headers.add("X-Response-Multi", "a")
        response.headers.add("X-Response-Multi", "b")
        response.headers["Set-Cookie"] = "session=new"
        return response

    @app.after_request
    def late_header(response: Response) -> Response:  # added after the view: still seen
        response.headers["X-Response-Late"] = "late"
        return response

    return app


def _pair(**hooks: Any) -> tuple[Flask, InMemorySpanExporter, Flask, InMemorySpanExporter, CollectorRegistry]:
    ours, theirs = InMemorySpanExporter(), InMemorySpanExporter()
    tracked, instrumented = _app("ours"), _app("theirs")
    provider, their_provider = TracerProvider(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ours))
    their_provider.add_span_processor(SimpleSpanProcessor(theirs))
    registry = CollectorRegistry()
    TrackUsage(tracked, registry=registry, tracer_provider=provider, **hooks)
    FlaskInstrumentor().instrument_app(instrumented, tracer_provider=their_provider, **hooks)
    return tracked, ours, instrumented, theirs, registry


@pytest.fixture
def capture_env(monkeypatch) -> None:
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
        "X-Request-Id, x-custom-.*, Authorization, Cookie, content-type",
    )
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "x-response-.*,Set-Cookie,Content-Type"
    )
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "secret")


def _underscored(key: str) -> str:
    """The instrumentor's name of one of our header attributes."""
    prefix, _, name = key.rpartition(".")
    return f"{prefix}.{name.replace('-', '_')}"


def _headers(span: Any) -> dict[str, Any]:
    prefixes = ("http.request.header.", "http.response.header.")
    return {key: list(value) for key, value in span.attributes.items() if key.startswith(prefixes)}


def test_headers_are_captured_as_the_instrumentor_captures_them(capture_env) -> None:
    tracked, ours, instrumented, theirs, _ = _pair()
    try:
        for app in (tracked, instrumented):
            response = app.test_client().post("/page", data="x=1")  # 405: headers of an error response too
            assert response.status_code == 405
            assert (
                app.test_client(use_cookies=False)
                .get("/page", headers=REQUEST_HEADERS, content_type="text/csv")
                .status_code
                == 200
            )
    finally:
        FlaskInstrumentor().uninstrument_app(instrumented)
    ours_spans = [s for s in ours.get_finished_spans()]
    theirs_spans = [s for s in theirs.get_finished_spans()]
    for our_span, their_span in zip(ours_spans, theirs_spans, strict=True):
        mine, instrumentor = _headers(our_span), _headers(their_span)
        # Named as the conventions say (dashes kept); the instrumentor writes underscores.
        assert all("_" not in key.rpartition(".")[2] for key in mine)
        renamed = {_underscored(key): value for key, value in mine.items()}
        differences = {k for k in renamed.keys() | instrumentor.keys() if renamed.get(k) != instrumentor.get(k)}
        # Credentials are never stored as sent; Content-Type is a request header the instrumentor cannot see.
        assert differences <= {
            "http.request.header.authorization",
            "http.request.header.cookie",
            "http.request.header.content_type",
            "http.response.header.set_cookie",
        }
    page = mine
    assert page["http.request.header.x-request-id"] == ["req-1"]
    assert page["http.request.header.x-custom-secret"] == ["[REDACTED]"]
    assert page["http.request.header.x-custom-plain"] == ["plain"]
    assert page["http.request.header.content-type"] == ["text/csv"]
    assert "http.request.header.accept" not in page
    for credential in ("authorization", "cookie"):
        assert page[f"http.request.header.{credential}"] == ["[REDACTED]"]
    assert page["http.response.header.set-cookie"] == ["[REDACTED]"]
    assert instrumentor["http.request.header.authorization"] == ["Bearer abc"]  # theirs keeps it as sent
    assert instrumentor["http.request.header.cookie"] == ["session=xyz"]
    assert page["http.response.header.x-response-multi"] == ["a,b"]
    assert page["http.response.header.x-response-late"] == ["late"]
    assert page["http.response.header.content-type"] == ["text/plain"]


def test_plain_names_and_patterns_capture_the_same(monkeypatch) -> None:
    captured = []
    for value in ("X-Request-Id,X-Custom-Plain", "x-request-id|X-CUSTOM-PLAIN"):
        monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", value)
        tracked, ours, instrumented, _, _ = _pair()
        FlaskInstrumentor().uninstrument_app(instrumented)
        tracked.test_client().get("/page", headers=REQUEST_HEADERS)
        captured.append(_headers(only_server_span(ours)))
    assert (
        captured[0]
        == captured[1]
        == {
            "http.request.header.x-request-id": ["req-1"],
            "http.request.header.x-custom-plain": ["plain"],
        }
    )


def test_hooks_get_what_the_instrumentors_hooks_get() -> None:
    calls: dict[str, list[tuple[Any, ...]]] = {"request": [], "response": []}

    def request_hook(span: Any, environ: dict[str, Any]) -> None:
        calls["request"].append((span.is_recording(), environ["PATH_INFO"], environ["REQUEST_METHOD"]))
        span.set_attribute("app.tenant", environ.get("HTTP_X_TENANT", "none"))

    def response_hook(span: Any, status: str, response_headers: list[tuple[str, str]]) -> None:
        calls["response"].append((span.is_recording(), status, sorted(response_headers)))
        span.set_attribute("app.response_id", dict(response_headers).get("X-Response-Id", ""))

    tracked, ours, instrumented, theirs, _ = _pair(request_hook=request_hook, response_hook=response_hook)
    try:
        for app in (tracked, instrumented):
            app.test_client().get("/page", headers={"X-Tenant": "acme"})
    finally:
        FlaskInstrumentor().uninstrument_app(instrumented)
    assert calls["request"][0] == calls["request"][1] == (True, "/page", "GET")
    assert calls["response"][0] == calls["response"][1]
    assert calls["response"][0][1] == "200 OK"
    for exporter in (ours, theirs):
        span = only_server_span(exporter)
        assert span.attributes["app.tenant"] == "acme"
        assert span.attributes["app.response_id"] == "resp-9"


@pytest.mark.parametrize("which", ["request_hook", "response_hook"])
def test_a_raising_hook_costs_a_counted_error_never_the_response(which, caplog) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("hook bug")

    tracked, ours, instrumented, _, registry = _pair(**{which: broken})
    FlaskInstrumentor().uninstrument_app(instrumented)
    client = tracked.test_client()
    for _ in range(2):
        response = client.get("/page")
        assert (response.status_code, response.data) == (200, b"hello")
    assert len(ours.get_finished_spans()) == 2  # the spans still end
    assert registry.get_sample_value("flask_usage_tracking_errors_total", {"component": "otel"}) == 2
    assert "hook bug" in caplog.text


def test_captured_forwarding_headers_are_anonymized_like_the_client_address(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "X-Forwarded-For,X-Request-Id")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = _app("anonymized")
    app.config["TRACK_USAGE_ANONYMIZE_IP"] = "truncate"
    TrackUsage(app, registry=CollectorRegistry(), tracer_provider=provider)
    app.test_client().get("/page", headers={"X-Forwarded-For": "203.0.113.77, 10.1.2.3", "X-Request-Id": "r-1"})
    headers = _headers(only_server_span(exporter))
    assert headers["http.request.header.x-request-id"] == ["r-1"]
    (forwarded,) = headers["http.request.header.x-forwarded-for"]
    assert "203.0.113.77" not in forwarded
    assert "10.1.2.3" not in forwarded
    assert forwarded.startswith("203.0.113.0")
