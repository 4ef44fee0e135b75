"""The compiled row function: the same values as the plain definitions it replaces, per row."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_usage_otel.columns import COLUMN_WIDTHS, COLUMNS, Kind
from flask_usage_otel.record import UsageRecord
from flask_usage_otel.storage.current_row import CURRENT_ROW_COLUMNS
from flask_usage_otel.storage.row_builder import RowBuilder, timestamp_text

from .conftest import make_record
from .test_hostile_rows import hostile_text
from .test_hostile_rows import records as hostile_records

EPOCH = datetime(1970, 1, 1)


def reference_text(timestamp: float) -> str:
    return (EPOCH + timedelta(seconds=timestamp)).isoformat(" ", "microseconds")


def test_timestamp_text_is_the_datetimes_iso_text() -> None:
    rng = random.Random(16)
    stamps = [0.0, 1.0, 1e-7, 0.4999995, 1_700_000_000.0, 4_102_444_800.9999995, 253_402_300_799.0]
    stamps += [rng.uniform(0, 4.2e9) for _ in range(20_000)]
    # Halfway between two microseconds (round half to even) and just below the next second (a carry).
    stamps += [s + (m + 0.5) / 1e6 for s in (1_700_000_000, 1_234_567_890) for m in range(0, 1_000_000, 997)]
    stamps += [s + 1 - k * 1e-7 for s in (1_700_000_000, 86_399, 951_782_399) for k in range(1, 8)]
    for stamp in stamps:
        assert timestamp_text(stamp) == reference_text(stamp), repr(stamp)


@pytest.mark.parametrize("stamp", [-1.5, -0.0000005, -86_400.25])
def test_timestamp_text_before_1970(stamp: float) -> None:
    assert timestamp_text(stamp) == reference_text(stamp)


def test_datetime_as_text_is_what_the_datetime_processor_gives() -> None:
    def iso(value: datetime) -> str:
        return value.isoformat(" ", "microseconds")

    names = [*COLUMN_WIDTHS, "status", "datetime", "speed"]
    as_text = RowBuilder(names, COLUMN_WIDTHS, {"datetime": iso}, datetime_text=True)
    processed = RowBuilder(names, COLUMN_WIDTHS, {"datetime": iso})
    for stamp in (1_700_000_000.123456, 1_700_000_000.9999996, 1_234_567_890.0000005):
        record = make_record(timestamp=stamp)
        assert as_text.row(record) == processed.row(record)


def test_a_table_with_few_columns_gets_only_those_cut_to_their_widths() -> None:
    builder = RowBuilder(["path", "status"], {"path": 8})
    assert builder.columns == ("path", "status")
    assert builder.row(make_record(path="/a/very/long/path", status=3_000_000_000)) == ("/a/very/", None)
    browser_only = RowBuilder(["ua_browser", "url"], {"ua_browser": 64, "url": 12})
    record = make_record(user_agent="Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0")
    assert browser_only.columns == ("url", "ua_browser")
    assert browser_only.row(record) == (record.url[:12], "firefox")


def test_a_dialect_with_its_own_datetime_format_keeps_its_processor(tmp_path) -> None:
    import sqlalchemy as sa
    from sqlalchemy.dialects import sqlite

    from flask_usage_otel.storage.sql_rows import Inserter
    from flask_usage_otel.storage.table import usage_table

    table = usage_table("usage_custom")
    names = [c.name for c in table.columns if c.name != "id"]
    default = Inserter(table, names, COLUMN_WIDTHS, sa.create_engine("sqlite://").dialect)
    row = dict(zip(default.builder.columns, default.builder.row(make_record(timestamp=1_700_000_000.5)), strict=True))
    assert row["datetime"] == "2023-11-14 22:13:20.500000"  # the ISO text made without a datetime
    custom = usage_table("usage_custom", sa.MetaData())
    custom.c.datetime.type = sqlite.DATETIME(storage_format="%(year)04d/%(month)02d/%(day)02d %(hour)02d:%(minute)02d")
    inserter = Inserter(custom, names, COLUMN_WIDTHS, sa.create_engine("sqlite://").dialect)
    row = dict(zip(inserter.builder.columns, inserter.builder.row(make_record(timestamp=1_700_000_000.5)), strict=True))
    assert row["datetime"] == "2023/11/14 22:13"


@settings(max_examples=300, deadline=None, database=None)
@given(
    record=hostile_records,
    status=st.integers(-(2**40), 2**40),
    method=hostile_text,
    protocol=hostile_text,
    username=st.none() | hostile_text | st.integers(),
    datetime_text=st.booleans(),
    bool_as_int=st.booleans(),
)
def test_the_current_layout_row_equals_the_general_one(
    record: UsageRecord, status: int, method: str, protocol: str, username: Any, datetime_text: bool, bool_as_int: bool
) -> None:
    """Every table this release makes gets its rows written out column by column (current_row.py);
    the general builder, which any other layout uses, must give exactly the same parameters."""
    names = [c.name for c in COLUMNS if c.kind is not Kind.ID]
    processors = {"authorization": {True: 1, False: 0}.get} if bool_as_int else {}
    builder = RowBuilder(names, COLUMN_WIDTHS, processors, datetime_text=datetime_text)
    assert builder._current is not None  # the written-out row is the one in use
    assert builder.columns == CURRENT_ROW_COLUMNS
    record = record._replace(status=status, method=method, protocol=protocol, username=username)
    assert builder.row(record) == builder._general_row(record)


@pytest.mark.parametrize("username", [0, False, 0.0, 7, ""])
def test_a_value_that_is_not_text_is_cleaned_the_same_way_however_falsy(username: Any) -> None:
    builder = RowBuilder([c.name for c in COLUMNS if c.kind is not Kind.ID], COLUMN_WIDTHS)
    record = make_record(username=username)
    row = dict(zip(builder.columns, builder.row(record), strict=True))
    assert builder.row(record) == builder._general_row(record)
    assert row["username"] == ("" if username == "" else str(username))


def test_a_column_added_to_the_list_must_be_written_out_too() -> None:
    assert sorted(CURRENT_ROW_COLUMNS) == sorted(c.name for c in COLUMNS if c.kind is not Kind.ID)
    narrower = RowBuilder([c.name for c in COLUMNS if c.kind is not Kind.ID], {**COLUMN_WIDTHS, "path": 32})
    assert narrower._current is None  # an old table's narrower widths go the general way
