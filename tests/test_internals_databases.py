"""A database driver's internals (internals.py): PyMySQL's socket, cut at the write deadline. Its
fallback does the same job, later."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import SQLStorage, TrackUsage, internals
from flask_usage_otel.storage.sink import StorageSink
from flask_usage_otel.writer import Batch
from tests.storage.conftest import POSTGRES_URL, drop_table, make_record, require_server, unique_table
from tests.test_internals import warnings_of


def test_the_fast_path_passes_its_check_here() -> None:
    internals.check_pymysql_socket()


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


# -- psycopg: the error of a failed libpq result ----------------------------------------------


@pytest.mark.integration
def test_psycopg_errors_pass_their_check_here() -> None:
    import psycopg

    require_server("postgresql", 5432)
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test") as raw:
        result = raw.pgconn.exec_(b"SELECT 1/0")
        internals.check_psycopg_error(result, "utf-8")
        assert type(internals._public_psycopg_error(result, "utf-8")).__name__ == "DivisionByZero"


@pytest.mark.integration
@pytest.mark.parametrize("way", ["fast", "public"])
def test_psycopg_error_fallback_refuses_and_retries_rows_as_the_fast_path(
    way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through TrackUsage and the real writer on PostgreSQL: a row the server refuses fails its batch, which
    is then written row by row (the refused one dropped, counted); a retried batch id writes nothing again."""
    require_server("postgresql", 5432)
    maker = internals._psycopg_error if way == "fast" else internals._public_psycopg_error
    monkeypatch.setattr(internals, "_error_maker", [maker])
    storage = SQLStorage(POSTGRES_URL, table_name=unique_table())
    storage.create_table()
    try:
        with storage.engine.begin() as conn:
            conn.exec_driver_sql(f'ALTER TABLE "{storage.table.name}" ADD CONSTRAINT short CHECK (length(path) < 12)')
        app = Flask(f"psycopg_{way}")

        @app.route("/<path:rest>")
        def page(rest: str) -> str:
            return rest

        tracker = TrackUsage(app, storage=storage, registry=CollectorRegistry())
        client = app.test_client()
        for path in ("/ok/1", "/far/too/long/path", "/ok/2"):
            assert client.get(path).status_code == 200
        assert not tracker.flush(10)  # one row was refused: flush does not report success
        with storage.engine.connect() as conn:
            assert sorted(conn.execute(sa.select(storage.table.c.path)).scalars()) == ["/ok/1", "/ok/2"]
        [sink] = [s for s in tracker._trackers[app].sinks if isinstance(s, StorageSink)]
        assert sink.writer.rows_dropped == sink.writer.dropped["rejected"] == 1  # the database's refusal, both ways
        batch = Batch([make_record(path="/again")], batch_id="retried")
        storage.store(batch)
        storage.store(batch)  # committed before: the duplicate batch id is recognised from the result alone
        with storage.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).where(storage.table.c.path == "/again")).scalar() == 1
    finally:
        drop_table(storage.engine, storage.table.name)
        drop_table(storage.engine, storage.batches.name)
        storage.engine.dispose()
