"""The server span of a tracked request: name, kind, attributes, nesting, status, errors."""

from __future__ import annotations

import time

import pytest
from flask import Blueprint, Flask, Response, g, stream_with_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode
from otel_helpers import only_server_span
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from tests.conftest import ListStorage

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


def test_route_span_name_kind_and_attributes(make_app, exporter):
    app, _ = make_app()
    response = app.test_client().get(
        "/items/7?page=2", headers={"User-Agent": "probe/1.0", "Host": "shop.example:8443"}
    )
    assert response.status_code == 200

    span = only_server_span(exporter)
    assert span.name == "GET /items/<int:item_id>"
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes) == {
        "http.request.method": "GET",
        "http.route": "/items/<int:item_id>",
        "flask.endpoint": "item",
        "url.path": "/items/7",
        "url.scheme": "http",
        "url.query": "page=2",
        "server.address": "shop.example",
        "server.port": 8443,
        "client.address": "127.0.0.1",
        "user_agent.original": "probe/1.0",
        "network.protocol.version": "1.1",
        "http.response.status_code": 200,
    }
    assert span.instrumentation_scope.name == "flask_usage_otel"


def test_blueprint_ipv6_host_and_no_query(tracer_provider, registry, exporter):
    app = Flask(__name__)
    shop = Blueprint("shop", __name__, url_prefix="/shop")

    @shop.post("/cart")
    def cart() -> str:
        return "added"

    app.register_blueprint(shop)
    TrackUsage(app, registry=registry, tracer_provider=tracer_provider)
    app.test_client().post("/shop/cart", headers={"Host": "[::1]:5000"}, base_url="https://[::1]:5000")

    attributes = only_server_span(exporter).attributes
    assert attributes["flask.blueprint"] == "shop"
    assert attributes["flask.endpoint"] == "shop.cart"
    assert attributes["http.route"] == "/shop/cart"
    assert attributes["url.scheme"] == "https"
    assert (attributes["server.address"], attributes["server.port"]) == ("::1", 5000)
    assert "url.query" not in attributes


def test_default_port_follows_scheme(make_app, exporter):
    app, _ = make_app()
    app.test_client().get("/items/1", base_url="https://secure.example")
    attributes = only_server_span(exporter).attributes
    assert (attributes["server.address"], attributes["server.port"]) == ("secure.example", 443)


def test_each_host_and_scheme_of_a_route_has_its_own_server_attributes(make_app, exporter):
    app, _ = make_app()
    client = app.test_client()
    client.get("/items/1", headers={"Host": "a.example:8080"})
    client.get("/items/2", headers={"Host": "b.example"}, base_url="https://b.example")
    client.get("/items/3", headers={"Host": "a.example:8080"})

    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    seen = [
        (
            s.attributes["url.path"],
            s.attributes["url.scheme"],
            s.attributes["server.address"],
            s.attributes["server.port"],
        )
        for s in spans
    ]
    assert seen == [
        ("/items/1", "http", "a.example", 8080),
        ("/items/2", "https", "b.example", 443),
        ("/items/3", "http", "a.example", 8080),
    ]


def test_without_a_host_header_the_server_name_is_read_per_request(make_app, exporter):
    """SERVER_NAME and SERVER_PORT are the WSGI server's, not part of any cache key: never reused."""
    from werkzeug.test import EnvironBuilder

    app, _ = make_app()
    for name, port in (("first.internal", "8001"), ("second.internal", "8002")):
        environ = EnvironBuilder(path="/items/1").get_environ()
        del environ["HTTP_HOST"]
        environ.update(SERVER_NAME=name, SERVER_PORT=port)
        body = app(environ, lambda *args: None)
        b"".join(body)
        body.close()

    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert [(s.attributes["server.address"], s.attributes["server.port"]) for s in spans] == [
        ("first.internal", 8001),
        ("second.internal", 8002),
    ]


def test_spans_of_the_view_nest_under_the_server_span(make_app, exporter):
    app, _ = make_app()
    app.test_client().get("/items/1")

    server = only_server_span(exporter)
    (child,) = [s for s in exporter.get_finished_spans() if s.name == "load item"]
    assert child.parent is not None
    assert child.parent.span_id == server.context.span_id
    assert child.context.trace_id == server.context.trace_id
    assert server.parent is None


def test_an_outer_span_that_is_not_a_server_span_is_the_parent(make_app, exporter, tracer_provider):
    """A layer outside the app (a middleware's INTERNAL span) made its span current: ours nests under it."""
    app, _ = make_app()
    inner = app.wsgi_app
    outer_tracer = tracer_provider.get_tracer("outer")

    def middleware(environ, start_response):
        with outer_tracer.start_as_current_span("outer"):
            return inner(environ, start_response)

    app.wsgi_app = middleware
    app.test_client().get("/items/1")

    server = only_server_span(exporter)
    (outer,) = [s for s in exporter.get_finished_spans() if s.name == "outer"]
    assert server.parent is not None
    assert server.parent.span_id == outer.context.span_id
    assert server.context.trace_id == outer.context.trace_id


