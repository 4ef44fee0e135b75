"""``flask usage check`` against real databases: what it says when the database cannot be reached, when the
table is missing or has Flask-Track-Usage's layout, when it cannot write, and when all is well."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import Result
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.cli import usage
from flask_usage_otel.storage.printer import PrintWriter
from flask_usage_otel.storage.sql import SQLStorage

from .conftest import MARIADB_URL, POSTGRES_URL, drop_table, require_server
from .test_sql_storage import legacy_table

SECRET = "pw-" + uuid.uuid4().hex[:10]


def check(storage: Any) -> Result:
    app = Flask(f"check-{uuid.uuid4().hex[:6]}")
    TrackUsage(app, storage=storage, registry=CollectorRegistry())
    return app.test_cli_runner().invoke(usage, ["check"])


def lines(result: Result) -> list[str]:
    return [" ".join(line.split()) for line in result.output.splitlines()]


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:  # bound, never listening: refused, and no one else can take it meanwhile
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "case",
    [
        pytest.param("postgresql-closed-port", marks=pytest.mark.integration),
        pytest.param("postgresql-wrong-database", marks=pytest.mark.integration),
        pytest.param("mariadb-closed-port", marks=pytest.mark.integration),
        "sqlite-missing-directory",
    ],
)
def test_a_database_that_cannot_be_reached_is_named_with_what_to_do(
    case: str, closed_port: int, tmp_path: Path
) -> None:
    if case.startswith("postgresql"):
        require_server("postgresql", 5432)
        url = sa.make_url(POSTGRES_URL).set(password=SECRET)
        url = url.set(port=closed_port) if case.endswith("port") else url.set(database="no_such_db_cli")
    elif case.startswith("mariadb"):
        require_server("mariadb", 3306)
        url = sa.make_url(MARIADB_URL).set(password=SECRET, port=closed_port)
    else:
        url = sa.make_url(f"sqlite:///{tmp_path / 'missing' / 'usage.db'}")
    result = check(SQLStorage(url.render_as_string(hide_password=False), connect_timeout=5))
    assert result.exit_code == 1, result.output
    assert SECRET not in result.output
    said = lines(result)
    assert said[1].startswith("problem cannot connect: OperationalError (")
    expected = {
        "postgresql-closed-port": f"-> nothing answers at 127.0.0.1:{closed_port}: is the database server running",
        "postgresql-wrong-database": "-> the database 'no_such_db_cli' does not exist: create it",
        "mariadb-closed-port": f"-> nothing answers at 127.0.0.1:{closed_port}: is the database server running",
        "sqlite-missing-directory": f"-> SQLite cannot open {str(tmp_path / 'missing' / 'usage.db')!r}: does its",
    }[case]
    assert said[2].startswith(expected), said
    assert "Error: 1 problem: see above" in result.output


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word (a black-holed server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "mysql+pymysql"])
def test_a_server_that_never_answers_is_named_within_the_connect_timeout(scheme: str, silent_port: int) -> None:
    # PyMySQL waits for the server's greeting up to its read timeout (statement_timeout), libpq up to connect_timeout.
    url = f"{scheme}://app:{SECRET}@127.0.0.1:{silent_port}/shop"
    storage = SQLStorage(url, connect_timeout=2, statement_timeout=2)
    started = time.monotonic()
    result = check(storage)
    assert time.monotonic() - started < 10
    assert result.exit_code == 1, result.output
    assert SECRET not in result.output
    said = lines(result)
    assert said[1].startswith("problem cannot connect: OperationalError (")
    assert said[2] == (
        "-> the server did not answer in time: is the host right, and is a firewall dropping the packets?"
    ), said


def test_a_flask_track_usage_table_is_sent_to_upgrade_table_and_then_passes(db_url: str, table_name: str) -> None:
    storage = SQLStorage(db_url, table_name=table_name, create_tables=False)
    engine = storage.engine
    try:
        legacy_table(table_name).create(engine)
        result = check(storage)
        assert result.exit_code == 1, result.output
        said = lines(result)
        assert said[1].startswith("ok connected to ")
        assert said[2].startswith(f"problem table {table_name!r} lacks ")
        assert "route" in said[2]
        assert said[3] == "-> run `flask usage upgrade-table` (adds the columns and indexes, keeps every row)"
        if engine.dialect.name != "sqlite":  # SQLite keeps text whole whatever the declared width
            assert "has narrower columns (" in said[2]
        assert said[4].startswith(f"problem table '{table_name}_batches' does not exist: a batch retried")
        assert said[5] == "-> run `flask usage upgrade-table` (or `flask usage create-tables`)"
        assert "Error: 2 problems: see above" in result.output

        storage.upgrade_table()
        result = check(storage)
        assert result.exit_code == 0, result.output
        assert all(line.split()[0] == "ok" for line in lines(result)[1:-1]), result.output
    finally:
        drop_table(engine, table_name)
        engine.dispose()


def test_a_healthy_storage_passes_and_is_left_as_it_was(db_url: str, table_name: str) -> None:
    storage = SQLStorage(db_url, table_name=table_name)
    engine = storage.engine
    try:
        storage.create_table()
        result = check(storage)
        assert result.exit_code == 0, result.output
        said = lines(result)
        assert said[1].startswith(f"ok connected to {engine.url.render_as_string(hide_password=True)} (")
        assert said[2].startswith(f"ok table {table_name!r} has every column (")
        assert said[3] == f"ok table '{table_name}_batches' is there and writable (a retried batch is written once)"
        assert said[4] == "everything checked is in order"
        with engine.connect() as conn:  # the write it tried was rolled back
            assert conn.execute(sa.select(sa.func.count()).select_from(storage.batches)).scalar() == 0
    finally:
        drop_table(engine, table_name)
        engine.dispose()


def test_missing_tables_are_a_problem_only_when_nothing_will_create_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    result = check(SQLStorage(url, table_name="absent"))
    assert result.exit_code == 0, result.output
    assert lines(result)[2:4] == [
        "note table 'absent' does not exist",
        "-> the first write creates it (create_tables=True), or `flask usage create-tables`",
    ]
    result = check(SQLStorage(url, table_name="absent", create_tables=False))
    assert result.exit_code == 1, result.output
    assert lines(result)[2:4] == [
        "problem table 'absent' does not exist",
        "-> create it with `flask usage create-tables`",
    ]
    assert not sa.inspect(sa.create_engine(url)).has_table("absent")  # the check created nothing


def test_a_table_that_is_not_a_usage_table_and_a_foreign_batches_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
        conn.exec_driver_sql("CREATE TABLE usage_batches (id INTEGER PRIMARY KEY)")
    result = check(SQLStorage(url, table_name="orders"))
    assert result.exit_code == 1, result.output
    assert lines(result)[2] == "problem table 'orders' exists but is not a usage table (no id or datetime column)"
    storage = SQLStorage(url, table_name="usage")
    storage.table.create(storage.engine)  # the usage table only: its batches table is someone else's
    result = check(storage)
    assert result.exit_code == 1, result.output
    assert lines(result)[3:5] == [
        "problem table 'usage_batches' lacks batch_id, written_at: it is not this package's table of batch ids",
        "-> drop or rename it, then run `flask usage create-tables`",
    ]


@pytest.mark.integration
def test_a_read_only_session_is_a_problem_named_by_the_server(table_name: str) -> None:
    require_server("postgresql", 5432)
    writer = SQLStorage(POSTGRES_URL, table_name=table_name)
    writer.create_table()
    read_only = sa.make_url(POSTGRES_URL).update_query_dict({"options": "-c default_transaction_read_only=on"})
    try:
        result = check(SQLStorage(read_only.render_as_string(hide_password=False), table_name=table_name))
        assert result.exit_code == 1, result.output
        said = lines(result)
        assert said[3].startswith(f"problem cannot write to '{table_name}_batches': InternalError (")
        assert "code 25006" in said[3]  # read_only_sql_transaction
        assert "read-only transaction" in said[3]
        assert said[4].startswith("-> grant this user INSERT and DELETE on the usage tables")
    finally:
        drop_table(writer.engine, table_name)
        writer.engine.dispose()


def test_storages_that_are_not_sql_are_skipped_and_no_storage_is_said(tmp_path: Path) -> None:
    result = check([PrintWriter(), SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}")])
    assert result.exit_code == 0, result.output
    assert lines(result)[1] == "skip not an SQL storage: nothing to check"
    app = Flask("no-storage")
    TrackUsage(app, registry=CollectorRegistry())
    result = app.test_cli_runner().invoke(usage, ["check"])
    assert result.exit_code == 0, result.output
    assert result.output == "this app's TrackUsage has no storage: no rows are kept, nothing to check\n"
