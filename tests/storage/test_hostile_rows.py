"""Hostile records through SQLStorage on SQLite, PostgreSQL and MariaDB: never an INSERT error, and
every field read back by ``get_usage`` is what was stored, or cut exactly as the README's "The table"
section documents (column widths, NUL removed, JSON over 16,000 characters -> ``{"_truncated": ...}``,
an integer the column cannot hold -> NULL)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_usage_otel.record import UsageRecord
from flask_usage_otel.storage.sql import COLUMN_WIDTHS, SQLStorage

from .conftest import make_record

JSON_LIMIT = 16_000
INJECTION = [
    "'; DROP TABLE flask_usage; --",
    "' OR '1'='1",
    '"; DELETE FROM flask_usage WHERE ""="',
    "\\'; SELECT pg_sleep(10); --",
    "1); DROP TABLE x; /*",
    "%s %(x)s ? :name $1",
    '"} 1\nevil_metric{a="',
    "\\",
    "\x00",
    "\r\n",
]

# Every character a WSGI server can hand over (no lone surrogates: the request decoding replaces them),
# with 4-byte ones, NUL and control characters drawn often.
characters = st.one_of(
    st.characters(exclude_categories=["Cs"]),
    st.sampled_from(["\x00", "\n", "'", '"', "\\", "😀", "\U0001d518", "\U0010fffd", "é", "\u202e", "\ufeff"]),
)
hostile_text = st.one_of(
    st.text(characters, max_size=80),
    st.sampled_from(INJECTION),
    # Over and around the widths: 1024 (user agent, forwarded chain), 2048 (path), 4096 (url).
    st.tuples(st.text(characters, min_size=1, max_size=3), st.integers(500, 5000)).map(lambda t: t[0] * t[1]),
)
forwarded_chains = st.lists(st.one_of(st.ip_addresses().map(str), hostile_text), min_size=1, max_size=300).map(
    ", ".join
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(hostile_text, inner, max_size=5),
    max_leaves=20,
)
json_objects = st.one_of(
    st.dictionaries(hostile_text, json_values, max_size=5),
    # Over 16,000 characters once serialised, and some mostly of characters JSON escapes.
    st.tuples(st.sampled_from(["x", '"', "\\", "\x00", "😀", "\n"]), st.integers(15_000, 40_000)).map(
        lambda t: {"big": t[0] * t[1]}
    ),
)
sizes = st.one_of(st.none(), st.integers(0, 2**63 - 1), st.integers(2**63, 2**80))

records = st.builds(
    make_record,
    timestamp=st.floats(0, 4_000_000_000),
    speed=st.floats(0, 1e6),
    path=hostile_text.map(lambda t: "/" + t),
    query_string=hostile_text,
    host=hostile_text,
    route=hostile_text,
    endpoint=st.none() | hostile_text,
    blueprint=st.none() | hostile_text,
    view_args=json_objects,
    track_var=json_objects,
    ip_info=st.none() | json_objects,
    content_length=sizes,
    response_size=sizes,
    remote_addr=st.none() | st.ip_addresses().map(str) | hostile_text,
    xforwardedfor=st.none() | forwarded_chains,
    user_agent=st.none() | hostile_text,
    accept_language=st.none() | hostile_text,
    username=st.none() | hostile_text,
    server_name=hostile_text,
    exception=st.none() | hostile_text,
)


def cut(value: str | None, column: str) -> str | None:
    """What the README promises for a text column: NUL removed, at most its width."""
    return None if value is None else value.replace("\x00", "")[: COLUMN_WIDTHS[column]]


def check_json(stored: Any, value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= JSON_LIMIT:
        assert stored == json.loads(text)  # verbatim (tuples come back as lists)
        return
    assert list(stored) == ["_truncated"], stored
    kept = stored["_truncated"]
    assert kept is True or (isinstance(kept, str) and 0 < len(kept) < JSON_LIMIT and text.startswith(kept))


def check_row(row: dict[str, Any], record: UsageRecord) -> None:
    text_fields = {
        "url": record.url,
        "path": record.path,
        "route": record.route,
        "endpoint": record.endpoint,
        "blueprint": record.blueprint,
        "remote_addr": record.remote_addr,
        "xforwardedfor": record.xforwardedfor,
        "user_agent_raw": record.user_agent,
        "username": record.username,
        "server_name": record.server_name,
        "exception": record.exception,
        "method": record.method,
        "protocol": record.protocol,
    }
    for column, value in text_fields.items():
        assert row[column] == cut(value, column), column
    ua = record.ua
    assert row["user_agent"] == {
        "browser": cut(ua.browser, "ua_browser"),
        "language": cut(record.language, "ua_language"),
        "platform": cut(ua.platform, "ua_platform"),
        "version": cut(ua.version, "ua_version"),
    }
    for column in ("view_args", "track_var", "ip_info"):
        value = getattr(record, column)
        if value is None:
            assert row[column] is None
        else:
            check_json(row[column], value)
    for column in ("content_length", "response_size"):
        value = getattr(record, column)
        assert row[column] == (value if value is None or value < 2**63 else None), column
    assert row["status"] == record.status
    assert row["authorization"] is record.authorization
    assert row["speed"] == record.speed
    assert row["date"] == datetime.fromtimestamp(record.timestamp, timezone.utc)
    assert (row["trace_id"], row["span_id"]) == (record.trace_id, record.span_id)


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(record=records)
def test_hostile_record_round_trips_or_is_cut_as_documented(storage: SQLStorage, record: UsageRecord) -> None:
    storage.store([record])  # an INSERT error fails the test here
    try:
        rows = storage.read_usage(limit=5)
        assert len(rows) == 1
        check_row(rows[0], record)
    finally:
        with storage.engine.begin() as conn:
            conn.execute(sa.delete(storage.table))


def test_a_hostile_row_does_not_spoil_its_batch(storage: SQLStorage) -> None:
    """One executemany with injection strings, 4-byte characters, NUL and oversize values next to a plain row."""
    hostile = make_record(
        path="/" + "😀" * 3000,
        user_agent="'; DROP TABLE flask_usage; --\x00" * 100,
        xforwardedfor=", ".join(["10.0.0.1"] * 2000),
        content_length=10**30,
        track_var={"q": '"\\\x00' * 20_000},
        username="Robert'); DROP TABLE students;--",
    )
    plain = make_record(timestamp=hostile.timestamp + 1)
    storage.store([hostile, plain])
    newest, oldest = storage.read_usage(limit=5)
    check_row(newest, plain)
    check_row(oldest, hostile)
    assert oldest["path"] == "/" + "😀" * 2047
    assert oldest["content_length"] is None
    assert storage.forget(username="Robert'); DROP TABLE students;--") == 1
