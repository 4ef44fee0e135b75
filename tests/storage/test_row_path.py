"""The writer's row path: empty columns written as NULL in the statement, bools as ints, records built
through their slots; every value read back as it was given."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import sqlalchemy as sa

from flask_usage_otel.record import UsageRecord
from flask_usage_otel.storage.sql import SQLStorage

from .conftest import make_record

NULLABLE = ("blueprint", "endpoint", "username", "exception", "trace_id", "span_id", "remote_addr")


def stored(storage: SQLStorage) -> list[dict[str, Any]]:
    table = storage.table
    with storage.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.select(table).order_by(table.c.id))]


def test_columns_empty_in_all_some_or_no_rows_of_a_batch_read_back_as_given(storage: SQLStorage) -> None:
    records = [
        make_record(username=None, exception=None, authorization=True, content_length=None),
        make_record(username="bob", exception=None, authorization=False, content_length=None),
        make_record(username=None, exception="KeyError", authorization=True, content_length=None, trace_id=None),
    ]
    storage.store(records)
    rows = stored(storage)
    assert [r["username"] for r in rows] == [None, "bob", None]
    assert [r["exception"] for r in rows] == [None, None, "KeyError"]
    assert [r["content_length"] for r in rows] == [None, None, None]
    assert [r["trace_id"] for r in rows] == [records[0].trace_id, records[1].trace_id, None]
    assert [bool(r["authorization"]) for r in rows] == [True, False, True]
    assert all(r["authorization"] in (0, 1) for r in rows)  # stored as a number, read back as bool or int
    assert [r["status"] for r in rows] == [200, 200, 200]


def test_the_statements_for_patterns_of_empty_columns_stay_bounded(tmp_path: Any) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}")
    patterns = list(itertools.islice(itertools.product((None, "x"), repeat=len(NULLABLE)), 70))
    for values in patterns:  # one batch per pattern: each needs a statement of its own
        storage.store([make_record(**dict(zip(NULLABLE, values, strict=True)))])
    assert len(storage._inserter()._statements) <= 64
    rows = stored(storage)
    assert len(rows) == 70
    assert [tuple(row[name] for name in NULLABLE) for row in rows] == patterns


def test_a_record_is_an_immutable_value_equal_to_one_from_the_constructor() -> None:
    record = make_record()
    built = UsageRecord(**record._asdict())
    assert type(built) is UsageRecord
    assert built == record
    assert built.as_dict() == record.as_dict()
    with pytest.raises(AttributeError):
        built.status = 500  # type: ignore[misc]
