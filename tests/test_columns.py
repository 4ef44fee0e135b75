"""columns.COLUMNS is the one list of the usage row's columns: everything that lists them derives from it."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from flask_usage_otel.cli import CSV_COLUMNS
from flask_usage_otel.columns import (
    COLUMN_WIDTHS,
    COLUMNS,
    EXPORT_COLUMNS,
    JSON_COLUMNS,
    LEGACY_COLUMNS,
    PLAIN_COLUMNS,
    RECORD_FIELD_NAMES,
    RECORD_FIELDS,
    TEXT_COLUMNS,
    UNSTORED_FIELDS,
    Kind,
)
from flask_usage_otel.record import UsageRecord
from flask_usage_otel.storage.legacy_rows import legacy_usage_dict
from flask_usage_otel.storage.reading import usage_dict
from flask_usage_otel.storage.row_builder import DERIVED_TEXT
from flask_usage_otel.storage.sql_rows import RowBuilder
from flask_usage_otel.storage.table import usage_table

# Record fields that are not a column of their own: they make up the stored ``url``.
URL_PARTS = {"scheme", "host", "script_root", "query_string"}


def test_the_record_type_is_made_of_the_field_list() -> None:
    assert UsageRecord._fields == RECORD_FIELD_NAMES
    assert UsageRecord.__annotations__ == {f.name: f.type for f in RECORD_FIELDS}
    optional = [f.name for f in RECORD_FIELDS if f.optional]
    record = UsageRecord(*range(len(RECORD_FIELDS) - len(optional)))
    assert [getattr(record, name) for name in optional] == [None] * len(optional)


def test_every_record_field_is_stored_but_the_unstored_and_every_column_comes_from_a_record_field() -> None:
    fields = set(UsageRecord._fields)
    sources = {c.record_field for c in COLUMNS if c.record_field is not None}
    assert sources - fields == {"url"}  # a property of the record, built from URL_PARTS and path
    assert isinstance(UsageRecord.url, property)
    assert fields - sources == URL_PARTS | set(UNSTORED_FIELDS)
    assert [c.name for c in COLUMNS if c.record_field is None] == ["id"]


def test_the_captured_headers_are_a_record_field_and_never_a_column() -> None:
    """``headers`` (TRACK_USAGE_OTEL_LOGS_HEADERS) is for log records: no column, row, export or reader has it."""
    assert UNSTORED_FIELDS == ("headers",)
    (field,) = [f for f in RECORD_FIELDS if f.name == "headers"]
    assert field.optional
    assert not field.stored
    assert all(c.record_field not in UNSTORED_FIELDS for c in COLUMNS)
    assert "headers" not in {c.name for c in COLUMNS} | set(EXPORT_COLUMNS) | set(CSV_COLUMNS)
    assert "headers" not in usage_table("t").columns
    builder = RowBuilder([c.name for c in COLUMNS], COLUMN_WIDTHS)
    assert "headers" not in builder.columns
    captured = {"http.request.header.x-request-id": ["req-77"]}
    record = UsageRecord(*range(sum(not f.optional for f in RECORD_FIELDS)), headers=captured)
    assert record.headers == captured
    assert record._asdict()["headers"] == captured  # as_dict gives every field, this one included


def test_table_is_built_from_the_list() -> None:
    table = usage_table("t")
    assert [c.name for c in table.columns] == [c.name for c in COLUMNS]
    for column in COLUMNS:
        sql = table.c[column.name]
        if column.kind is Kind.TEXT:
            assert isinstance(sql.type, sa.String)
            assert sql.type.length == column.width
        elif column.kind is Kind.JSON:
            assert isinstance(sql.type, sa.Text)
            assert column.width == 16_000
        else:
            assert column.width is None
    assert table.c.datetime.nullable is False
    assert [c.name for c in table.primary_key] == ["id"]
    assert [c.name for c in usage_table("p", partition_by_day=True).primary_key] == ["id", "datetime"]


def test_derived_lists_partition_the_columns() -> None:
    names = [c.name for c in COLUMNS]
    assert sorted([*TEXT_COLUMNS, *JSON_COLUMNS, *PLAIN_COLUMNS, "id"]) == sorted(names)
    assert set(COLUMN_WIDTHS) == {*TEXT_COLUMNS, *JSON_COLUMNS}
    assert LEGACY_COLUMNS[:2] == ("id", "url")
    assert LEGACY_COLUMNS[-1] == "track_var"
    assert len(LEGACY_COLUMNS) == 18
    builder = RowBuilder(names, COLUMN_WIDTHS)
    copied = [c for c in TEXT_COLUMNS if c not in DERIVED_TEXT]
    assert builder.columns == (*copied, *DERIVED_TEXT, *JSON_COLUMNS, *PLAIN_COLUMNS)
    assert set(DERIVED_TEXT) <= set(TEXT_COLUMNS)


def test_export_has_every_column_once() -> None:
    assert CSV_COLUMNS == EXPORT_COLUMNS
    assert len(set(c.export_rank for c in COLUMNS)) == len(COLUMNS)
    assert sorted(EXPORT_COLUMNS) == sorted("date" if n == "datetime" else n for n in (c.name for c in COLUMNS))
    assert EXPORT_COLUMNS[:3] == ("id", "date", "method")


def test_readers_give_every_column_under_its_key() -> None:
    row = {c.name: None for c in COLUMNS} | {
        "id": 7,
        "datetime": datetime(2024, 1, 2, 3, 4, 5),
        "ua_browser": "firefox",
        "view_args": '{"a":1}',
        "authorization": 1,
    }
    decoded = usage_dict(row)
    assert decoded["user_agent"] == {"browser": "firefox", "language": None, "platform": None, "version": None}
    assert decoded["date"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert decoded["view_args"] == {"a": 1}
    assert decoded["authorization"] is True
    assert decoded["id"] == 7
    flat = [k for k in decoded if k != "user_agent"] + [f"ua_{k}" for k in decoded["user_agent"]]
    assert sorted(flat) == sorted(EXPORT_COLUMNS)
    legacy = legacy_usage_dict(row)
    legacy_keys = [("date" if n == "datetime" else n) for n in LEGACY_COLUMNS if n != "id" and not n.startswith("ua_")]
    assert [k for k in legacy if k != "user_agent"] == legacy_keys
    assert list(legacy)[1] == "user_agent"
    assert legacy["view_args"] == '{"a": 1}'


def test_the_sql_guide_lists_the_columns_and_widths() -> None:
    text = " ".join(Path(__file__).parent.parent.joinpath("docs", "sql.md").read_text().split())
    section = text[text.index("## The table") :]
    lists = re.findall(r"\(`([a-z_, ]+)`\) plus `([a-z_, ]+)`", section)[0]
    assert tuple(lists[0].split(", ")) == LEGACY_COLUMNS
    assert tuple(lists[1].split(", ")) == tuple(c.name for c in COLUMNS if not c.is_legacy)
    for name in ("url", "path", "route", "remote_addr"):
        assert f"`{name}` {COLUMN_WIDTHS[name]:,}".replace(",", "") in section.replace(",", "")