def test_sampled_flag_is_the_sdk_flag():
    from opentelemetry.trace import TraceFlags

    from flask_usage_otel.otel.sink import _SAMPLED

    assert _SAMPLED == TraceFlags.SAMPLED


def test_context_is_detached_after_the_request(make_app, exporter):
    from opentelemetry import trace

    app, _ = make_app()
    app.test_client().get("/items/1")
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_4xx_is_not_an_error_5xx_is(make_app, exporter):
    app, _ = make_app()
    client = app.test_client()
    client.get("/items/not-a-number")
    client.get("/unavailable")

    not_found, unavailable = exporter.get_finished_spans()
    assert not_found.status.status_code is StatusCode.UNSET
    assert "error.type" not in not_found.attributes
    assert unavailable.status.status_code is StatusCode.ERROR
    assert unavailable.attributes["error.type"] == "503"
    assert unavailable.attributes["http.response.status_code"] == 503


def test_exception_is_recorded_as_an_event(make_app, exporter):
    app, _ = make_app()
    app.logger.disabled = True
    assert app.test_client().get("/boom").status_code == 500

    span = only_server_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "ValueError"
    assert span.attributes["http.response.status_code"] == 500
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "broken view"


def test_exception_propagated_in_testing_mode_still_ends_the_span(make_app, exporter):
    app, _ = make_app({"TESTING": True})
    with pytest.raises(ValueError, match="broken view"):
        app.test_client().get("/boom")
    span = only_server_span(exporter)
    assert span.end_time is not None
    assert span.attributes["error.type"] == "ValueError"
    assert [e.name for e in span.events] == ["exception"]


def test_unmatched_paths_are_named_by_method_only(make_app, exporter):
    app, _ = make_app()
    client = app.test_client()
    assert client.get("/no/such/page/4711").status_code == 404
    assert client.post("/items/1").status_code == 405

    not_found, not_allowed = exporter.get_finished_spans()
    assert not_found.name == "GET"
    assert not_allowed.name == "POST"
    for span in (not_found, not_allowed):
        assert "http.route" not in span.attributes
        assert "flask.endpoint" not in span.attributes
    assert not_found.attributes["url.path"] == "/no/such/page/4711"


def test_unknown_method_is_other(make_app, exporter):
    app, _ = make_app()
    assert app.test_client().open("/items/1", method="BREW").status_code == 405

    span = only_server_span(exporter)
    assert span.name == "HTTP"
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "BREW"


def test_known_method_has_no_original(make_app, exporter):
    app, _ = make_app()
    app.test_client().get("/items/1")
    assert "http.request.method_original" not in only_server_span(exporter).attributes


def test_excluded_views_paths_and_metrics_make_no_span(make_app, exporter):
    app, t = make_app({"TRACK_USAGE_EXCLUDE_PATHS": [r"/items/9\d*"]}, track=False)

    @app.get("/health")
    @t.exclude
    def health() -> str:
        return "ok"

    t.init_app(app)
    client = app.test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/items/99").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert [s.name for s in exporter.get_finished_spans()] == ["load item"]  # the view's own span only
    client.get("/items/1")
    assert only_server_span(exporter).name == "GET /items/<int:item_id>"


def test_streamed_response_span_lasts_until_the_body_is_closed(make_app, exporter):
    app, _ = make_app()

    @app.get("/stream")
    def stream() -> Response:
        def chunks():
            yield "one\n"
            yield "two\n"

        return Response(stream_with_context(chunks()), mimetype="text/plain")

    response = app.test_client().get("/stream", buffered=False)
    assert response.status_code == 200
    assert exporter.get_finished_spans() == ()  # the view returned, the body is not sent yet
    chunks = iter(response.response)
    assert next(chunks) == b"one\n"
    assert exporter.get_finished_spans() == ()  # half the body is sent
    before_rest = time.time_ns()
    assert list(chunks) == [b"two\n"]
    response.close()

    span = only_server_span(exporter)
    assert span.name == "GET /stream"
    assert span.end_time >= before_rest


def test_incoming_traceparent_is_the_parent(make_app, exporter):
    app, _ = make_app()
    app.test_client().get(
        "/items/1",
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=value"},
    )
    span = only_server_span(exporter)
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert span.parent.is_remote
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.context.trace_state.get("vendor") == "value"


def test_record_carries_the_span_ids(make_app, exporter):
    storage = ListStorage()
    app, t = make_app({"TRACK_USAGE_SYNC_WRITES": True}, storage=storage)
    app.test_client().get("/items/3")
    with app.app_context():
        t.flush()

    span = only_server_span(exporter)
    (record,) = storage.records
    assert record.trace_id == format(span.context.trace_id, "032x")
    assert record.span_id == format(span.context.span_id, "016x")


