"""A one-day get_usage on a large table uses the datetime index (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flask_usage_otel.storage.sql import SQLStorage

from .conftest import POSTGRES_URL, drop_table, require_server, unique_table

ROWS = 50_000
START = datetime(2024, 1, 1)


def fill(storage: SQLStorage, rows: int) -> None:
    """Rows one minute apart (about 35 days), inserted directly for speed."""
    storage.create_table()
    batch: list[dict[str, Any]] = []
    routes = [f"/r{i}" for i in range(20)]
    with storage.engine.begin() as conn:
        for i in range(rows):
            batch.append(
                {
                    "datetime": START + timedelta(minutes=i),
                    "url": f"http://x/r{i % 20}",
                    "path": f"/r{i % 20}",
                    "route": routes[i % 20],
                    "endpoint": f"r{i % 20}",
                    "method": "GET",
                    "status": 200,
                    "speed": 0.01,
                }
            )
            if len(batch) == 5000:
                conn.execute(storage.table.insert(), batch)
                batch = []
        if batch:
            conn.execute(storage.table.insert(), batch)
        if storage.engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f'ANALYZE "{storage.table.name}"')
        else:
            conn.exec_driver_sql("ANALYZE")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def big_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "postgresql":
        require_server("postgresql", 5432)
        url = POSTGRES_URL
    else:
        url = f"sqlite:///{tmp_path / 'big.db'}"
    name = unique_table()
    storage = SQLStorage(url, table_name=name)
    try:
        fill(storage, ROWS)
        yield storage
    finally:
        drop_table(storage.engine, name)
        storage.engine.dispose()


def test_one_day_get_usage_uses_the_datetime_index(big_storage: SQLStorage) -> None:
    day = datetime(2024, 1, 20, tzinfo=timezone.utc)
    plan = big_storage.explain_usage(day, day + timedelta(days=1), limit=500)
    assert f"ix_{big_storage.table.name}_datetime" in plan, plan
    rows = big_storage.read_usage(day, day + timedelta(days=1), limit=500)
    assert len(rows) == 500
    assert rows[0]["date"] == day + timedelta(days=1)


def test_filtered_get_usage_uses_an_index(big_storage: SQLStorage) -> None:
    day = datetime(2024, 1, 20, tzinfo=timezone.utc)
    plan = big_storage.explain_usage(day, day + timedelta(days=1), route="/r3")
    # The route index or the datetime index, whichever the planner finds cheaper; never a full scan.
    assert f"ix_{big_storage.table.name}_route" in plan or f"ix_{big_storage.table.name}_datetime" in plan, plan
    assert {r["route"] for r in big_storage.read_usage(day, day + timedelta(days=1), route="/r3")} == {"/r3"}


def test_explain_refuses_unknown_filters(big_storage: SQLStorage) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        big_storage.explain_usage(colour="red")
    assert sa.inspect(big_storage.engine).has_table(big_storage.table.name)
