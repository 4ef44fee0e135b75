"""PostgreSQL stops while requests flow: every request succeeds, and after the restart every row that
was not counted as dropped arrives exactly once."""

from __future__ import annotations

import subprocess
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

from .conftest import POSTGRES_URL, drop_table, port_open, postgres_cluster, require_server, unique_table, wait_port

pytestmark = pytest.mark.integration

THREADS = 4
REQUESTS_PER_THREAD = 100


def pg_ctl(action: str) -> None:
    cluster = postgres_cluster()
    assert cluster is not None, "no PostgreSQL cluster under /etc/postgresql"
    args = ["pg_ctlcluster", "--skip-systemctl-redirect", cluster[0], cluster[1], action]
    if action == "stop":
        args += ["-m", "fast"]
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def send(app: Flask, first: int, count: int, statuses: list[int]) -> None:
    client = app.test_client()
    for n in range(first, first + count):
        statuses.append(client.get(f"/hit/{n}").status_code)


def test_rows_survive_a_postgres_restart_exactly_once() -> None:
    require_server("postgresql", 5432)
    if postgres_cluster() is None:
        pytest.skip("no Debian PostgreSQL cluster to stop and start")
    table = unique_table()
    storage = SQLStorage(POSTGRES_URL, table_name=table)
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
        pg_ctl("stop")
        assert not port_open(5432)
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
        pg_ctl("start")
        assert wait_port(5432), "PostgreSQL did not come back"
    try:
        assert writer.flush(60)
        with storage.engine.connect() as conn:
            paths = [p for (p,) in conn.execute(sa.select(storage.table.c.path))]
        copies = Counter(paths)
        assert [path for path, n in copies.items() if n > 1] == []  # no row twice
        total = len(statuses)
        assert len(paths) == total - writer.rows_dropped
        assert writer.rows_dropped > 0  # the queue (250) filled up while 400 requests came in
        assert registry.get_sample_value("flask_usage_storage_rows_dropped_total") == writer.rows_dropped
        assert registry.get_sample_value("flask_usage_storage_rows_written_total") == len(paths)
    finally:
        writer.shutdown(5)
        drop_table(storage.engine, table)
        storage.engine.dispose()
