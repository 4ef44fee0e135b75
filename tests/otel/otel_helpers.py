"""Helpers shared by the OpenTelemetry tests."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind


def server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def only_server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = server_spans(exporter)
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]
