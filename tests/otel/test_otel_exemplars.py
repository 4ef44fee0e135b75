"""Prometheus observations of a sampled request carry its trace and span ids as exemplars."""

from __future__ import annotations

import re

from otel_helpers import only_server_span

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
EXEMPLAR_RE = re.compile(r'^(\S+)\{([^}]*)\} \S+ # \{span_id="([0-9a-f]{16})",trace_id="([0-9a-f]{32})"\}')


def exemplars(text: str) -> dict[str, tuple[str, str]]:
    """metric sample name (with labels) -> (trace_id, span_id) of its exemplar."""
    found = {}
    for line in text.splitlines():
        match = EXEMPLAR_RE.match(line)
        if match:
            name, labels, span_id, trace_id = match.groups()
            found[f"{name}{{{labels}}}"] = (trace_id, span_id)
    return found


def test_exemplars_match_the_exported_span(make_app, exporter):
    app, _ = make_app()
    client = app.test_client()
    client.get("/items/4")
    span = only_server_span(exporter)
    ids = (format(span.context.trace_id, "032x"), format(span.context.span_id, "016x"))

    response = client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert response.mimetype == "application/openmetrics-text"
    found = exemplars(response.text)
    counter = 'flask_usage_requests_total{blueprint="",method="GET",route="/items/<int:item_id>",status="200"}'
    assert found[counter] == ids
    buckets = [name for name in found if name.startswith("flask_usage_request_duration_seconds_bucket{")]
    assert len(buckets) == 1  # one observation: one bucket holds its exemplar
    assert found[buckets[0]] == ids


def test_latest_request_replaces_the_exemplar(make_app, exporter):
    app, _ = make_app()
    client = app.test_client()
    client.get("/items/1")
    client.get("/items/2")
    latest = exporter.get_finished_spans()[-1]
    found = exemplars(client.get("/metrics", headers={"Accept": OPENMETRICS}).text)
    counter = 'flask_usage_requests_total{blueprint="",method="GET",route="/items/<int:item_id>",status="200"}'
    assert found[counter][0] == format(latest.context.trace_id, "032x")


def test_plain_text_format_has_no_exemplars(make_app, exporter):
    app, _ = make_app()
    client = app.test_client()
    client.get("/items/1")
    text = client.get("/metrics").text
    assert "flask_usage_requests_total" in text
    assert "trace_id" not in text


def test_no_exemplars_without_otel(make_app, exporter):
    app, _ = make_app({"TRACK_USAGE_OTEL": False})
    client = app.test_client()
    client.get("/items/1")
    text = client.get("/metrics", headers={"Accept": OPENMETRICS}).text
    assert "flask_usage_requests_total" in text
    assert exemplars(text) == {}
