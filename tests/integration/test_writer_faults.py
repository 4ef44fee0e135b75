"""The SQL writer under real faults, on real PostgreSQL and MariaDB servers behind a TCP proxy the test steers.

For every fault: rows in the table + rows counted as dropped = requests sent, no row twice, and the
writer recovers by itself once the fault ends. The shared servers are never stopped or reconfigured:
the proxy breaks the path, and a role or user of the test's own is made read-only or loses its rights.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.storage.sink import StorageSink
from flask_usage_otel.storage.sql import SQLStorage
from flask_usage_otel.writer import BatchWriter
from tests.integration.tcp_proxy import TcpProxy
from tests.storage.conftest import MARIADB_URL, POSTGRES_URL, drop_table, require_server, unique_table

pytestmark = pytest.mark.integration

SERVERS = {"postgresql": (POSTGRES_URL, 5432), "mariadb": (MARIADB_URL, 3306)}
FAST = {
    "TRACK_USAGE_BATCH_SIZE": 10,
    "TRACK_USAGE_FLUSH_INTERVAL": 0.05,
    "TRACK_USAGE_BATCH_LINGER": 0.01,
    "TRACK_USAGE_QUEUE_SIZE": 5000,
}


@dataclass
class Rig:
    """An app tracked into a storage whose connections go through ``proxy`` (None: straight to the server)."""

    app: Flask
    storage: SQLStorage
    writer: BatchWriter
    registry: CollectorRegistry
    direct: sa.Engine
    proxy: TcpProxy | None
    sent: int = 0

    def send(self, count: int) -> None:
        client = self.app.test_client()
        for _ in range(count):
            assert client.get(f"/hit/{self.sent}").status_code == 200
            self.sent += 1

    def paths(self) -> Counter[str]:
        with self.direct.connect() as conn:
            rows = conn.execute(sa.select(self.storage.table.c.path)).scalars().all()
        return Counter(rows)

    def assert_every_request_accounted_for(self) -> Counter[str]:
        paths = self.paths()
        assert [p for p, n in paths.items() if n > 1] == []  # no row twice
        assert len(paths) + self.writer.rows_dropped == self.sent
        assert self.registry.get_sample_value("flask_usage_storage_rows_written_total") == self.writer.rows_written
        return paths


def via(url: str, port: int) -> str:
    return sa.make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


@pytest.fixture(params=["postgresql", "mariadb"])
def server(request: pytest.FixtureRequest) -> tuple[str, str, int]:
    name = request.param
    url, port = SERVERS[name]
    require_server(name, port)
    return name, url, port


def make_rig(url: str, proxy: TcpProxy | None, table: str, **storage_options: Any) -> Rig:
    options: dict[str, Any] = {"connect_timeout": 2, "statement_timeout": 2, "write_timeout": 2}
    options.update(storage_options)
    storage = SQLStorage(via(url, proxy.port) if proxy else url, table_name=table, **options)
    app = Flask(f"faults_{table}")
    app.config.update(FAST)

    @app.route("/hit/<int:n>")
    def hit(n: int) -> str:
        return "ok"

    registry = CollectorRegistry()
    tracker = TrackUsage(app, storage=storage, registry=registry)
    [sink] = [s for s in tracker._trackers[app].sinks if isinstance(s, StorageSink)]
    assert sink.writer is not None
    sink.writer.max_backoff = 0.3  # recover quickly once the fault ends
    return Rig(app, storage, sink.writer, registry, sa.create_engine(url), proxy)


@pytest.fixture
def rig(server: tuple[str, str, int]) -> Iterator[Rig]:
    _, url, port = server
    table = unique_table()
    with TcpProxy(port) as proxy:
        made = make_rig(url, proxy, table)
        try:
            yield made
        finally:
            made.writer.shutdown(5)
            made.storage.engine.dispose()
            drop_table(made.direct, table)
            drop_table(made.direct, made.storage.batches.name)
            made.direct.dispose()


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# What the server says once it has committed, where a client sends COMMIT in one query with the
# statements before it (PostgreSQL's COPY path): the answer thrown away must be this one. MariaDB's one
# query (mysql_batch) loses its first answer: the server still runs the query to its COMMIT, though the
# connection was reset (and a later answer, such as the seven zero bytes of COMMIT's OK packet, could
# be a pooled connection's ROLLBACK instead, which fails no write).
COMMITTED = {"postgresql": b"COMMIT\x00", "mariadb": None}


def test_a_commit_whose_answer_is_lost_is_not_written_twice(rig: Rig, server: tuple[str, str, int]) -> None:
    assert rig.proxy is not None
    rig.send(30)
    assert rig.writer.flush(20)
    for cut in range(1, 4):
        rig.proxy.cut_after_commit(COMMITTED[server[0]])
        rig.send(20)
        wait_for(lambda cut=cut: rig.proxy is not None and rig.proxy.cuts == cut, 10, "a COMMIT's answer to be cut")
    assert rig.writer.flush(30)
    assert rig.proxy.cuts == 3
    assert rig.writer.write_errors >= 3  # each cut COMMIT failed on the client side and was retried
    paths = rig.assert_every_request_accounted_for()
    assert len(paths) == rig.sent == 90
    assert rig.writer.rows_dropped == 0


def test_a_silent_network_is_abandoned_at_the_deadline_and_retried(rig: Rig) -> None:
    assert rig.proxy is not None
    rig.send(20)
    assert rig.writer.flush(20)
    rig.proxy.mode = "blackhole"
    started = time.monotonic()
    rig.send(30)
    # The attempt hangs on a connection that never answers: it must be given up within the deadlines.
    wait_for(lambda: rig.writer.write_errors > 0, 15, "the stuck attempt to be abandoned")
    abandoned_after = time.monotonic() - started
    rig.proxy.mode = "pass"
    assert rig.writer.flush(30)
    paths = rig.assert_every_request_accounted_for()
    assert len(paths) == 50
    assert rig.writer.rows_dropped == 0
    assert abandoned_after < 10
    print(f"\nsilent network: attempt abandoned after {abandoned_after:.1f} s, {rig.writer.write_timeouts} timeouts")


def test_a_session_silent_inside_its_transaction_does_not_stall_the_writer(rig: Rig) -> None:
    """The batch id's INSERT reaches the server, then the connection goes silent (neither closed nor
    reset). On MariaDB the server holds that session, in its transaction, with the id's lock: the
    retries must not wait behind it for the server's TCP keepalive (hours), so the server gives up on
    the abandoned transaction within about the writer's deadline. On PostgreSQL the id's INSERT
    travels in one query with the COPY and runs after the rows: the silent session waits for rows
    without holding the id's lock. Either way every row arrives once."""
    assert rig.proxy is not None
    rig.send(10)
    assert rig.writer.flush(20)
    rig.proxy.silence_after(rig.storage.batches.name.encode())
    started = time.monotonic()
    rig.send(40)
    try:
        wait_for(lambda: rig.proxy.silenced == 1, 10, "the batch id's INSERT to reach the server")
        assert rig.writer.flush(30)
        recovered_after = time.monotonic() - started
    finally:
        rig.proxy.reset_all()  # whatever happened, end the silent session: the clean-up needs its locks
    paths = rig.assert_every_request_accounted_for()
    assert len(paths) == 50
    assert rig.writer.rows_dropped == 0
    assert recovered_after < 20  # write_timeout is 2 s here; without server-side limits: 0 rows in 60 s
    errors = rig.writer.write_errors
    print(f"\nsilent session: every row written {recovered_after:.1f} s after, {errors} failed attempts")


