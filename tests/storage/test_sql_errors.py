"""``sql_errors.describe`` and ``advice`` on the errors the real drivers raise: a closed port, a wrong
database, a wrong user or password, a missing directory; a row's values never, a password never."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from flask_usage_otel.storage.sql_errors import advice, describe, is_connection_error, mask_credentials

from .conftest import MARIADB_URL, POSTGRES_URL, require_server

SECRET = "s3cret-" + uuid.uuid4().hex[:8]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound by this test and not listening: a connection to it is refused, and nothing
    else can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def connect_error(url: str | sa.URL, **connect_args: object) -> sa_exc.DBAPIError:
    engine = sa.create_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa_exc.DBAPIError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError(f"connecting to {url} succeeded")


def with_password(url: str, password: str = SECRET, **parts: object) -> sa.URL:
    return sa.make_url(url).set(password=password, **parts)  # type: ignore[arg-type]


def assert_masked(line: str) -> None:
    assert SECRET not in line
    assert "\n" not in line


@pytest.mark.integration
def test_postgresql_on_a_closed_port(closed_port: int) -> None:
    require_server("postgresql", 5432)
    url = with_password(POSTGRES_URL, port=closed_port)
    exc = connect_error(url, connect_timeout=5)
    line = describe(exc, url)
    assert is_connection_error(exc)
    assert line.startswith("OperationalError (psycopg.OperationalError): connection failed: ")
    # psycopg 3.1 leaves the host and port out of its message; the URL at the end says them.
    assert "Connection refused Is the server running" in line
    assert line.endswith(f"[postgresql+psycopg://postgres:***@127.0.0.1:{closed_port}/test]")
    assert_masked(line)
    assert advice(exc, url) == (
        f"nothing answers at 127.0.0.1:{closed_port}: is the database server running there, "
        "and is the host and port right?"
    )


@pytest.mark.integration
def test_postgresql_wrong_database_and_wrong_user() -> None:
    require_server("postgresql", 5432)
    url = with_password(POSTGRES_URL, database="no_such_db_check")
    exc = connect_error(url, connect_timeout=5)
    line = describe(exc, url)
    assert 'FATAL: database "no_such_db_check" does not exist' in line
    assert_masked(line)
    assert advice(exc, url) == (
        "the database 'no_such_db_check' does not exist: create it, or fix the database name in the URL"
    )
    url = with_password(POSTGRES_URL, username="no_such_role_check")
    exc = connect_error(url, connect_timeout=5)
    assert 'role "no_such_role_check" does not exist' in describe(exc, url)
    assert advice(exc, url) == "the server refused the user name or password: fix them in the URL"


@pytest.mark.integration
def test_mariadb_closed_port_wrong_password_and_wrong_database(closed_port: int) -> None:
    require_server("mariadb", 3306)
    url = with_password(MARIADB_URL, port=closed_port)
    exc = connect_error(url, connect_timeout=5)
    line = describe(exc, url)
    assert line.startswith("OperationalError (pymysql.OperationalError, code 2003): (2003, \"Can't connect to")
    assert "Connection refused" in line
    assert line.endswith(f"[mysql+pymysql://root:***@127.0.0.1:{closed_port}/test]")
    assert advice(exc, url).startswith(f"nothing answers at 127.0.0.1:{closed_port}")  # type: ignore[union-attr]

    url = with_password(MARIADB_URL)  # root has no password here: any password is wrong
    exc = connect_error(url, connect_timeout=5)
    line = describe(exc, url)
    assert "code 1045" in line
    assert "Access denied for user 'root'" in line
    assert_masked(line)
    assert advice(exc, url) == "the server refused the user name or password: fix them in the URL"

    url = sa.make_url(MARIADB_URL).set(database="no_such_db_check")
    exc = connect_error(url, connect_timeout=5)
    assert "code 1049" in describe(exc, url)
    assert "Unknown database 'no_such_db_check'" in describe(exc, url)
    assert advice(exc, url).startswith("the database 'no_such_db_check' does not exist")  # type: ignore[union-attr]


def test_sqlite_in_a_missing_directory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'usage.db'}"
    exc = connect_error(url)
    assert describe(exc, url) == f"OperationalError (sqlite3.OperationalError): unable to open database file [{url}]"
    assert advice(exc, url) == (
        f"SQLite cannot open {str(tmp_path / 'no-such-dir' / 'usage.db')!r}: does its directory exist, "
        "and may this process write there?"
    )


@pytest.mark.integration
def test_credentials_the_driver_quotes_are_masked() -> None:
    require_server("postgresql", 5432)
    # libpq quotes a host it cannot resolve, here a whole URL with a password in it.
    url = sa.make_url(POSTGRES_URL).set(query={"host": f"postgresql://app:{SECRET}@[::1"})
    exc = connect_error(url, connect_timeout=5)
    assert SECRET in str(exc.orig)
    line = describe(exc)  # no URL at hand: the patterns alone
    # psycopg 3.3: "failed to resolve host 'postgresql://app:***@[::1'"; psycopg 3.1 cuts the scheme off.
    assert "//app:***@[::1" in line
    assert_masked(line)
    # And a conninfo URI libpq cannot parse (given through a creator), quoted whole by the driver.
    engine = sa.create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(f"postgresql://app:{SECRET}@[::1/test")
    )
    with pytest.raises(sa_exc.DBAPIError) as caught:
        engine.connect()
    assert SECRET in str(caught.value.orig)
    assert "postgresql://app:***@[::1/test" in describe(caught.value)
    assert_masked(describe(caught.value))


def test_dsn_passwords_are_masked() -> None:
    assert mask_credentials(f"host=db password={SECRET} port=5432") == "host=db password=*** port=5432"
    assert mask_credentials(f"host=db password='{SECRET} x' port=5432") == "host=db password=*** port=5432"
    assert mask_credentials(f'host "//app:{SECRET}@[::1" unknown') == 'host "//app:***@[::1" unknown'
    assert mask_credentials(f"mysql://u:{SECRET}@h/db and {SECRET}", f"mysql://u:{SECRET}@h/db") == (
        "mysql://u:***@h/db and ***"
    )


def test_a_rows_error_says_its_type_and_code_and_never_its_values(db_url: str, table_name: str) -> None:
    engine = sa.create_engine(db_url)
    table = sa.Table(table_name, sa.MetaData(), sa.Column("k", sa.String(40), primary_key=True))
    table.create(engine)
    try:
        with engine.begin() as conn:
            conn.execute(table.insert(), {"k": SECRET})
        with pytest.raises(sa_exc.DBAPIError) as caught, engine.begin() as conn:
            conn.execute(table.insert(), {"k": SECRET})
        assert SECRET in str(caught.value.orig) or engine.dialect.name == "sqlite"  # the server quotes the key
        line = describe(caught.value, engine.url)
        assert not is_connection_error(caught.value)
        assert line.startswith("IntegrityError (")
        assert {"postgresql": "code 23505", "mysql": "code 1062", "sqlite": "sqlite3.IntegrityError"}[
            engine.dialect.name
        ] in line
        assert SECRET not in line
    finally:
        table.drop(engine)
        engine.dispose()
