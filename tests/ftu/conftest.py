"""Fixtures of the Flask-Track-Usage comparison tests: the reference interpreter and one database per run."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from tests.ftu import scenario
from tests.ftu.ftu_env import ftu_python
from tests.storage.conftest import MARIADB_URL, POSTGRES_URL, require_server, unique_table

RUNNER = Path(__file__).with_name("ftu_runner.py")
RUN_TIMEOUT = 120


@dataclass
class Database:
    """One database seen by both sides: our URL (SQLAlchemy 2, psycopg 3) and the reference's (psycopg2)."""

    name: str
    url: str
    ftu_url: str
    tables: list[str]

    def table(self) -> str:
        """A fresh table name (the whole database is dropped after the test)."""
        name = unique_table()
        self.tables.append(name)
        return name


@pytest.fixture(scope="session")
def ftu() -> Path:
    """The reference interpreter (real Flask-Track-Usage 2.0.0), its virtualenv made on first use."""
    return ftu_python()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.integration),
        pytest.param("mariadb", marks=pytest.mark.integration),
    ]
)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database of our own for one test: a file, a PostgreSQL schema or a MariaDB database.

    Flask-Track-Usage reflects every table of the database it is given; on a server other
    tests use at the same time, a table dropped meanwhile makes it fail. In a namespace of
    its own it sees only this test's tables, and dropping the namespace cleans up.
    """
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'usage.db'}"
        yield Database("sqlite", url, url, [])
        return
    with server_namespace(request.param) as url:
        yield Database(request.param, url, url.replace("+psycopg", ""), [])


@contextlib.contextmanager
def server_namespace(server: str) -> Iterator[str]:
    """A PostgreSQL schema or a MariaDB database made for the block and dropped after it; its URL
    (searching that schema first on PostgreSQL)."""
    import sqlalchemy as sa

    namespace = f"ftu_{uuid.uuid4().hex[:12]}"
    if server == "postgresql":
        require_server("postgresql", 5432)
        admin = sa.create_engine(POSTGRES_URL)
        create, drop = f"CREATE SCHEMA {namespace}", f"DROP SCHEMA IF EXISTS {namespace} CASCADE"
        url = f"{POSTGRES_URL}?options=-csearch_path%3D{namespace}"
    else:
        require_server("mariadb", 3306)
        admin = sa.create_engine(MARIADB_URL)
        create = f"CREATE DATABASE {namespace} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        drop = f"DROP DATABASE IF EXISTS {namespace}"
        url = MARIADB_URL.rsplit("/", 1)[0] + "/" + namespace
    with admin.begin() as conn:
        conn.execute(sa.text(create))
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(drop))
        admin.dispose()


def run_ftu(ftu: Path, action: str, db: Database, table: str) -> list[Any]:
    """Run the reference for one action; its typed JSON output."""
    done = subprocess.run(
        [str(ftu), str(RUNNER), action, db.ftu_url, table],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    error = done.stderr if len(done.stderr) <= 4000 else f"{done.stderr[:2000]}\n...\n{done.stderr[-2000:]}"
    assert done.returncode == 0, f"Flask-Track-Usage {action} failed:\n{error}"
    return json.loads(done.stdout)


def our_app(storage: Any, **config: Any) -> Flask:
    """The scenario app tracked by flask-usage-otel, rows written before each response returns."""
    app = scenario.build_app()
    # Flask-Track-Usage stored the Basic-auth user name unverified; here that must be asked for.
    app.config.update(TRACK_USAGE_SYNC_WRITES=True, TRACK_USAGE_OTEL=False, TRACK_USAGE_CAPTURE_USER="basic_auth")
    app.config.update(config)
    TrackUsage(app, storage, registry=CollectorRegistry())
    return app