def test_unsampled_request_has_no_ids(registry):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    storage = ListStorage()
    app = Flask(__name__)
    app.config["TRACK_USAGE_SYNC_WRITES"] = True
    app.add_url_rule("/", "index", lambda: "ok")
    t = TrackUsage(app, storage, registry=registry, tracer_provider=provider)
    app.test_client().get("/")
    with app.app_context():
        t.flush()

    assert exporter.get_finished_spans() == ()
    (record,) = storage.records
    assert (record.trace_id, record.span_id) == (None, None)


def test_enduser_id_only_when_asked_for(make_app, exporter):
    def capture_user() -> str:
        return "user-42"

    app, _ = make_app({"TRACK_USAGE_CAPTURE_USER": capture_user})
    app.test_client().get("/items/1")
    assert "enduser.id" not in only_server_span(exporter).attributes

    exporter.clear()
    app, _ = make_app(
        {"TRACK_USAGE_CAPTURE_USER": capture_user, "TRACK_USAGE_OTEL_CAPTURE_USER": True},
        registry=CollectorRegistry(),
    )
    app.test_client().get("/items/1")
    assert only_server_span(exporter).attributes["enduser.id"] == "user-42"


def test_a_user_on_spans_reads_the_user_without_capturing_the_request(make_app, exporter):
    """Spans only, with enduser.id: the user is read, the request is not captured (g.track_var untouched)."""
    converted: list[str] = []

    class Noted:
        def __str__(self) -> str:  # called when g.track_var is made plain data
            converted.append("str")
            return "noted"

    app, tracker = make_app({"TRACK_USAGE_CAPTURE_USER": lambda: "user-7", "TRACK_USAGE_OTEL_CAPTURE_USER": True})

    @app.get("/noted")
    def noted() -> str:
        g.track_var["noted"] = Noted()
        return "ok"

    assert [s.name for s in tracker._trackers[app].sinks] == ["otel", "prometheus"]
    assert app.test_client().get("/noted").status_code == 200
    assert only_server_span(exporter).attributes["enduser.id"] == "user-7"
    assert converted == []  # nothing consumes the whole request: it is never captured


def test_otel_off_makes_no_span(make_app, exporter):
    app, _ = make_app({"TRACK_USAGE_OTEL": False})
    assert app.test_client().get("/items/1").status_code == 200
    assert [s.name for s in exporter.get_finished_spans()] == ["load item"]


def test_span_names_are_cached_per_route_not_per_path(make_app, exporter):
    app, _ = make_app()
    client = app.test_client()
    for item_id in range(5):
        client.get(f"/items/{item_id}")
    sink = app.extensions["track_usage"]._trackers[app].sinks[0]
    assert sink.name == "otel"
    assert len(sink._endpoints) == 1
    assert {s.name for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER} == {"GET /items/<int:item_id>"}


def test_span_covers_everything_flask_does_with_the_request(make_app, exporter):
    app, _ = make_app()

    @app.url_value_preprocessor
    def slow_preprocessor(endpoint, values):
        time.sleep(0.05)  # runs before any before_request hook

    @app.teardown_request
    def slow_teardown(exc):
        time.sleep(0.05)

    before = time.time_ns()
    app.test_client().get("/items/1")
    after = time.time_ns()
    span = only_server_span(exporter)
    assert before <= span.start_time <= span.end_time <= after
    assert span.end_time - span.start_time >= 100_000_000, "both the preprocessor and the teardown are inside"
    (child,) = [s for s in exporter.get_finished_spans() if s.name == "load item"]
    assert child.parent.span_id == span.context.span_id


def test_odd_protocol_spelling_is_other_on_the_span(make_app, exporter):
    app, _ = make_app()
    app.test_client().get("/items/1", environ_overrides={"SERVER_PROTOCOL": "HTTP/1.7"})
    assert only_server_span(exporter).attributes["network.protocol.version"] == "_OTHER"


def test_a_queued_row_keeps_no_span_or_context_alive(make_app, exporter):
    import gc
    import weakref

    from opentelemetry import trace

    spans: list[weakref.ref[object]] = []
    storage = ListStorage()
    app, track = make_app({"TRACK_USAGE_FLUSH_INTERVAL": 3600, "TRACK_USAGE_BATCH_SIZE": 100}, storage=storage)

    @app.after_request
    def remember(response: Response) -> Response:
        spans.append(weakref.ref(trace.get_current_span()))
        return response

    for _ in range(3):
        assert app.test_client().get("/items/7").status_code == 200
    gc.collect()
    assert storage.records == [], "the rows are still queued"
    assert len(exporter.get_finished_spans()) == 6
    assert [ref() for ref in spans] == [None, None, None], "a queued row must not hold its request's span"
    assert track.flush()
    assert [r.trace_id for r in storage.records] == [
        s.context.trace_id.to_bytes(16).hex() for s in exporter.get_finished_spans() if s.name.startswith("GET")
    ]
