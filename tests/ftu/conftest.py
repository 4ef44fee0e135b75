"""Fixtures of the Flask-Track-Usage comparison tests: the reference interpreter and one database per run."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from tests.ftu import scenario
from tests.ftu.ftu_env import ftu_python
from tests.storage.conftest import MARIADB_URL, POSTGRES_URL, drop_table, require_server, unique_table

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
        """A fresh table name, dropped (with its summary tables) after the test."""
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
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'usage.db'}"
        db = Database("sqlite", url, url, [])
    elif request.param == "postgresql":
        require_server("postgresql", 5432)
        db = Database("postgresql", POSTGRES_URL, POSTGRES_URL.replace("+psycopg", ""), [])
    else:
        require_server("mariadb", 3306)
        db = Database("mariadb", MARIADB_URL, MARIADB_URL, [])
    yield db
    if db.tables and db.name != "sqlite":
        import sqlalchemy as sa

        engine = sa.create_engine(db.url)
        try:
            names = sa.inspect(engine).get_table_names()
            for table in db.tables:
                for name in names:
                    if name == table or name.startswith(table + "_"):
                        drop_table(engine, name)
        finally:
            engine.dispose()


def run_ftu(ftu: Path, action: str, db: Database, table: str) -> list[Any]:
    """Run the reference for one action; its typed JSON output."""
    done = subprocess.run(
        [str(ftu), str(RUNNER), action, db.ftu_url, table],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"Flask-Track-Usage {action} failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout)


def our_app(storage: Any, **config: Any) -> Flask:
    """The scenario app tracked by flask-usage-otel, rows written before each response returns."""
    app = scenario.build_app()
    app.config.update(TRACK_USAGE_SYNC_WRITES=True, TRACK_USAGE_OTEL=False, **config)

    # Flask-Track-Usage created g.track_var in every request; views of the scenario rely on it.
    @app.before_request
    def track_var() -> None:
        g.setdefault("track_var", {})

    TrackUsage(app, storage, registry=CollectorRegistry())
    return app