def test_connections_reset_under_load_lose_and_duplicate_nothing(rig: Rig) -> None:
    assert rig.proxy is not None
    for _ in range(5):
        rig.send(40)
        time.sleep(0.05)
        rig.proxy.reset_all()
    assert rig.writer.flush(30)
    paths = rig.assert_every_request_accounted_for()
    assert len(paths) == 200
    assert rig.writer.rows_dropped == 0


def test_a_dropped_table_is_created_again(rig: Rig) -> None:
    rig.send(20)
    assert rig.writer.flush(20)
    drop_table(rig.direct, rig.storage.table.name)
    rig.send(30)
    assert rig.writer.flush(30)
    paths = rig.paths()
    assert len(paths) == 30
    assert max(paths.values()) == 1
    assert rig.writer.rows_dropped == 0
    assert rig.writer.write_errors >= 1


def test_a_dropped_table_the_storage_did_not_create_is_retried_until_it_is_back(
    server: tuple[str, str, int],
) -> None:
    _, url, _ = server
    table = unique_table()
    made = make_rig(url, None, table)
    made.storage.create_table()
    made.storage.create_tables = False
    try:
        made.send(10)
        assert made.writer.flush(20)
        drop_table(made.direct, table)
        made.send(15)
        wait_for(lambda: made.writer.write_errors >= 2, 10, "writes to fail on the missing table")
        assert not made.writer.flush(0.2)  # waiting, not dropping
        made.storage.create_table()  # the operator restores it
        assert made.writer.flush(20)
        assert len(made.paths()) == 15
        assert made.writer.rows_dropped == 0
    finally:
        made.writer.shutdown(5)
        drop_table(made.direct, table)
        drop_table(made.direct, made.storage.batches.name)
        made.direct.dispose()
        made.storage.engine.dispose()


