"""Every storage through the front door: ``TrackUsage``, real requests, the real background writer,
real databases. What a storage's ``store`` receives, and what a broken storage costs."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, g
from prometheus_client import CollectorRegistry

from flask_usage_otel import PartitionedSQLStorage, SQLStorage, TrackUsage, UsageRecord
from flask_usage_otel.record import CapturedRequest
from flask_usage_otel.storage.sink import StorageSink
from tests.conftest import DownStorage
from tests.storage.conftest import POSTGRES_URL, drop_table, require_server, unique_table

WAIT = 30.0
REQUESTS = 60


def tracked_app(storage: Any, **config: Any) -> tuple[Flask, TrackUsage, CollectorRegistry]:
    app = Flask("front_door")
    app.config.update(TRACK_USAGE_OTEL=False, TRACK_USAGE_FLUSH_INTERVAL=0.05, **config)
    registry = CollectorRegistry()
    tracker = TrackUsage(app, storage, registry=registry)

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> str:
        g.track_var["item"] = item_id
        return "ok"

    return app, tracker, registry


def send(app: Flask, count: int = REQUESTS) -> None:
    client = app.test_client()
    for i in range(count):
        assert client.get(f"/items/{i}").status_code == 200


def dropped(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("flask_usage_storage_dropped_total", {"reason": reason}) or 0.0


def stored_paths(storage: SQLStorage) -> list[str]:
    with storage.engine.connect() as conn:
        return sorted(conn.execute(sa.select(storage.table.c.path)).scalars())


@pytest.fixture
def partitioned() -> Iterator[PartitionedSQLStorage]:
    require_server("postgresql", 5432)
    storage = PartitionedSQLStorage(POSTGRES_URL, table_name=unique_table())
    try:
        yield storage
    finally:
        drop_table(storage.engine, storage.table.name)
        storage.engine.dispose()


@pytest.mark.integration
def test_a_partitioned_table_gets_every_request(partitioned: PartitionedSQLStorage) -> None:
    app, tracker, registry = tracked_app(partitioned)
    send(app)
    with app.app_context():
        assert tracker.flush(WAIT)
        rows = tracker.read_usage(limit=REQUESTS + 1)
    assert sorted(row["path"] for row in rows) == sorted(f"/items/{i}" for i in range(REQUESTS))
    assert {row["track_var"]["item"] for row in rows} == set(range(REQUESTS))
    assert registry.get_sample_value("flask_usage_storage_rows_written_total") == REQUESTS
    assert registry.get_sample_value("flask_usage_storage_rows_dropped_total") == 0


class RecordingStorage(SQLStorage):
    """A user's subclass that looks at what it is given before writing it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[type] = []

    def store(self, records: Sequence[UsageRecord]) -> None:
        self.seen.extend(type(record) for record in records)
        super().store(records)


@pytest.mark.parametrize("sync_writes", [False, True])
def test_a_subclass_that_overrides_store_receives_records(db_url: str, table_name: str, sync_writes: bool) -> None:
    storage = RecordingStorage(db_url, table_name=table_name)
    try:
        app, tracker, _ = tracked_app(storage, TRACK_USAGE_SYNC_WRITES=sync_writes)
        send(app)
        with app.app_context():
            assert tracker.flush(WAIT)
        assert storage.seen == [UsageRecord] * REQUESTS
        assert stored_paths(storage) == sorted(f"/items/{i}" for i in range(REQUESTS))
    finally:
        drop_table(storage.engine, table_name)
        storage.engine.dispose()


class BrokenStorage(SQLStorage):
    """A subclass with a bug: every batch fails before the database sees it."""

    def store(self, records: Sequence[UsageRecord]) -> None:
        for record in records:
            record.timestmap  # noqa: B018 - the typo is the bug
        super().store(records)


