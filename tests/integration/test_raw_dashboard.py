"""Every SQL query of the raw-rows dashboard, run by a real PostgreSQL after Grafana's macros are expanded."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.integration.gunicorn_harness import REPO
from tests.integration.servers import unavailable

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "grafana" / "dashboards" / "flask-usage-raw.json"
NOW = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
FROM, TO = NOW - timedelta(hours=1), NOW + timedelta(minutes=1)

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def expand_macros(sql: str, traffic: str = "all") -> str:
    """Grafana's PostgreSQL macros, expanded as Grafana does for the time range FROM..TO, and the variable."""
    sql = sql.replace("$traffic", traffic)
    sql = re.sub(
        r"\$__timeFilter\((\w+)\)",
        lambda m: f"{m[1]} BETWEEN '{FROM.isoformat()}Z' AND '{TO.isoformat()}Z'",
        sql,
    )
    sql = re.sub(
        r"\$__timeGroupAlias\((\w+),\s*'(\d+)m'\)",
        lambda m: f'floor(extract(epoch from {m[1]})/{int(m[2]) * 60})*{int(m[2]) * 60} AS "time"',
        sql,
    )
    assert "$" not in sql, sql
    return sql


@pytest.fixture
def usage_schema() -> Iterator[Any]:
    psycopg = pytest.importorskip("psycopg")
    schema = f"raw_dashboard_{uuid.uuid4().hex[:12]}"
    try:
        conn = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL at 127.0.0.1:5432 is not usable ({exc}); run `make services`")
    try:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        _create_usage_table(schema)
        rows = [
            (NOW - timedelta(minutes=i), m, r, p, s, 0.001 * (i + 1), addr, user, f"{i:032x}")
            for i, (m, r, p, s, addr, user) in enumerate(
                [
                    ("GET", "/", "/", 200, "10.0.0.1", "alice"),
                    ("GET", "/api/items/<int:item_id>", "/api/items/3", 200, "10.0.0.2", "bob"),
                    ("GET", "/error", "/error", 500, "10.0.0.1", "alice"),
                    ("GET", "<unmatched>", "/nope", 404, "10.0.0.3", None),
                ]
            )
        ]
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO flask_usage (datetime, method, route, path, status, speed, remote_addr, username, "
                "trace_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
            cursor.execute(  # a health probe, older than the rest
                "INSERT INTO flask_usage (datetime, method, route, path, status, speed, remote_addr, synthetic_type) "
                "VALUES (%s, 'GET', '/healthz', '/healthz', 200, 0.001, '10.0.0.9', 'test')",
                (NOW - timedelta(minutes=30),),
            )
        yield conn
    finally:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.close()


def _create_usage_table(schema: str) -> None:
    """The table exactly as the SQL storage defines it, so the dashboard's column names are proven."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from flask_usage_otel.storage.sql import usage_table

    engine = sqlalchemy.create_engine(PG_URL)
    try:
        usage_table("flask_usage", schema=schema).create(engine)
    finally:
        engine.dispose()


def test_every_raw_query_runs_and_returns_rows(usage_schema: Any) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(p["title"], t["rawSql"]) for p in dashboard["panels"] for t in p["targets"]]
    assert len(queries) >= 4
    for title, sql in queries:
        rows = usage_schema.execute(expand_macros(sql)).fetchall()
        assert rows, f"{title}: no rows"
    by_title = dict(queries)
    newest = usage_schema.execute(expand_macros(by_title["Newest requests"])).fetchall()
    assert [r[3] for r in newest] == ["/", "/api/items/3", "/error", "/nope", "/healthz"]  # newest first
    humans = usage_schema.execute(expand_macros(by_title["Newest requests"], "humans")).fetchall()
    assert [r[3] for r in humans] == ["/", "/api/items/3", "/error", "/nope"]
    probes = usage_schema.execute(expand_macros(by_title["Newest requests"], "test")).fetchall()
    assert [r[3] for r in probes] == ["/healthz"]
    assert usage_schema.execute(expand_macros(by_title["Newest requests"], "bot")).fetchall() == []
    for _title, sql in queries:  # every panel takes every value of the variable
        usage_schema.execute(expand_macros(sql, "humans")).fetchall()
    users = usage_schema.execute(expand_macros(by_title["Top users"])).fetchall()
    assert [(r[0], r[1], r[2]) for r in users] == [("alice", 2, 1), ("bob", 1, 0)]
