"""PostgreSQL's two-round-trip batch (``storage.pg_batch``) on a real server: a retried batch id writes
nothing, rows that cannot be made fail the COPY cleanly, a refused row leaves the connection usable,
and summary hooks still run in the batch's transaction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from flask_usage_otel.storage.sql import SQLStorage
from flask_usage_otel.summarization import sumUrl
from flask_usage_otel.writer import Batch

from .conftest import POSTGRES_URL, drop_table, make_record, require_server, unique_table


@pytest.fixture
def pg() -> Iterator[SQLStorage]:
    require_server("postgresql", 5432)
    storage = SQLStorage(POSTGRES_URL, table_name=unique_table())
    storage.create_table()
    try:
        yield storage
    finally:
        drop_table(storage.engine, storage.table.name)
        drop_table(storage.engine, storage.batches.name)
        storage.engine.dispose()


def paths(storage: SQLStorage) -> list[str]:
    with storage.engine.connect() as conn:
        return sorted(conn.execute(sa.select(storage.table.c.path)).scalars())


def test_a_batch_id_already_recorded_writes_nothing(pg: SQLStorage) -> None:
    pg.store(Batch([make_record(path="/a"), make_record(path="/b")], batch_id="same-id'; DROP TABLE x; --"))
    pg.store(Batch([make_record(path="/a"), make_record(path="/b")], batch_id="same-id'; DROP TABLE x; --"))
    pg.store(Batch([make_record(path="/c")], batch_id="another"))
    assert paths(pg) == ["/a", "/b", "/c"]
    with pg.engine.connect() as conn:
        assert sorted(conn.execute(sa.select(pg.batches.c.batch_id)).scalars()) == [
            "another",
            "same-id'; DROP TABLE x; --",
        ]


def test_rows_that_cannot_be_made_fail_the_copy_and_the_next_batch_is_written(
    pg: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    builder = pg._inserter().builder
    made = builder.rows

    def broken(records: Any) -> Any:
        raise ValueError("a bug in the row builder")

    monkeypatch.setattr(builder, "rows", broken)
    with pytest.raises(ValueError, match="a bug in the row builder"):
        pg.store(Batch([make_record(path="/lost")], batch_id="broken"))
    monkeypatch.setattr(builder, "rows", made)
    pg.store(Batch([make_record(path="/kept")], batch_id="broken"))  # its id was not recorded: the retry writes
    assert paths(pg) == ["/kept"]


def test_a_refused_row_fails_its_batch_and_leaves_the_connection_usable(pg: SQLStorage) -> None:
    with pg.engine.begin() as conn:
        conn.exec_driver_sql(f'ALTER TABLE "{pg.table.name}" ADD CONSTRAINT short_path CHECK (length(path) < 10)')
    with pytest.raises(sa_exc.IntegrityError) as refused:
        pg.store(Batch([make_record(path="/ok"), make_record(path="/much/too/long")], batch_id="one"))
    assert not refused.value.connection_invalidated
    pg.store(Batch([make_record(path="/ok")], batch_id="one"))
    assert paths(pg) == ["/ok"]


def test_summary_hooks_run_in_the_batchs_transaction() -> None:
    require_server("postgresql", 5432)
    storage = SQLStorage(POSTGRES_URL, table_name=unique_table(), hooks=[sumUrl])
    storage.create_table()
    try:
        batch = Batch([make_record(path="/s"), make_record(path="/s")], batch_id="hooked")
        storage.store(batch)
        storage.store(batch)  # a retry: neither the rows nor the sums count twice
        assert paths(storage) == ["/s", "/s"]
        assert [r["hits"] for r in storage.get_sum(sumUrl, period="hourly")] == [2]
    finally:
        for table in (storage.table, storage.batches, *storage.sum_tables.values()):
            drop_table(storage.engine, table.name)
        storage.engine.dispose()
