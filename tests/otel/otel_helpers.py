"""Helpers shared by the OpenTelemetry tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from flask_usage_otel import UsageRecord


class ListStorage:
    """A storage that keeps records in a list (written synchronously by the storage sink)."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def store(self, records: Sequence[UsageRecord]) -> None:
        self.records.extend(records)

    def get_usage(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return [r.as_dict() for r in reversed(self.records)]


def server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def only_server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = server_spans(exporter)
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]
