"""The fast write path on SQLite, PostgreSQL (COPY) and MariaDB: same values as SQLAlchemy's own INSERT,
refused rows told apart from a lost connection, and the index set (new tables and upgraded ones)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from flask_usage_otel.storage.sql import COLUMN_WIDTHS, SQLStorage, usage_table
from flask_usage_otel.storage.sql_rows import RowBuilder, json_text, record_url
from flask_usage_otel.writer import BatchWriter

from .conftest import POSTGRES_URL, drop_table, make_record, require_server, unique_table

T0 = datetime(2024, 3, 10, 12, 30, 15, tzinfo=timezone.utc)  # whole second: the microsecond-less text form


@pytest.mark.parametrize(
    ("script_root", "path", "query_string"),
    [
        ("", "/items/7", "q=1"),
        ("", "/", ""),
        ("", "/a b/ü/%41/x?y", ""),
        ("", "/~user/@me:x;y=z,(1)*+!$&'", "a=%20"),
        ("/app root", "/items/7", ""),
        ("", "/emoji/\U0001f600", "k=v&k=w"),
    ],
)
def test_record_url_is_the_records_url(script_root: str, path: str, query_string: str) -> None:
    record = make_record(script_root=script_root, path=path, query_string=query_string)
    assert record_url(record) == record.url


def test_json_text_keeps_empty_mappings_and_none_apart() -> None:
    assert json_text({}, 100) == "{}"
    assert json_text(None, 100) is None
    assert json_text({"a": "ü\x00"}, 100) == '{"a":"ü\\u0000"}'  # escaped by JSON: nothing to remove
    cut = json_text({"a": "x" * 200}, 100)
    assert cut is not None
    assert len(cut) <= 100
    assert json.loads(cut) == {"_truncated": '{"a":"' + "x" * 54}


def test_row_builder_writes_only_the_columns_a_table_has() -> None:
    builder = RowBuilder(["id", "path", "view_args", "status", "mine"], {"path": 4, "view_args": 100})
    assert builder.columns == ("path", "view_args", "status")
    assert builder.row(make_record(path="/items/7", status=201)) == ("/ite", '{"item_id":7}', 201)


def test_rows_match_sqlalchemys_own_insert(storage: SQLStorage) -> None:
    """The driver-level path stores exactly what SQLAlchemy's insert() stores (types, datetime text on SQLite)."""
    record = make_record(timestamp=T0.timestamp(), content_length=None, authorization=False)
    storage.store([record])
    [fast] = storage.read_usage()
    with storage.engine.begin() as conn:
        conn.execute(
            storage.table.insert(),
            [{"datetime": T0.replace(tzinfo=None) + timedelta(microseconds=1), "status": 200, "authorization": False}],
        )
        if storage.engine.dialect.name == "sqlite":
            texts = conn.execute(sa.text(f"SELECT datetime FROM {storage.table.name} ORDER BY id")).scalars().all()
            assert texts == ["2024-03-10 12:30:15.000000", "2024-03-10 12:30:15.000001"]
    assert fast["date"] == T0
    assert fast["authorization"] is False
    assert fast["content_length"] is None
    assert [row["date"] for row in storage.read_usage(start_date=T0, end_date=T0 + timedelta(seconds=1))] == [
        T0 + timedelta(microseconds=1),
        T0,
    ]


