"""Pieces of the SQL queries the readers and erasure share: argument checks, UTC dates, filter values."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date, datetime, timezone
from typing import Any

import sqlalchemy as sa

from ..columns import COLUMN_WIDTHS
from .sql_rows import clean_text

# -- dates ----------------------------------------------------------------------------------


def as_utc(name: str, value: datetime | date | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        try:
            return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        except OverflowError:  # datetime.min with a positive offset, datetime.max with a negative one
            raise ValueError(f"{name} is out of range once converted to UTC: {value!r}") from None
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    raise ValueError(f"{name} must be a datetime or a date, got {type(value).__name__}: {value!r}")


def naive_utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


_PERIOD_FORMATS = {"hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00", "month": "%Y-%m-01 00:00:00"}


def period_expression(dialect: str, period: str, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """The start of the row's hour, day or month: a timestamp on PostgreSQL, ISO text elsewhere."""
    if dialect == "postgresql":
        return sa.func.date_trunc(period, column)
    if dialect in ("mysql", "mariadb"):
        return sa.func.date_format(column, _PERIOD_FORMATS[period])
    return sa.func.strftime(_PERIOD_FORMATS[period], column)


# -- argument checks ------------------------------------------------------------------------


_MAX_COUNT = 2**31 - 1  # the largest LIMIT every database takes; (page - 1) * limit then fits a 64-bit OFFSET


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_COUNT:
        raise ValueError(f"{name} must be an integer of at least 1 and at most {_MAX_COUNT}, got {value!r}")


def filter_values(name: str, value: Any) -> list[Any]:
    values = [value] if isinstance(value, str | int) else list(value) if isinstance(value, Iterable) else [value]
    if not values:
        raise ValueError(f"{name} filter is an empty list")
    for item in values:
        if name == "status":
            if isinstance(item, bool) or not isinstance(item, int) or not -(2**31) <= item < 2**31:
                raise ValueError(f"status must be an integer HTTP status or a list of them, got {item!r}")
        elif not isinstance(item, str):
            raise ValueError(f"{name} must be a string or a list of strings, got {item!r}")
    if name != "status":
        # As stored: without NUL (PostgreSQL refuses it in text) and cut to the column's width.
        values = [clean_text(v, COLUMN_WIDTHS.get(name)) for v in values]
    if name == "method":
        values = [v.upper() for v in values]
    return values


def chain_entry(column: sa.ColumnElement[Any], address: str) -> sa.ColumnElement[bool]:
    """``column`` (an ``X-Forwarded-For`` chain) has ``address`` as one of its entries.

    Entries are separated by ``,`` with or without a space (anonymized chains always use
    ``", "``); a prefix of a longer address (``10.0.0.1`` in ``10.0.0.12``) does not match.
    """
    # "!" as the escape character: a backslash means different things in MySQL's string literals.
    escaped = address.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    patterns = [f"{escaped},%", f"%, {escaped}", f"%,{escaped}", f"%, {escaped},%", f"%,{escaped},%"]
    return sa.or_(column == address, *(column.like(p, escape="!") for p in patterns))


# -- values read back ---------------------------------------------------------------------


def json_value(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # an old row cut by a narrow column: give back what there is
