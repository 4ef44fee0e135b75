"""The queue-depth gauge while the database is down: an operator's alert must see the real depth,
not the depth of the last failed attempt (the writer waits up to 15 s between attempts)."""

from __future__ import annotations

import time

from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.storage.sink import StorageSink
from tests.conftest import DownStorage


def test_the_queue_gauge_follows_the_queue_while_the_writer_waits_to_retry() -> None:
    app = Flask("gauge")
    app.config.update(TRACK_USAGE_OTEL=False, TRACK_USAGE_FLUSH_INTERVAL=0.05, TRACK_USAGE_BATCH_SIZE=10)
    registry = CollectorRegistry()
    tracker = TrackUsage(app, DownStorage(), registry=registry)
    [sink] = [s for s in tracker._trackers[app].sinks if isinstance(s, StorageSink)]
    writer = sink.writer
    writer.min_backoff = writer.max_backoff = 30.0  # every retry far away: only the gauge's own reports remain
    client = app.test_client()

    @app.route("/<int:n>")
    def page(n: int) -> str:
        return "ok"

    def gauge() -> float | None:
        return registry.get_sample_value("flask_usage_storage_queue_rows")

    try:
        for n in range(5):
            client.get(f"/{n}")
        deadline = time.monotonic() + 10
        while writer.write_errors == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.write_errors == 1  # the first attempt failed; the next is 30 s away
        for n in range(5, 200):
            client.get(f"/{n}")
        assert writer.queued == 200
        # Reported at least once a second while the writer waits, not only after its next attempt.
        deadline = time.monotonic() + 3
        while gauge() != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gauge() == 200
        assert writer.write_errors == 1
    finally:
        writer.shutdown(0.1)