def test_a_refused_row_is_dropped_and_the_rest_of_its_batch_written(
    db_url: str, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    table = usage_table(table_name)
    table.append_constraint(sa.CheckConstraint("status <> 599", name=f"ck_{table_name}"))  # the database refuses
    storage = SQLStorage(db_url, table_name=table_name, metadata=table.metadata)
    records = [make_record(path=f"/ok/{i}") for i in range(5)]
    records.insert(2, make_record(path="/bad", status=599, username="secret-user-value"))
    try:
        storage.create_table()
        with pytest.raises(sa_exc.DBAPIError) as refused:
            storage.store(records)
        assert not storage.is_transient_error(refused.value)
        assert storage.read_usage() == []  # the batch was one transaction

        writer = BatchWriter(storage, batch_size=10, flush_interval=0.05)
        try:
            for record in records:
                writer.put(record)
            assert not writer.flush(30)  # a row it was given is lost: the flush says so
        finally:
            writer.shutdown(5)
        assert sorted(row["path"] for row in storage.read_usage()) == [f"/ok/{i}" for i in range(5)]
        assert (writer.rows_written, writer.rows_dropped, writer.dropped["rejected"]) == (5, 1, 1)
        # Logged with the error's type, never the row's values or the statement's parameters.
        assert "rejected" in caplog.text
        assert "secret-user-value" not in caplog.text
        # (The exception itself may quote the row: PostgreSQL's "Failing row contains ..." detail.)
    finally:
        drop_table(storage.engine, table_name)
        storage.engine.dispose()


def test_integers_a_column_cannot_hold_are_stored_as_null(storage: SQLStorage) -> None:
    storage.store([make_record(content_length=2**63, response_size=-(2**63) - 1, status=2**31)])
    [row] = storage.read_usage()
    assert (row["content_length"], row["response_size"], row["status"]) == (None, None, None)


@pytest.mark.integration
def test_copy_on_a_killed_connection_is_a_transient_error_and_the_next_batch_reconnects() -> None:
    require_server("postgresql", 5432)
    name = unique_table()
    storage = SQLStorage(POSTGRES_URL, table_name=name, engine_options={"pool_pre_ping": False, "pool_size": 1})
    try:
        storage.store([make_record(path="/first")])
        with storage.engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        killer = sa.create_engine(POSTGRES_URL)
        with killer.begin() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        killer.dispose()
        with pytest.raises(sa_exc.DBAPIError) as lost:
            storage.store([make_record(path="/lost")])
        assert lost.value.connection_invalidated
        assert storage.is_transient_error(lost.value)
        storage.store([make_record(path="/again")])
        assert sorted(row["path"] for row in storage.read_usage()) == ["/again", "/first"]
    finally:
        drop_table(storage.engine, name)
        storage.engine.dispose()


def index_columns(engine: sa.Engine, table: str) -> dict[str, list[Any]]:
    return {ix["name"]: ix["column_names"] for ix in sa.inspect(engine).get_indexes(table)}


def test_new_table_has_the_datetime_route_and_username_indexes(storage: SQLStorage) -> None:
    storage.create_table()
    name = storage.table.name
    assert index_columns(storage.engine, name) == {
        f"ix_{name}_datetime": ["datetime"],
        f"ix_{name}_route": ["route", "datetime"],
        f"ix_{name}_username": ["username", "datetime"],
    }


def test_upgrade_drops_the_indexes_earlier_versions_made_and_keeps_the_users_own(db_url: str, table_name: str) -> None:
    old = usage_table(table_name)
    for column in ("endpoint", "blueprint", "status", "method"):
        sa.Index(f"ix_{table_name}_{column}", old.c[column], old.c.datetime)
    sa.Index(f"mine_{table_name}", old.c.status)
    storage = SQLStorage(db_url, table_name=table_name)
    engine = storage.engine
    try:
        old.create(engine)
        changes = storage.upgrade_table()
        assert sorted(changes) == sorted(
            f"dropped index ix_{table_name}_{column}" for column in ("endpoint", "blueprint", "status", "method")
        )
        assert set(index_columns(engine, table_name)) == {
            f"ix_{table_name}_datetime",
            f"ix_{table_name}_route",
            f"ix_{table_name}_username",
            f"mine_{table_name}",
        }
        assert storage.upgrade_table() == []
        storage.store([make_record(status=503)])
        assert [row["status"] for row in storage.read_usage(status=503)] == [503]
    finally:
        drop_table(engine, table_name)
        engine.dispose()


def test_widths_are_those_of_the_table() -> None:
    builder = RowBuilder([*COLUMN_WIDTHS, "status"], COLUMN_WIDTHS)
    row = dict(zip(builder.columns, builder.row(make_record(method="X" * 40, trace_id=None)), strict=True))
    assert row["method"] == "X" * COLUMN_WIDTHS["method"]
    assert row["trace_id"] is None
    assert row["status"] == 200


def test_text_that_is_not_a_string_or_not_ascii_is_cleaned_value_by_value() -> None:
    builder = RowBuilder(["username", "path", "method"], {"username": 255, "path": 3, "method": 16})
    assert builder.columns == ("path", "username", "method")
    assert builder.row(make_record(username=12345, path="/a\x00bc", method="GET")) == ("/ab", "12345", "GET")
    assert builder.row(make_record(username="zoë", path="/\udcff", method="GET")) == ("/?", "zoë", "GET")


def test_a_lone_surrogate_in_the_path_still_gives_a_url() -> None:
    assert record_url(make_record(path="/a\udcff", query_string="")) == "https://example.org/a%3F"
