"""Arguments a database would choke on are refused with a ValueError naming them, or quoted correctly."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from flask_usage_otel.storage.sql import SQLStorage

from .conftest import drop_table, make_record, unique_table


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"page": 10**19}, "page"),
        ({"limit": 10**19}, "limit"),
        ({"page": 0}, "page"),
        ({"start_date": datetime.min.replace(tzinfo=timezone(timedelta(hours=14)))}, "start_date"),
        ({"end_date": datetime.max.replace(tzinfo=timezone(timedelta(hours=-14)))}, "end_date"),
        ({"status": 10**19}, "status"),
    ],
)
def test_out_of_range_arguments_are_refused_by_name(storage: SQLStorage, kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        storage.get_usage(**kwargs)


def test_a_filter_value_holding_nul_finds_the_row_stored_without_it(storage: SQLStorage) -> None:
    storage.store([make_record(username="ali\x00ce")])
    assert [r["username"] for r in storage.get_usage(username="ali\x00ce")] == ["alice"]


@pytest.mark.parametrize("odd", ["%s:x", "`q", '"d', "%%"])
def test_table_names_with_quotes_and_percent_signs_are_written_and_upgraded(db_url: str, odd: str) -> None:
    name = unique_table() + odd
    storage = SQLStorage(db_url, table_name=name)
    try:
        storage.store([make_record()])
        assert storage.upgrade_table() == []
        assert len(storage.get_usage(route="/items/<int:item_id>")) == 1
    finally:
        drop_table(storage.engine, name)
        storage.engine.dispose()


@pytest.mark.parametrize("reader", ["get_usage", "read_usage", "explain_usage"])
def test_a_misspelt_filter_is_a_type_error_naming_it_in_every_reader(storage: SQLStorage, reader: str) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'routee'"):
        getattr(storage, reader)(routee="/items/<int:item_id>")
