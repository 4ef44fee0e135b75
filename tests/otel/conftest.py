"""Fixtures for the OpenTelemetry tests: a fresh SDK tracer provider and registry per test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def make_app(tracer_provider: TracerProvider, registry: CollectorRegistry) -> Callable[..., tuple[Flask, TrackUsage]]:
    """A small app with a few views, tracked with the test's provider and registry."""

    def make(config: dict[str, Any] | None = None, track: bool = True, **track_kwargs: Any) -> tuple[Flask, TrackUsage]:
        app = Flask("otel_test")
        app.config.update(config or {})
        tracer = tracer_provider.get_tracer("view")

        @app.get("/items/<int:item_id>")
        def item(item_id: int) -> str:
            with tracer.start_as_current_span("load item"):
                return f"item {item_id}"

        @app.get("/unavailable")
        def unavailable() -> tuple[str, int]:
            return "busy", 503

        @app.get("/boom")
        def boom() -> str:
            raise ValueError("broken view")

        track_kwargs.setdefault("registry", registry)
        track_kwargs.setdefault("tracer_provider", tracer_provider)
        t = TrackUsage(app if track else None, **track_kwargs)
        return app, t

    return make
