"""Fixtures for the storage tests: one SQLStorage per database (SQLite, PostgreSQL, MariaDB), each test on
its own table so parallel runs on the shared servers never collide."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_usage_otel.record import UsageRecord

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI") == "true"


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return True
        time.sleep(0.2)
    return False


def postgres_cluster() -> tuple[str, str] | None:
    """(version, name) of the local PostgreSQL cluster, from Debian's /etc/postgresql."""
    root = Path("/etc/postgresql")
    if not root.is_dir():
        return None
    versions = sorted(p.name for p in root.iterdir() if p.is_dir())
    return (versions[-1], "main") if versions else None


def start_postgres() -> None:
    cluster = postgres_cluster()
    if cluster is not None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", cluster[0], cluster[1], "start"],
            check=False,
            capture_output=True,
            timeout=60,
        )


def start_mariadb() -> None:
    subprocess.run(
        ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"],
        check=False,
        capture_output=True,
        timeout=60,
    )


def require_server(name: str, port: int) -> None:
    """Start the server when it is down; fail under CI when it cannot be reached, skip elsewhere."""
    if port_open(port):
        return
    try:
        (start_postgres if name == "postgresql" else start_mariadb)()
    except (OSError, subprocess.SubprocessError) as exc:
        reason = f"{name} is not listening on 127.0.0.1:{port} and could not be started: {exc}"
    else:
        if wait_port(port):
            return
        reason = f"{name} is not listening on 127.0.0.1:{port} even after trying to start it"
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def unique_table() -> str:
    return f"usage_t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.integration),
        pytest.param("mariadb", marks=pytest.mark.integration),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An SQLAlchemy URL for each database the storage supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'usage.db'}"
    if request.param == "postgresql":
        require_server("postgresql", 5432)
        return POSTGRES_URL
    require_server("mariadb", 3306)
    return MARIADB_URL


@pytest.fixture
def table_name() -> str:
    return unique_table()


@pytest.fixture
def storage(db_url: str, table_name: str) -> Iterator[Any]:
    """A fresh SQLStorage on its own table, dropped afterwards."""
    from flask_usage_otel.storage.sql import SQLStorage

    store = SQLStorage(db_url, table_name=table_name)
    try:
        yield store
    finally:
        drop_table(store.engine, table_name)
        store.engine.dispose()


def drop_table(engine: Any, name: str) -> None:
    """Drop a usage table and the table of its batch ids (``<name>_batches``)."""
    from flask_usage_otel.storage.sql_batches import batch_table_name

    quote = engine.dialect.identifier_preparer.quote
    with engine.begin() as conn:
        for table in (name, batch_table_name(name)):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(table)}")


def make_record(**overrides: Any) -> UsageRecord:
    """A complete record of a plausible request; any field can be overridden."""
    fields: dict[str, Any] = {
        "timestamp": 1_700_000_000.123456,
        "speed": 0.0125,
        "method": "GET",
        "scheme": "https",
        "host": "example.org",
        "script_root": "",
        "path": "/items/7",
        "query_string": "q=shoes&page=2",
        "route": "/items/<int:item_id>",
        "endpoint": "shop.item",
        "blueprint": "shop",
        "view_args": {"item_id": 7},
        "status": 200,
        "content_length": 12,
        "response_size": 345,
        "remote_addr": "203.0.113.9",
        "xforwardedfor": "198.51.100.7, 203.0.113.9",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        "accept_language": "de-CH,de;q=0.9,en;q=0.8",
        "authorization": True,
        "username": "alice",
        "server_name": "shop-app",
        "protocol": "HTTP/1.1",
        "track_var": {"campaign": "spring", "n": 3},
        "exception": None,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "ip_info": {"country": "CH"},
    }
    fields.update(overrides)
    return UsageRecord(**fields)