def test_a_storage_that_fails_every_batch_with_a_bug_is_counted_and_logged_once(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    storage = BrokenStorage(f"sqlite:///{tmp_path / 'usage.db'}")
    app, tracker, registry = tracked_app(storage)
    with caplog.at_level(logging.WARNING, logger="flask_usage_otel"):
        for _ in range(3):
            send(app, 20)
            with app.app_context():
                assert not tracker.flush(WAIT)  # it did not write what it was given: no success
    assert dropped(registry, "storage_error") == 60
    assert dropped(registry, "unserialisable") == 0
    assert registry.get_sample_value("flask_usage_storage_rows_written_total") == 0
    tracebacks = [r for r in caplog.records if r.exc_info and "storage_error" in r.getMessage()]
    assert len(tracebacks) == 1
    assert tracebacks[0].exc_info[0] is AttributeError  # type: ignore[index]


def queue_of(tracker: TrackUsage, app: Flask) -> Any:
    [sink] = [s for s in tracker._trackers[app].sinks if isinstance(s, StorageSink)]
    return sink.writer


def test_the_queue_holds_one_type_and_bounds_what_the_app_stores() -> None:
    """20 KB in g.track_var per request: the byte bound counts it, whatever the app stores."""
    app = Flask("bytes")
    app.config.update(TRACK_USAGE_OTEL=False, TRACK_USAGE_QUEUE_BYTES=2 * 1024 * 1024, TRACK_USAGE_FLUSH_INTERVAL=600)
    tracker = TrackUsage(app, DownStorage(), registry=CollectorRegistry())
    payloads = {
        "text": lambda: "x" * 20_000,
        "bytes": lambda: b"y" * 20_000,
        "list": lambda: ["z" * 100] * 200,
        "nested": lambda: {"a": {"b": ["w" * 1000] * 20}},
    }

    @app.route("/<kind>")
    def fill(kind: str) -> str:
        g.track_var["payload"] = payloads[kind]()
        return "ok"

    client = app.test_client()
    writer = queue_of(tracker, app)
    try:
        for kind in payloads:
            for _ in range(200):
                client.get(f"/{kind}")
        items = list(writer._queue)
        assert {type(item) for item in items} == {CapturedRequest}
        # Each row holds at least 20,000 characters: no more rows than the bound allows ...
        assert len(items) <= 2 * 1024 * 1024 // 20_000
        # ... and what the writer counts is at least what they hold.
        assert writer.queued_bytes >= 20_000 * len(items)
        assert writer.dropped["queue_full"] == 4 * 200 - writer.queued
    finally:
        writer.shutdown(0.1)


def test_the_byte_budget_is_given_back_after_each_write(tmp_path: Any) -> None:
    """Three times the queue's byte bound, written through a healthy database: nothing dropped."""
    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}")
    app, tracker, registry = tracked_app(storage, TRACK_USAGE_QUEUE_BYTES=64 * 1024, TRACK_USAGE_BATCH_SIZE=10)
    client = app.test_client()
    for i in range(3 * 64):  # each request holds over 1 KB: three budgets' worth in all
        assert client.get(f"/items/{i}").status_code == 200
        if i % 10 == 9:
            with app.app_context():
                assert tracker.flush(WAIT)
    with app.app_context():
        assert tracker.flush(WAIT)
    assert dropped(registry, "queue_full") == 0
    assert registry.get_sample_value("flask_usage_storage_rows_written_total") == 3 * 64
    assert queue_of(tracker, app).queued_bytes == 0


def test_old_batch_ids_go_with_a_short_lived_writer_and_with_every_prune(db_url: str, table_name: str) -> None:
    """Recycled workers live minutes: each writer prunes with its first batch, and so does prune()."""
    from datetime import datetime, timedelta, timezone

    storage = SQLStorage(db_url, table_name=table_name)
    try:
        storage.create_table()
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        with storage.engine.begin() as conn:
            conn.execute(
                storage.batches.insert(),
                [{"batch_id": f"old{i:029d}", "written_at": now - timedelta(days=3)} for i in range(1000)]
                + [{"batch_id": "fresh", "written_at": now - timedelta(hours=2)}],
            )

        def ids() -> set[str]:
            with storage.engine.connect() as conn:
                return set(conn.execute(sa.select(storage.batches.c.batch_id)).scalars())

        app, tracker, _ = tracked_app(storage)
        send(app, 3)
        with app.app_context():
            assert tracker.flush(WAIT)
        remaining = ids()
        assert not any(batch_id.startswith("old") for batch_id in remaining)
        assert "fresh" in remaining  # kept a day
        assert len(remaining) >= 2  # and the new batch's own id

        with storage.engine.begin() as conn:
            conn.execute(storage.batches.insert(), [{"batch_id": "old-again", "written_at": now - timedelta(days=2)}])
        storage.prune(older_than=timedelta(days=365))
        assert "old-again" not in ids()
    finally:
        drop_table(storage.engine, table_name)
        storage.engine.dispose()


