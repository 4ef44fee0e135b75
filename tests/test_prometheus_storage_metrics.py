"""The storage writer's metrics are on /metrics exactly when the app has a storage."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import SQLStorage, TrackUsage
from flask_usage_otel.prometheus.metrics import DROP_REASONS


def scrape(storage: object) -> str:
    app = Flask("storage-metrics")
    app.add_url_rule("/", "index", lambda: "hi")
    TrackUsage(app, storage=storage, registry=CollectorRegistry())  # type: ignore[arg-type]
    client = app.test_client()
    assert client.get("/").status_code == 200
    return client.get("/metrics").get_data(as_text=True)


def test_no_storage_no_storage_metrics() -> None:
    exposition = scrape(None)
    assert "flask_usage_requests_total{" in exposition
    assert "storage" not in exposition


def test_a_storage_has_every_storage_metric_from_the_start(tmp_path: Path) -> None:
    exposition = scrape(SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}"))
    for name in ("storage_queue_rows", "storage_rows_written_total", "storage_write_errors_total"):
        assert f"\nflask_usage_{name} " in exposition, name
    for reason in DROP_REASONS:  # every reason at 0 before anything is dropped: alerts on rate() see them
        assert f'flask_usage_storage_dropped_total{{reason="{reason}"}} 0.0' in exposition