@pytest.fixture
def limited_account(server: tuple[str, str, int]) -> Iterator[tuple[str, str, sa.Engine, str]]:
    """A login of the test's own on the server: (server name, its URL, an admin engine, the login name)."""
    name, url, _ = server
    login = f"usage_ro_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if name == "postgresql":
            conn.exec_driver_sql(f"CREATE ROLE {login} LOGIN")
            conn.exec_driver_sql(f"GRANT ALL ON SCHEMA public TO {login}")
        else:
            conn.exec_driver_sql(f"CREATE USER '{login}'@'127.0.0.1'")
            conn.exec_driver_sql(f"CREATE USER '{login}'@'localhost'")
            conn.exec_driver_sql(f"GRANT ALL ON test.* TO '{login}'@'127.0.0.1'")
            conn.exec_driver_sql(f"GRANT ALL ON test.* TO '{login}'@'localhost'")
    user_url = sa.make_url(url).set(username=login, password=None).render_as_string(hide_password=False)
    try:
        yield name, user_url, admin, login
    finally:
        with admin.connect() as conn:
            if name == "postgresql":
                conn.exec_driver_sql(
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{login}'"
                )
                conn.exec_driver_sql(f"DROP OWNED BY {login}")
                conn.exec_driver_sql(f"DROP ROLE IF EXISTS {login}")
            else:
                conn.exec_driver_sql(f"DROP USER IF EXISTS '{login}'@'127.0.0.1'")
                conn.exec_driver_sql(f"DROP USER IF EXISTS '{login}'@'localhost'")
        admin.dispose()


def end_sessions(conn: sa.Connection, login: str) -> None:
    """End the MariaDB sessions of ``login`` (the test's own user)."""
    ids = (
        conn.exec_driver_sql("SELECT id FROM information_schema.processlist WHERE user = %s", (login,)).scalars().all()
    )
    for session in ids:
        conn.exec_driver_sql(f"KILL {int(session)}")


def test_a_read_only_window_delays_rows_and_drops_none(limited_account: tuple[str, str, sa.Engine, str]) -> None:
    """PostgreSQL: the login's sessions become read-only (as on a standby promoted late); MariaDB: the login
    loses INSERT (a server state and a permission, not the rows: both are waited out)."""
    name, url, admin, login = limited_account
    table = unique_table()
    made = make_rig(url, None, table)
    made.direct.dispose()
    made.direct = admin
    try:
        made.send(10)
        assert made.writer.flush(20)
        with admin.connect() as conn:
            if name == "postgresql":
                conn.exec_driver_sql(f"ALTER ROLE {login} SET default_transaction_read_only = on")
                conn.exec_driver_sql(
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{login}'"
                )
            else:
                conn.exec_driver_sql(f"REVOKE INSERT ON test.* FROM '{login}'@'127.0.0.1'")
                conn.exec_driver_sql(f"REVOKE INSERT ON test.* FROM '{login}'@'localhost'")
                end_sessions(conn, login)  # database privileges apply to new sessions
        made.send(40)
        wait_for(lambda: made.writer.write_errors >= 2, 15, "writes to fail while read-only")
        assert made.writer.rows_dropped == 0
        with admin.connect() as conn:
            if name == "postgresql":
                conn.exec_driver_sql(f"ALTER ROLE {login} RESET default_transaction_read_only")
                conn.exec_driver_sql(
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{login}'"
                )
            else:
                conn.exec_driver_sql(f"GRANT INSERT ON test.* TO '{login}'@'127.0.0.1'")
                conn.exec_driver_sql(f"GRANT INSERT ON test.* TO '{login}'@'localhost'")
                end_sessions(conn, login)
        assert made.writer.flush(30)
        paths = made.assert_every_request_accounted_for()
        assert len(paths) == 50
        assert made.writer.rows_dropped == 0
    finally:
        made.writer.shutdown(5)
        made.storage.engine.dispose()
        drop_table(admin, table)
        drop_table(admin, made.storage.batches.name)
