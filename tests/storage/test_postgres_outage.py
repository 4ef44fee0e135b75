"""PostgreSQL becomes unreachable while requests flow (a TCP proxy in front of it refuses and resets every
connection, as a stopped server does): every request succeeds, and once it is reachable again every row
that was not counted as dropped arrives exactly once. The shared server itself is never stopped."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import sqlalchemy as sa
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.storage.sink import StorageSink
from flask_usage_otel.storage.sql import SQLStorage
from tests.integration.tcp_proxy import TcpProxy

from .conftest import POSTGRES_URL, drop_table, require_server, unique_table

pytestmark = pytest.mark.integration

THREADS = 4
REQUESTS_PER_THREAD = 100


def send(app: Flask, first: int, count: int, statuses: list[int]) -> None:
    client = app.test_client()
    for n in range(first, first + count):
        statuses.append(client.get(f"/hit/{n}").status_code)


def test_rows_survive_a_postgres_outage_exactly_once() -> None:
    require_server("postgresql", 5432)
    table = unique_table()
    with TcpProxy(5432) as proxy:
        url = sa.make_url(POSTGRES_URL).set(port=proxy.port).render_as_string(hide_password=False)
        storage = SQLStorage(url, table_name=table, connect_timeout=2, write_timeout=5)
        storage.create_table()
        app = Flask("outage")
        app.config.update(TRACK_USAGE_BATCH_SIZE=20, TRACK_USAGE_FLUSH_INTERVAL=0.05, TRACK_USAGE_QUEUE_SIZE=250)

        @app.route("/hit/<int:n>")
        def hit(n: int) -> str:
            return "ok"

        registry = CollectorRegistry()
        tracker = TrackUsage(app, storage=storage, registry=registry)
        [sink] = [s for s in tracker._trackers[app].sinks if isinstance(s, StorageSink)]
        writer = sink.writer
        assert writer is not None
        writer.max_backoff = 0.5  # recover quickly once the database is back
        statuses: list[int] = []
        try:
            send(app, 0, 50, statuses)  # warm up with the database up
            assert writer.flush(10)
            proxy.mode = "down"
            threads = [
                threading.Thread(target=send, args=(app, 1000 * (t + 1), REQUESTS_PER_THREAD, statuses))
                for t in range(THREADS)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert statuses == [200] * (50 + THREADS * REQUESTS_PER_THREAD)  # the app never noticed
            # It really was down: the writer tried and failed (it may not have run yet, so wait, bounded).
            deadline = time.monotonic() + 15
            while writer.write_errors == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert writer.write_errors > 0
        finally:
            proxy.mode = "pass"
        try:
            assert writer.flush(60)
            with storage.engine.connect() as conn:
                paths = [p for (p,) in conn.execute(sa.select(storage.table.c.path))]
            copies = Counter(paths)
            assert [path for path, n in copies.items() if n > 1] == []  # no row twice
            total = len(statuses)
            assert len(paths) == total - writer.rows_dropped
            assert writer.rows_dropped > 0  # the queue (250) filled up while 400 requests came in
            assert writer.dropped["queue_full"] == writer.rows_dropped
            assert registry.get_sample_value("flask_usage_storage_rows_dropped_total") == writer.rows_dropped
            assert registry.get_sample_value("flask_usage_storage_rows_written_total") == len(paths)
        finally:
            writer.shutdown(5)
            drop_table(storage.engine, table)
            storage.engine.dispose()
