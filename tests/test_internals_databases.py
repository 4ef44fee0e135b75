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
