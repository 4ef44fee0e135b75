"""Daily partitions of the usage table on a real PostgreSQL: same reads, prune drops whole days."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from flask_usage_otel.storage.partitions import PartitionedSQLStorage
from flask_usage_otel.storage.sql import SQLStorage
from tests.storage.conftest import POSTGRES_URL, drop_table, make_record, require_server, unique_table

DAY = 86_400


@pytest.fixture
def partitioned() -> Iterator[PartitionedSQLStorage]:
    require_server("postgresql", 5432)
    store = PartitionedSQLStorage(POSTGRES_URL, table_name=unique_table(), days_ahead=2)
    try:
        yield store
    finally:
        drop_table(store.engine, store.table.name)  # takes its partitions with it
        store.engine.dispose()


@pytest.fixture
def plain() -> Iterator[SQLStorage]:
    store = SQLStorage(POSTGRES_URL, table_name=unique_table())
    try:
        yield store
    finally:
        drop_table(store.engine, store.table.name)
        store.engine.dispose()


def today() -> datetime:
    return datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def records_over_days(days_back: tuple[int, ...]) -> list:
    noon = today().timestamp() + DAY / 2
    return [
        make_record(timestamp=noon - back * DAY + i, route=f"/r{back % 3}", username=f"user{i}")
        for back in days_back
        for i in range(3)
    ]


pytestmark = pytest.mark.integration


def test_reads_are_those_of_a_plain_table(partitioned: PartitionedSQLStorage, plain: SQLStorage) -> None:
    records = records_over_days((0, 1, 2, 6))
    partitioned.store(records)
    plain.store(records)

    def rows(store: SQLStorage) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "id"} for row in store.get_usage(limit=100)]

    assert len(rows(partitioned)) == len(records)
    assert rows(partitioned) == rows(plain)
    start = today() - timedelta(days=2)
    ranged = [{k: v for k, v in row.items() if k != "id"} for row in partitioned.get_usage(start_date=start, limit=100)]
    assert ranged == [
        {k: v for k, v in row.items() if k != "id"} for row in plain.get_usage(start_date=start, limit=100)
    ]
    assert len(ranged) == 9
    for by in ("route", "username"):
        assert partitioned.get_summary(by=by, period="day") == plain.get_summary(by=by, period="day")


def test_partitions_are_made_for_each_day_written_and_ahead(partitioned: PartitionedSQLStorage) -> None:
    partitioned.store(records_over_days((0, 3)))
    days = [day for _, day in partitioned.partitions()]
    t = today().date()
    assert days == [t - timedelta(days=3), t, t + timedelta(days=1), t + timedelta(days=2)]
    # A row for a day made ahead lands in its own partition, not in a default one.
    tomorrow = partitioned.partition_name(int(today().timestamp() // DAY) + 1)
    partitioned.store([make_record(timestamp=today().timestamp() + DAY + 60)])
    with partitioned.engine.connect() as conn:
        assert conn.execute(sa.text(f'SELECT count(*) FROM "{tomorrow}"')).scalar_one() == 1


def test_prune_drops_whole_days_and_counts_every_row(partitioned: PartitionedSQLStorage) -> None:
    records = records_over_days((0, 1, 2, 5, 9))
    partitioned.store(records)
    # The cut falls 36 hours back: the partitions of days 5 and 9 (and of day 2 after noon) go whole;
    # rows older than the cut in the day it falls in go row by row.
    removed = partitioned.prune(timedelta(hours=36))
    cutoff = time.time() - 36 * 3600
    expected_gone = [r for r in records if r.timestamp < cutoff]
    assert removed == len(expected_gone)
    left = partitioned.get_usage(limit=100)
    assert len(left) == len(records) - removed
    assert all(row["date"].timestamp() >= cutoff for row in left)
    kept_days = {day for _, day in partitioned.partitions()}
    t = today().date()
    for back in (5, 9):
        assert t - timedelta(days=back) not in kept_days
    assert {t - timedelta(days=1), t} <= kept_days
    # Writing to a dropped day again makes its partition anew.
    partitioned.store([make_record(timestamp=today().timestamp() - 5 * DAY + 10)])
    assert t - timedelta(days=5) in {day for _, day in partitioned.partitions()}


def test_workers_making_the_same_partitions_at_once_do_not_fail(partitioned: PartitionedSQLStorage) -> None:
    partitioned.create_table()
    others = [PartitionedSQLStorage(POSTGRES_URL, table_name=partitioned.table.name) for _ in range(4)]
    errors: list[BaseException] = []

    def write(store: PartitionedSQLStorage) -> None:
        try:
            store.store(records_over_days((4, 7, 8)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(store,)) for store in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in others:
        store.engine.dispose()
    assert errors == []
    assert len(partitioned.get_usage(limit=100)) == 4 * 9


def test_only_postgresql(tmp_path: Path) -> None:
    store = PartitionedSQLStorage(f"sqlite:///{tmp_path / 'usage.db'}")
    with pytest.raises(ValueError, match="needs PostgreSQL"):
        store.create_table()


@pytest.mark.parametrize("days_ahead", [-1, 400, True, 1.5])
def test_days_ahead_is_checked(days_ahead: object) -> None:
    with pytest.raises(ValueError, match="days_ahead"):
        PartitionedSQLStorage("sqlite://", days_ahead=days_ahead)  # type: ignore[arg-type]
