"""MariaDB's one-query batch (``storage.mysql_batch``) on a real server: a retried batch id writes nothing and
leaves nothing open, a refused row fails its whole batch (also one cut into several INSERTs) and leaves the
connection usable, an autocommit session still writes a batch once, summary hooks run in the batch's
transaction, the pool still rolls back what others leave open, and an engine the application gives is not
switched to several statements a query."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from flask_usage_otel.storage.sql import SQLStorage
from flask_usage_otel.summarization import sumUrl
from flask_usage_otel.writer import Batch

from .conftest import MARIADB_URL, drop_table, make_record, require_server, unique_table

pytestmark = pytest.mark.integration


def mariadb_storage(**options: Any) -> SQLStorage:
    require_server("mariadb", 3306)
    # One pooled connection: each batch runs on the connection the one before left behind.
    engine_options = {"pool_size": 1, "max_overflow": 0, **options.pop("engine_options", {})}
    storage = SQLStorage(MARIADB_URL, table_name=unique_table(), engine_options=engine_options, **options)
    storage.create_table()
    return storage


def drop(storage: SQLStorage) -> None:
    for table in (storage.table, storage.batches, *storage.sum_tables.values()):
        drop_table(storage.engine, table.name)
    storage.engine.dispose()


@pytest.fixture
def maria() -> Iterator[SQLStorage]:
    storage = mariadb_storage()
    try:
        yield storage
    finally:
        drop(storage)


def paths(storage: SQLStorage) -> list[str]:
    with storage.engine.connect() as conn:
        return sorted(conn.execute(sa.select(storage.table.c.path)).scalars())


def refuse_long_paths(storage: SQLStorage) -> None:
    with storage.engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE `{storage.table.name}` ADD CONSTRAINT short_path CHECK (length(path) < 10)")


def test_the_batch_is_one_query_on_the_storages_engine(maria: SQLStorage) -> None:
    inserter = maria._inserter()
    with maria.engine.connect() as conn:
        assert inserter.commits_itself(conn)


def test_a_batch_id_already_recorded_writes_nothing_and_leaves_nothing_open(maria: SQLStorage) -> None:
    batch_id = "same-id'; DROP TABLE x; --"
    maria.store(Batch([make_record(path="/a"), make_record(path="/b")], batch_id=batch_id))
    # The retry inserts its rows, then finds its id: the rows must be rolled back, not left open for the
    # next batch's BEGIN to commit.
    maria.store(Batch([make_record(path="/a"), make_record(path="/b")], batch_id=batch_id))
    maria.store(Batch([make_record(path="/c")], batch_id="another"))
    assert paths(maria) == ["/a", "/b", "/c"]
    with maria.engine.connect() as conn:
        assert sorted(conn.execute(sa.select(maria.batches.c.batch_id)).scalars()) == ["another", batch_id]


def test_a_refused_row_fails_its_batch_and_leaves_the_connection_usable(maria: SQLStorage) -> None:
    refuse_long_paths(maria)
    with pytest.raises(sa_exc.DBAPIError) as refused:
        maria.store(Batch([make_record(path="/ok"), make_record(path="/much/too/long")], batch_id="one"))
    assert not refused.value.connection_invalidated
    assert not maria.is_transient_error(refused.value)
    assert "/much/too/long" not in str(refused.value.statement)  # the statement shown holds no row's values
    maria.store(Batch([make_record(path="/ok")], batch_id="one"))  # its id was not recorded: the retry writes
    assert paths(maria) == ["/ok"]


def test_a_batch_past_pymysqls_statement_size_is_several_inserts_in_one_transaction(
    maria: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pymysql.cursors.Cursor, "max_stmt_length", 4000)  # a few rows per INSERT
    records = [make_record(path=f"/p/{i:03d}") for i in range(40)]
    refuse_long_paths(maria)
    with pytest.raises(sa_exc.DBAPIError):  # the last INSERT refuses its row: the earlier ones go too
        maria.store(Batch([*records, make_record(path="/much/too/long")], batch_id="big"))
    assert paths(maria) == []
    before = inserts_so_far(maria)
    maria.store(Batch(records, batch_id="big"))
    assert inserts_so_far(maria) - before >= 1 + 4  # the batch id's and the rows' (in several)
    maria.store(Batch(records, batch_id="big"))  # a retry: nothing twice
    assert paths(maria) == [f"/p/{i:03d}" for i in range(40)]


def inserts_so_far(storage: SQLStorage) -> int:
    """INSERT statements the session of the one pooled connection ran (multi-row INSERTs count once)."""
    with storage.engine.connect() as conn:
        return int(conn.exec_driver_sql("SHOW SESSION STATUS LIKE 'Com_insert'").one()[1])


def test_an_autocommit_session_still_writes_a_batch_once_and_whole() -> None:
    storage = mariadb_storage(engine_options={"isolation_level": "AUTOCOMMIT"})
    try:
        batch = Batch([make_record(path="/a"), make_record(path="/b")], batch_id="one")
        storage.store(batch)
        storage.store(batch)  # the retry's rows come before its id: they must go with the id's refusal
        assert paths(storage) == ["/a", "/b"]
    finally:
        drop(storage)


def test_summary_hooks_run_in_the_batchs_transaction() -> None:
    storage = mariadb_storage(hooks=[sumUrl])
    try:
        batch = Batch([make_record(path="/s"), make_record(path="/s")], batch_id="hooked")
        storage.store(batch)
        storage.store(batch)  # a retry: neither the rows nor the sums count twice
        assert paths(storage) == ["/s", "/s"]
        assert [r["hits"] for r in storage.get_sum(sumUrl, period="hourly")] == [2]
    finally:
        drop(storage)


def test_the_pool_still_rolls_back_what_a_connection_gives_back_open(maria: SQLStorage) -> None:
    """Only a batch's answered COMMIT spares the ROLLBACK; a connection given back in a transaction is rolled
    back as with SQLAlchemy's own reset."""
    maria.store(Batch([make_record(path="/kept")], batch_id="kept"))
    raw = maria.engine.raw_connection()
    cursor = raw.cursor()
    cursor.execute(f"INSERT INTO `{maria.table.name}` (path, datetime) VALUES ('/left-open', NOW())")
    cursor.close()
    raw.close()  # back to the pool without a commit
    maria.store(Batch([make_record(path="/next")], batch_id="next"))  # its BEGIN would commit what was left open
    assert paths(maria) == ["/kept", "/next"]


def test_an_engine_the_application_gives_is_left_as_it_is() -> None:
    require_server("mariadb", 3306)
    engine = sa.create_engine(MARIADB_URL)
    storage = SQLStorage(engine=engine, table_name=unique_table())
    try:
        storage.store(Batch([make_record(path="/a")], batch_id="one"))
        storage.store(Batch([make_record(path="/a")], batch_id="one"))
        assert paths(storage) == ["/a"]
        inserter = storage._inserter()
        with engine.connect() as conn:
            assert not inserter.commits_itself(conn)
            with pytest.raises(sa_exc.ProgrammingError):  # one statement a query, as the application made it
                conn.exec_driver_sql("SELECT 1; SELECT 2")
    finally:
        drop(storage)
