"""The database drivers' internals (internals.py): SQLAlchemy's pool hooks for the shared in-memory
SQLite database, and PyMySQL's socket for the write deadline. Each fallback does the same job."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import SQLStorage, TrackUsage, internals
from flask_usage_otel.storage.sink import StorageSink


def warnings_of(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "flask_usage_otel" and r.levelno == logging.WARNING and text in r.message
    ]


@pytest.fixture(params=["fast", "fallback"])
def memory_pool(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[str]:
    monkeypatch.setattr(internals, "_memory_pool", [None])
    if request.param == "fallback":

        def renamed() -> None:
            raise AttributeError("StaticPool has no attribute '_do_get'")

        monkeypatch.setattr(internals, "check_exclusive_pool", renamed)
    with caplog.at_level(logging.WARNING, "flask_usage_otel"):
        yield request.param


def test_the_fast_pool_passes_its_check_here() -> None:
    internals.check_exclusive_pool()
    internals.check_pymysql_socket()


def test_the_shared_in_memory_database_keeps_every_row_while_readers_read(
    memory_pool: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Through TrackUsage and the real writer: a reader's rollback never discards the writer's batch."""
    storage = SQLStorage("sqlite://")
    app = Flask(f"memory_{memory_pool}")
    app.config.update(TRACK_USAGE_OTEL=False, TRACK_USAGE_BATCH_SIZE=7, TRACK_USAGE_FLUSH_INTERVAL=0.01)
    tracker = TrackUsage(app, storage, registry=CollectorRegistry())

    @app.route("/r/<int:n>")
    def page(n: int) -> str:
        return "ok"

    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            storage.get_usage(limit=5)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    client = app.test_client()
    try:
        for n in range(300):
            assert client.get(f"/r/{n}").status_code == 200
            if n % 50 == 0:
                time.sleep(0.005)
        with app.app_context():
            assert tracker.flush(30)
    finally:
        stop.set()
        for reader in readers:
            reader.join(10)
    with storage.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(storage.table)).scalar() == 300
    assert len(warnings_of(caplog, "_do_get")) == (1 if memory_pool == "fallback" else 0)
    [sink] = [s for s in tracker._trackers[app].sinks if isinstance(s, StorageSink)]
    sink.writer.shutdown(5)


@pytest.mark.integration
def test_without_the_socket_a_silent_mariadb_is_still_given_up_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The watchdog cannot cut the socket then: PyMySQL's own read timeout (statement_timeout) ends the call,
    later than the write deadline would have."""
    from tests.integration.tcp_proxy import TcpProxy
    from tests.storage.conftest import MARIADB_URL, drop_table, require_server, unique_table

    require_server("mariadb", 3306)
    monkeypatch.setattr(internals, "_socket_reader", [None])

    def renamed(read: Any = None) -> None:
        raise AttributeError("Connection has no _sock")

    monkeypatch.setattr(internals, "check_pymysql_socket", renamed)
    table = unique_table()
    with TcpProxy(3306) as proxy, caplog.at_level(logging.WARNING, "flask_usage_otel"):
        url = sa.make_url(MARIADB_URL).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        # An engine of the app's own: no server-side session limits of ours, only PyMySQL's read timeout.
        engine = sa.create_engine(url, connect_args={"connect_timeout": 2, "read_timeout": 6, "write_timeout": 6})
        storage = SQLStorage(engine=engine, table_name=table, write_timeout=2)
        app = Flask("mariadb_socket")
        app.config.update(TRACK_USAGE_OTEL=False, TRACK_USAGE_BATCH_SIZE=10, TRACK_USAGE_FLUSH_INTERVAL=0.05)
        tracker = TrackUsage(app, storage, registry=CollectorRegistry())
        [sink] = [s for s in tracker._trackers[app].sinks if isinstance(s, StorageSink)]
        sink.writer.max_backoff = 0.3

        @app.route("/hit/<int:n>")
        def hit(n: int) -> str:
            return "ok"

        client = app.test_client()
        try:
            for n in range(10):
                client.get(f"/hit/{n}")
            assert sink.writer.flush(20)
            proxy.mode = "blackhole"
            for n in range(10, 30):
                client.get(f"/hit/{n}")
            deadline = time.monotonic() + 15
            while sink.writer.write_errors == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sink.writer.write_errors > 0  # the stuck attempt was given up
            proxy.mode = "pass"
            assert sink.writer.flush(30)
            with storage.engine.connect() as conn:
                assert conn.execute(sa.select(sa.func.count()).select_from(storage.table)).scalar() == 30
            assert len(warnings_of(caplog, "_sock")) == 1, caplog.text
        finally:
            sink.writer.shutdown(5)
            storage.engine.dispose()
            drop_table(sa.create_engine(MARIADB_URL), table)
