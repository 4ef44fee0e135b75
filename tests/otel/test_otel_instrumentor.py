"""With opentelemetry-instrumentation-flask on the same app: still one SERVER span per request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.trace import SpanKind, StatusCode
from otel_helpers import server_spans

from tests.conftest import ListStorage


@pytest.fixture(params=["instrumented-before-init_app", "instrumented-after-init_app"])
def instrumented(request, make_app, tracer_provider) -> Iterator[tuple]:
    storage = ListStorage()
    before = request.param == "instrumented-before-init_app"
    app, t = make_app({"TRACK_USAGE_SYNC_WRITES": True}, track=False, storage=storage)
    if before:
        FlaskInstrumentor().instrument_app(app, tracer_provider=tracer_provider)
        t.init_app(app)
    else:
        t.init_app(app)
        FlaskInstrumentor().instrument_app(app, tracer_provider=tracer_provider)
    assert app._is_instrumented_by_opentelemetry
    yield app, t, storage
    FlaskInstrumentor().uninstrument_app(app)


def test_one_server_span_per_request_with_our_attributes(instrumented, exporter):
    app, _, _ = instrumented
    client = app.test_client()
    assert client.get("/items/5?x=1").status_code == 200
    assert client.get("/no/such/page").status_code == 404

    item, not_found = server_spans(exporter)
    assert len(exporter.get_finished_spans()) == 3  # two server spans and the view's child
    assert item.instrumentation_scope.name == "opentelemetry.instrumentation.flask"
    assert item.name == "GET /items/<int:item_id>"
    for key, value in {
        "http.request.method": "GET",
        "http.route": "/items/<int:item_id>",
        "flask.endpoint": "item",
        "url.path": "/items/5",
        "url.query": "x=1",
        "http.response.status_code": 200,
    }.items():
        assert item.attributes[key] == value
    assert not_found.name == "GET"
    assert not_found.attributes["http.response.status_code"] == 404


def test_view_spans_nest_under_the_single_server_span(instrumented, exporter):
    app, _, _ = instrumented
    app.test_client().get("/items/1")
    (server,) = server_spans(exporter)
    (child,) = [s for s in exporter.get_finished_spans() if s.kind is not SpanKind.SERVER]
    assert child.parent.span_id == server.context.span_id


def test_record_ids_point_at_the_instrumentor_span(instrumented, exporter):
    app, t, storage = instrumented
    app.test_client().get("/items/2")
    with app.app_context():
        t.flush()
    (server,) = server_spans(exporter)
    (record,) = storage.records
    assert record.trace_id == format(server.context.trace_id, "032x")
    assert record.span_id == format(server.context.span_id, "016x")


def test_errors_on_the_single_server_span(instrumented, exporter):
    app, _, _ = instrumented
    app.logger.disabled = True
    client = app.test_client()
    client.get("/boom")
    client.get("/unavailable")

    boom, unavailable = server_spans(exporter)
    assert boom.status.status_code is StatusCode.ERROR
    assert boom.attributes["error.type"] == "ValueError"
    assert unavailable.status.status_code is StatusCode.ERROR
    assert unavailable.attributes["error.type"] == "503"


def test_uninstrumented_app_gets_our_span_again(instrumented, exporter, tracer_provider):
    app, _, _ = instrumented
    FlaskInstrumentor().uninstrument_app(app)
    # uninstrument_app puts back the wsgi_app it saw: when that was before init_app, the
    # first request finds the tracking's wrapper gone and puts it back for the next ones.
    app.test_client().get("/items/1")
    exporter.clear()
    app.test_client().get("/items/1")
    (server,) = server_spans(exporter)
    assert server.instrumentation_scope.name == "flask_usage_otel"


def test_outer_wsgi_server_span_is_enriched_not_duplicated(make_app, exporter, tracer_provider):
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    app, _ = make_app()
    app.wsgi_app = OpenTelemetryMiddleware(app.wsgi_app, tracer_provider=tracer_provider)
    app.test_client().get("/items/8")
    app.test_client().get("/unavailable")

    item, unavailable = server_spans(exporter)
    assert item.instrumentation_scope.name == "opentelemetry.instrumentation.wsgi"
    assert item.name == "GET /items/<int:item_id>"
    assert item.attributes["flask.endpoint"] == "item"
    assert item.attributes["http.response.status_code"] == 200
    (child,) = [s for s in exporter.get_finished_spans() if s.kind is not SpanKind.SERVER]
    assert child.parent.span_id == item.context.span_id
    assert unavailable.status.status_code is StatusCode.ERROR
    assert unavailable.attributes["error.type"] == "503"
