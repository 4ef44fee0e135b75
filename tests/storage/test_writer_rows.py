"""What one row can do to the writer: poisoned values, memory held by the queue, in-memory SQLite, and
flushing several storages when one is stuck."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, g, session
from prometheus_client import CollectorRegistry
from werkzeug.routing import BaseConverter

from flask_usage_otel import TrackUsage
from flask_usage_otel.capture import MAX_DEPTH, Unserialisable, plain
from flask_usage_otel.storage.sink import StorageSink
from flask_usage_otel.storage.sql import SQLStorage
from flask_usage_otel.writer import BatchWriter
from tests.conftest import DownStorage, ListStorage

from .conftest import make_record


class Explodes:
    def __str__(self) -> str:
        raise RuntimeError("no app context")


class ExplodingConverter(BaseConverter):
    def to_python(self, value: str) -> Any:
        return Explodes()


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"d": value}
    return value


def writer_of(tracker: TrackUsage, app: Flask) -> BatchWriter:
    [sink] = [s for s in tracker._trackers[app].sinks if isinstance(s, StorageSink)]
    assert sink.writer is not None
    return sink.writer


def test_poisoned_values_drop_their_own_row_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}")
    app = Flask("poison")
    app.secret_key = "test"
    app.url_map.converters["explodes"] = ExplodingConverter
    app.config.update(TRACK_USAGE_BATCH_SIZE=5, TRACK_USAGE_FLUSH_INTERVAL=0.05)

    @app.route("/ok/<int:n>")
    def ok(n: int) -> str:
        g.track_var = {"when": time}  # a module: made plain as its text
        return "ok"

    @app.route("/deep")
    def deep() -> str:
        g.track_var = {"deep": nested(5000)}  # RecursionError for a naive encoder
        return "ok"

    @app.route("/str-raises")
    def str_raises() -> str:
        g.track_var = {"x": Explodes()}
        return "ok"

    @app.route("/arg/<explodes:thing>")
    def arg(thing: Any) -> str:
        return "ok"

    @app.route("/session")
    def with_session() -> str:
        session["cart"] = [1, 2]
        g.track_var = {"session": session}  # bound to the request context: copied while it exists
        return "ok"

    registry = CollectorRegistry()
    tracker = TrackUsage(app, storage=storage, registry=registry)
    client = app.test_client()
    poisoned = ["/deep", "/str-raises", "/arg/x"]
    with caplog.at_level(logging.WARNING, "flask_usage_otel"):
        for round_ in range(30):
            assert client.get(f"/ok/{round_}").status_code == 200
            assert client.get(poisoned[round_ % 3]).status_code == 200
            assert client.get("/session").status_code == 200
        with app.app_context():
            assert tracker.flush(10)
    writer = writer_of(tracker, app)
    rows = storage.read_usage(limit=1000)
    assert sorted(r["path"] for r in rows) == sorted([f"/ok/{n}" for n in range(30)] + ["/session"] * 30)
    assert writer.dropped["unserialisable"] == 30
    assert writer.rows_dropped == 30
    assert registry.get_sample_value("flask_usage_storage_dropped_total", {"reason": "unserialisable"}) == 30
    assert next(r["track_var"]["session"] for r in rows if r["path"] == "/session") == {"cart": [1, 2]}
    assert caplog.text.count("unserialisable") == 1  # logged once, then only counted
    storage.engine.dispose()


def test_plain_keeps_plain_data_and_refuses_what_cannot_be_made_plain() -> None:
    assert plain({"a": [1, 2.5, None, True], "b": {"c": "d"}}) == {"a": [1, 2.5, None, True], "b": {"c": "d"}}
    assert plain({1: (1, 2), "s": {3}}) == {"1": [1, 2], "s": [3]}
    assert plain(nested(MAX_DEPTH - 1)) == nested(MAX_DEPTH - 1)
    with pytest.raises(Unserialisable):
        plain(nested(MAX_DEPTH + 1))
    with pytest.raises(Unserialisable):
        plain({"x": Explodes()})
    with pytest.raises(Unserialisable):
        plain(list(range(20_000)))


def test_the_queue_is_bounded_in_bytes_and_counts_what_it_drops() -> None:
    writer = BatchWriter(
        DownStorage(),
        queue_size=10_000,
        queue_bytes=1_000_000,
        batch_size=10,
        flush_interval=0.05,
        size_of=lambda item: 9_000,  # rows holding 8 KB headers
    )
    try:
        accepted = sum(writer.put(i) for i in range(1000))
        assert accepted == 1_000_000 // 9_000
        assert writer.dropped["queue_full"] == 1000 - accepted
    finally:
        writer.shutdown(0.2)
    assert writer.rows_dropped == 1000  # what was queued is counted too, as "timeout", at shutdown


def test_queued_bytes_count_the_request_headers(tmp_path: Path) -> None:
    app = Flask("bytes")
    app.config.update(TRACK_USAGE_QUEUE_BYTES=256 * 1024, TRACK_USAGE_FLUSH_INTERVAL=600, TRACK_USAGE_BATCH_SIZE=5000)

    @app.route("/")
    def index() -> str:
        return "ok"

    tracker = TrackUsage(app, storage=DownStorage(), registry=CollectorRegistry())
    client = app.test_client()
    for _ in range(100):
        client.get("/", headers={"User-Agent": "x" * 8192})
    writer = writer_of(tracker, app)
    assert writer.queued <= 256 * 1024 // 8192
    assert writer.dropped["queue_full"] == 100 - writer.queued
    writer.shutdown(0.1)


def test_in_memory_sqlite_keeps_every_row_while_readers_read() -> None:
    storage = SQLStorage("sqlite://")
    storage.create_table()
    writer = BatchWriter(storage, batch_size=7, flush_interval=0.01, linger=0)
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            storage.get_usage(limit=5)  # each read ends with a rollback on the one shared connection

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for i in range(600):
            writer.put(make_record(path=f"/r/{i}"))
            if i % 50 == 0:
                time.sleep(0.005)
        assert writer.flush(30)
    finally:
        stop.set()
        for reader in readers:
            reader.join(10)
        writer.shutdown(5)
    with storage.engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(storage.table)).scalar()
    assert count == writer.rows_written == 600


def test_an_in_memory_engine_with_a_database_per_thread_is_refused() -> None:
    # At init_app, with the writer thread (with TRACK_USAGE_SYNC_WRITES it works: tests/ftu/test_private_names.py).
    with pytest.raises(ValueError, match=r"TRACK_USAGE_SYNC_WRITES: .*in-memory SQLite"):
        TrackUsage(Flask("memory"), SQLStorage(engine=sa.create_engine("sqlite://")), registry=CollectorRegistry())


class BlockedStorage(ListStorage):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def store(self, records: Sequence[Any]) -> None:
        self.release.wait(30)
        super().store(records)


def test_flush_writes_every_storage_even_when_the_first_is_stuck() -> None:
    stuck, healthy = BlockedStorage(), ListStorage()
    app = Flask("two")
    app.config.update(TRACK_USAGE_FLUSH_INTERVAL=600)

    @app.route("/")
    def index() -> str:
        return "ok"

    tracker = TrackUsage(app, storage=[stuck, healthy], registry=CollectorRegistry())
    client = app.test_client()
    for _ in range(20):
        client.get("/")
    try:
        with app.app_context():
            started = time.monotonic()
            assert not tracker.flush(1.0)  # the stuck one cannot finish
            assert time.monotonic() - started < 3
        assert len(healthy.records) == 20  # but the other one was flushed all the same
    finally:
        stuck.release.set()
        with app.app_context():
            assert tracker.flush(10)
    assert len(stuck.records) == 20


def test_caches_keyed_by_raw_headers_do_not_keep_the_headers() -> None:
    import gc
    import tracemalloc

    from flask_usage_otel.privacy import Anonymizer
    from flask_usage_otel.storage.sql_text import language as _language
    from flask_usage_otel.useragent import parse_user_agent

    anonymizer = Anonymizer("hash", b"key")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(500):
            big = f"{i:05d}" + "x" * 8192  # 8 KB headers, each different
            parse_user_agent("Mozilla/5.0 " + big)
            _language("en-GB," + big)
            anonymizer.address(big)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1_000_000, f"{held} bytes kept by the caches after 500 distinct 8 KB headers"


class CountingStorage(ListStorage):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def store(self, records: Sequence[Any]) -> None:
        self.calls += 1
        super().store(records)


@pytest.mark.parametrize(("linger", "most_batches"), [(0.2, 8), (0.0, None)])
def test_trickling_rows_linger_to_fill_a_batch(linger: float, most_batches: int | None) -> None:
    storage = CountingStorage()
    writer = BatchWriter(storage, batch_size=500, flush_interval=0.005, linger=linger)
    try:
        for i in range(40):
            writer.put(i)
            time.sleep(0.01)  # about 100 rows a second
        assert writer.flush(10)
    finally:
        writer.shutdown(5)
    assert len(storage.records) == 40
    if most_batches is not None:
        assert storage.calls <= most_batches  # a few larger transactions
    else:
        assert storage.calls >= 20  # without a linger, nearly one transaction per row


class SlowStorage(CountingStorage):
    def store(self, records: Sequence[Any]) -> None:
        time.sleep(0.015)
        super().store(records)


def test_a_steady_trickle_commits_once_per_interval_not_once_per_linger() -> None:
    # Rows that arrive while a batch is written wait for the next interval: under light steady load
    # the writer makes a few larger transactions (here about one per 0.3 s), not one every 20 ms.
    storage = SlowStorage()  # a write takes a while, as a real database's does: rows arrive during it
    writer = BatchWriter(storage, batch_size=10_000, flush_interval=0.3, linger=0.02)
    try:
        for i in range(240):
            writer.put(i)
            time.sleep(0.005)
        assert writer.flush(10)
    finally:
        writer.shutdown(5)
    assert sorted(storage.records) == list(range(240))
    assert storage.calls <= 12, storage.calls