class OwnStorage:
    """An app's own storage, no SQLAlchemy, with a bug: it reads a record as the dict it is not."""

    def store(self, records: Sequence[UsageRecord]) -> None:
        print([record["path"] for record in records])

    def get_usage(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return []


def test_an_own_storage_with_a_bug_is_not_retried_forever_but_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A storage that says nothing of its errors: a programming error is no database to wait for."""
    app, tracker, registry = tracked_app(OwnStorage())
    with caplog.at_level(logging.WARNING, logger="flask_usage_otel"):
        send(app, 30)
        with app.app_context():
            assert not tracker.flush(WAIT)
    assert dropped(registry, "storage_error") == 30
    assert registry.get_sample_value("flask_usage_storage_write_errors_total") >= 1
    tracebacks = [r for r in caplog.records if r.exc_info and "storage_error" in r.getMessage()]
    assert [r.exc_info[0] for r in tracebacks] == [TypeError]  # type: ignore[index]


def test_with_synchronous_writes_a_storage_losing_a_record_costs_that_record_only() -> None:
    """TRACK_USAGE_SYNC_WRITES: a Flask-Track-Usage storage that raises loses its record, counted; the
    response is unaffected."""
    seen: list[str] = []

    def flaky(data: dict[str, Any]) -> None:
        if data["path"] == "/items/1":
            raise RuntimeError("disk full")
        seen.append(data["path"])

    app, _, registry = tracked_app(flaky, TRACK_USAGE_SYNC_WRITES=True)
    send(app, 3)
    assert seen == ["/items/0", "/items/2"]
    assert dropped(registry, "storage_error") == 1
    assert registry.get_sample_value("flask_usage_storage_rows_written_total") == 2


def test_with_synchronous_writes_a_storage_that_raises_costs_each_record_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TRACK_USAGE_SYNC_WRITES and a SQLStorage subclass whose store() has a bug: every record is counted
    as storage_error, the traceback is logged, and every response is unaffected."""

    class Buggy(SQLStorage):
        def store(self, records: Any) -> int:
            raise TypeError("a bug in store()")

    app, _, registry = tracked_app(Buggy(f"sqlite:///{tmp_path / 'buggy.db'}"), TRACK_USAGE_SYNC_WRITES=True)
    with caplog.at_level(logging.ERROR, logger="flask_usage_otel"):
        send(app, 5)
    assert dropped(registry, "storage_error") == 5
    assert registry.get_sample_value("flask_usage_tracking_errors_total", {"component": "storage"}) == 5
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [TypeError]  # type: ignore[index]


def test_headers_captured_for_log_records_never_reach_a_row(
    storage: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRACK_USAGE_OTEL_LOGS_HEADERS beside a SQL storage: the log records carry the headers, no row holds one."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-marker-.*")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "x-marker-.*")
    logs = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    app = Flask("headers_front_door")
    app.config.update(TRACK_USAGE_OTEL=False, TRACK_USAGE_OTEL_LOGS=True, TRACK_USAGE_OTEL_LOGS_HEADERS=True)
    app.config.update(TRACK_USAGE_FLUSH_INTERVAL=0.05)

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> tuple[str, dict[str, str]]:
        return "ok", {"X-Marker-Out": f"marker-out-{item_id}"}

    tracker = TrackUsage(app, storage, registry=CollectorRegistry(), logger_provider=provider)
    client = app.test_client()
    for i in range(5):
        assert client.get(f"/items/{i}", headers={"X-Marker-In": f"marker-in-{i}"}).status_code == 200
    with app.app_context():
        assert tracker.flush(WAIT)
    attributes = [dict(log.log_record.attributes) for log in logs.get_finished_logs()]
    assert sorted(a["http.request.header.x-marker-in"] for a in attributes) == [(f"marker-in-{i}",) for i in range(5)]
    assert sorted(a["http.response.header.x-marker-out"] for a in attributes) == [
        (f"marker-out-{i}",) for i in range(5)
    ]
    assert "headers" not in storage.table.columns
    with storage.engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(sa.select(storage.table)).mappings()]
    assert len(rows) == 5
    assert "marker" not in repr(rows)
