"""SQLStorage on SQLite, PostgreSQL and MariaDB: round trips, widths, legacy tables, queries, summaries, retention."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from flask_usage_otel.storage.sql import COLUMN_WIDTHS, LEGACY_COLUMNS, SQLStorage

from .conftest import drop_table, make_record

T0 = datetime(2024, 3, 10, 12, 30, 15, 250000, tzinfo=timezone.utc)


def at(moment: datetime, **fields: Any) -> Any:
    return make_record(timestamp=moment.timestamp(), **fields)


def test_every_field_round_trips(storage: SQLStorage) -> None:
    storage.store([at(T0, exception="KeyError")])
    [row] = storage.read_usage()
    assert row == {
        "id": row["id"],
        "url": "https://example.org/items/7?q=shoes&page=2",
        "user_agent": {"browser": "firefox", "language": "de-CH", "platform": "linux", "version": "120.0"},
        "blueprint": "shop",
        "view_args": {"item_id": 7},
        "status": 200,
        "remote_addr": "203.0.113.9",
        "xforwardedfor": "198.51.100.7, 203.0.113.9",
        "authorization": True,
        "ip_info": {"country": "CH"},
        "path": "/items/7",
        "speed": pytest.approx(0.0125),
        "date": T0,
        "username": "alice",
        "track_var": {"campaign": "spring", "n": 3},
        "method": "GET",
        "route": "/items/<int:item_id>",
        "endpoint": "shop.item",
        "user_agent_raw": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        "content_length": 12,
        "response_size": 345,
        "server_name": "shop-app",
        "protocol": "HTTP/1.1",
        "exception": "KeyError",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "synthetic_type": None,
    }
    assert row["date"].tzinfo is not None


def test_empty_and_missing_values_round_trip(storage: SQLStorage) -> None:
    storage.store(
        [
            at(
                T0,
                endpoint=None,
                blueprint=None,
                view_args={},
                content_length=None,
                response_size=None,
                remote_addr=None,
                xforwardedfor=None,
                user_agent=None,
                accept_language=None,
                username=None,
                track_var={},
                trace_id=None,
                span_id=None,
                ip_info=None,
                authorization=False,
            )
        ]
    )
    [row] = storage.read_usage()
    assert row["user_agent"] == {"browser": None, "language": None, "platform": None, "version": None}
    assert (row["endpoint"], row["remote_addr"], row["username"], row["ip_info"]) == (None, None, None, None)
    assert (row["view_args"], row["track_var"], row["authorization"]) == ({}, {}, False)


def test_ipv6_forwarded_chains_and_long_urls_fit(storage: SQLStorage) -> None:
    chain = ", ".join(f"2001:db8:85a3:8d3:1319:8a2e:370:{i:04x}" for i in range(20))  # 780 characters
    long_path = "/search/" + "a" * 1992  # a 2,000-character path
    storage.store(
        [
            at(
                T0,
                remote_addr="2001:db8:85a3:8d3:1319:8a2e:370:7348",
                xforwardedfor=chain,
                path=long_path,
                query_string="",
            )
        ]
    )
    [row] = storage.read_usage()
    assert row["remote_addr"] == "2001:db8:85a3:8d3:1319:8a2e:370:7348"
    assert row["xforwardedfor"] == chain
    assert row["path"] == long_path
    assert row["url"] == "https://example.org" + long_path


def test_over_long_values_are_cut_to_the_documented_width(storage: SQLStorage) -> None:
    huge_ua = "Mozilla/5.0 " + "x" * 100_000
    storage.store(
        [
            at(
                T0,
                user_agent=huge_ua,
                path="/" + "p" * 10_000,
                query_string="q=" + "u" * 10_000,
                route="/" + "r" * 1000,
                username="u" * 1000,
                xforwardedfor="10.0.0.1, " * 500,
                track_var={"big": "v" * 50_000},
                exception="E" * 1000,
            )
        ]
    )
    [row] = storage.read_usage()
    assert row["user_agent_raw"] == huge_ua[: COLUMN_WIDTHS["user_agent_raw"]]
    assert len(row["url"]) == COLUMN_WIDTHS["url"]
    assert row["path"] == ("/" + "p" * 10_000)[: COLUMN_WIDTHS["path"]]
    assert len(row["route"]) == COLUMN_WIDTHS["route"]
    assert len(row["username"]) == COLUMN_WIDTHS["username"]
    assert len(row["xforwardedfor"]) == COLUMN_WIDTHS["xforwardedfor"]
    assert len(row["exception"]) == COLUMN_WIDTHS["exception"]
    # Cut JSON stays JSON and says it was cut.
    assert isinstance(row["track_var"], dict)
    assert row["track_var"]["_truncated"].startswith('{"big":"vvv')


def test_unicode_and_nul_characters(storage: SQLStorage) -> None:
    emoji_path = "/caf\u00e9/\U0001f600/" + "\U0001f680" * 3000  # 4-byte characters beyond the path width
    storage.store(
        [
            at(
                T0,
                path=emoji_path,
                query_string="",
                username="j\u00fcrgen\x00",
                user_agent="Agent\x00/1.0 \u2603",
                track_var={"name": "\u00e5\u00e4\u00f6\x00", "emoji": "\U0001f389"},
                view_args={"slug": "na\u00efve\ud800"},  # a lone surrogate from a bad WSGI decode
            )
        ]
    )
    [row] = storage.read_usage()
    assert row["path"] == emoji_path[: COLUMN_WIDTHS["path"]]
    assert row["username"] == "j\u00fcrgen"
    assert row["user_agent_raw"] == "Agent/1.0 \u2603"
    # Inside JSON a NUL is the escape \u0000, which every database accepts: kept as it was.
    assert row["track_var"] == {"name": "\u00e5\u00e4\u00f6\x00", "emoji": "\U0001f389"}
    assert row["view_args"] == {"slug": "na\u00efve?"}


def test_one_batch_is_one_transaction(storage: SQLStorage) -> None:
    storage.store([at(T0 + timedelta(seconds=i), status=200 + i) for i in range(50)])
    rows = storage.read_usage(limit=100)
    assert [r["status"] for r in rows] == [249 - i for i in range(50)]


# -- get_usage ---------------------------------------------------------------------------------


@pytest.fixture
def filled(storage: SQLStorage) -> SQLStorage:
    """Ten rows one hour apart, alternating routes, methods, users and statuses."""
    records = []
    for i in range(10):
        records.append(
            at(
                T0 + timedelta(hours=i),
                route="/a" if i % 2 else "/b",
                endpoint="a" if i % 2 else "b",
                blueprint="bp" if i < 5 else None,
                method="POST" if i % 3 == 0 else "GET",
                status=500 if i == 4 else 200,
                username=f"user{i % 3}",
                remote_addr=f"10.0.0.{i % 2}",
                response_size=100 * i,
                content_length=i,
            )
        )
    storage.store(records)
    return storage


def hours(rows: list[dict[str, Any]]) -> list[int]:
    return [int((r["date"] - T0).total_seconds() // 3600) for r in rows]


def test_get_usage_is_newest_first_and_pages(filled: SQLStorage) -> None:
    assert hours(filled.read_usage()) == list(range(9, -1, -1))
    assert hours(filled.read_usage(limit=4, page=1)) == [9, 8, 7, 6]
    assert hours(filled.read_usage(limit=4, page=3)) == [1, 0]
    assert filled.read_usage(limit=4, page=4) == []


def test_get_usage_date_range_is_inclusive_and_accepts_naive_utc_and_other_zones(filled: SQLStorage) -> None:
    start, end = T0 + timedelta(hours=2), T0 + timedelta(hours=4)
    assert hours(filled.read_usage(start, end)) == [4, 3, 2]
    assert hours(filled.read_usage(start.replace(tzinfo=None), end.replace(tzinfo=None))) == [4, 3, 2]
    plus_two = timezone(timedelta(hours=2))
    assert hours(filled.read_usage(start.astimezone(plus_two), end.astimezone(plus_two))) == [4, 3, 2]
    assert hours(filled.read_usage(start_date=T0 + timedelta(hours=8))) == [9, 8]
    assert hours(filled.read_usage(end_date=T0 + timedelta(minutes=59))) == [0]
    assert len(filled.read_usage(date(2024, 3, 10), date(2024, 3, 11))) == 10


def test_get_usage_filters(filled: SQLStorage) -> None:
    assert hours(filled.read_usage(route="/a")) == [9, 7, 5, 3, 1]
    assert hours(filled.read_usage(endpoint="b", blueprint="bp")) == [4, 2, 0]
    assert hours(filled.read_usage(status=500)) == [4]
    assert hours(filled.read_usage(status=[500, 404])) == [4]
    assert hours(filled.read_usage(method="post")) == [9, 6, 3, 0]
    assert hours(filled.read_usage(username=["user1", "user2"], route="/a")) == [7, 5, 1]
    assert hours(filled.read_usage(T0 + timedelta(hours=5), route="/b", method="GET")) == [8]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_date": T0, "end_date": T0 - timedelta(days=1)}, "is before start_date"),
        ({"page": 0}, "page must be an integer of at least 1"),
        ({"limit": 0}, "limit must be an integer of at least 1"),
        ({"limit": "10"}, "limit must be an integer"),
        ({"start_date": "2024-01-01"}, "start_date must be a datetime or a date"),
        ({"status": "500"}, "status must be an integer"),
        ({"route": 5}, "route must be a string"),
        ({"method": []}, "method filter is an empty list"),
    ],
)
def test_get_usage_refuses_bad_arguments(storage: SQLStorage, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        storage.read_usage(**kwargs)


def test_iter_usage_streams_every_row_oldest_first(filled: SQLStorage) -> None:
    assert hours(list(filled.iter_usage(chunk_size=3))) == list(range(10))
    assert hours(list(filled.iter_usage(T0 + timedelta(hours=7), chunk_size=2))) == [7, 8, 9]


# -- summaries -----------------------------------------------------------------------------------


def test_summary_by_route_per_day(filled: SQLStorage) -> None:
    day = datetime(2024, 3, 10, tzinfo=timezone.utc)
    next_day = day + timedelta(days=1)
    # T0 is 12:30, so hours 0..9 are 12:30..21:30 of the same day.
    assert filled.get_summary(by="route", period="day") == [
        {"period": day, "route": "/a", "hits": 5, "request_bytes": 25, "response_bytes": 2500, "avg_speed": 0.0125},
        {"period": day, "route": "/b", "hits": 5, "request_bytes": 20, "response_bytes": 2000, "avg_speed": 0.0125},
    ]
    assert filled.get_summary(by="route", period="day", start_date=next_day) == []


def test_summary_per_hour_and_month_and_other_keys(filled: SQLStorage) -> None:
    per_hour = filled.get_summary(by="remote_addr", period="hour")
    assert [(r["period"].hour, r["remote_addr"], r["hits"]) for r in per_hour] == [
        (12 + i, f"10.0.0.{i % 2}", 1) for i in range(10)
    ]
    [month] = filled.get_summary(by="server", period="month")
    assert month["period"] == datetime(2024, 3, 1, tzinfo=timezone.utc)
    assert (month["server"], month["hits"]) == ("shop-app", 10)
    by_language = filled.get_summary(by="language", period="month", end_date=T0 + timedelta(hours=2))
    assert [(r["language"], r["hits"]) for r in by_language] == [("de-CH", 3)]
    by_ua = filled.get_summary(by="user_agent", period="day")
    assert [r["hits"] for r in by_ua] == [10]
    by_url = filled.get_summary(by="url", period="day")
    assert [(r["url"], r["hits"]) for r in by_url] == [("https://example.org/items/7?q=shoes&page=2", 10)]


def test_summary_refuses_bad_arguments(storage: SQLStorage) -> None:
    with pytest.raises(ValueError, match="by must be one of"):
        storage.get_summary(by="colour")
    with pytest.raises(ValueError, match="period must be one of"):
        storage.get_summary(period="week")


# -- retention and erasure -------------------------------------------------------------------------


def test_prune_deletes_old_rows_in_chunks(storage: SQLStorage) -> None:
    now = datetime.now(timezone.utc)
    storage.store([at(now - timedelta(days=40, minutes=i)) for i in range(25)])
    storage.store([at(now - timedelta(days=1, minutes=i)) for i in range(5)])
    assert storage.prune(timedelta(days=30), chunk_size=7) == 25
    assert len(storage.read_usage()) == 5
    assert storage.prune(timedelta(days=30)) == 0
    with pytest.raises(ValueError, match="positive timedelta"):
        storage.prune(timedelta(0))


def test_forget_deletes_a_users_rows(filled: SQLStorage) -> None:
    assert filled.forget(username="user0") == 4
    assert filled.forget(remote_addr="10.0.0.1", chunk_size=2) == 3  # odd hours not already forgotten
    assert {r["username"] for r in filled.read_usage()} == {"user1", "user2"}
    with pytest.raises(ValueError, match="needs a username"):
        filled.forget()


# -- a table made by Flask-Track-Usage 2.0 ---------------------------------------------------------------


def legacy_table(name: str) -> sa.Table:
    """Flask-Track-Usage 2.0's table, column for column."""
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("url", sa.String(128)),
        sa.Column("ua_browser", sa.String(16)),
        sa.Column("ua_language", sa.String(16)),
        sa.Column("ua_platform", sa.String(16)),
        sa.Column("ua_version", sa.String(16)),
        sa.Column("blueprint", sa.String(16)),
        sa.Column("view_args", sa.String(64)),
        sa.Column("status", sa.Integer),
        sa.Column("remote_addr", sa.String(24)),
        sa.Column("xforwardedfor", sa.String(24)),
        sa.Column("authorization", sa.Boolean),
        sa.Column("ip_info", sa.String(1024)),
        sa.Column("path", sa.String(32)),
        sa.Column("speed", sa.Float),
        sa.Column("datetime", sa.DateTime),
        sa.Column("username", sa.String(128)),
        sa.Column("track_var", sa.String(128)),
    )


def test_legacy_table_is_written_within_its_columns_and_then_upgraded(db_url: str, table_name: str) -> None:
    old = legacy_table(table_name)
    assert tuple(c.name for c in old.columns) == LEGACY_COLUMNS
    storage = SQLStorage(db_url, table_name=table_name)
    engine = storage.engine
    try:
        old.create(engine)
        with engine.begin() as conn:
            conn.execute(old.insert(), [{"url": "http://old/", "datetime": datetime(2020, 1, 1), "status": 200}])
        assert "route" in storage.missing_columns()
        long_xff = "2001:db8::1, 2001:db8::2, 2001:db8::3"  # 37 characters into a VARCHAR(24)
        storage.store([at(T0, xforwardedfor=long_xff, path="/" + "x" * 40, query_string="")])
        new, old_row = storage.read_usage()
        # Cut to the old widths where the database enforces them; SQLite keeps text whole.
        enforced = engine.dialect.name != "sqlite"
        assert new["xforwardedfor"] == (long_xff[:24] if enforced else long_xff)
        assert new["path"] == ("/" + "x" * 31 if enforced else "/" + "x" * 40)
        assert new["route"] is None
        assert new["method"] is None
        assert new["view_args"] == {"item_id": 7}
        assert old_row["url"] == "http://old/"
        assert old_row["date"] == datetime(2020, 1, 1, tzinfo=timezone.utc)
        with pytest.raises(ValueError, match="upgrade-table"):
            storage.read_usage(route="/items/<int:item_id>")

        changes = storage.upgrade_table()
        assert "added column route" in changes
        assert any(c.startswith("created index") for c in changes)
        assert storage.missing_columns() == []
        indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes(table_name)}
        assert f"ix_{table_name}_datetime" in indexes
        storage.store([at(T0 + timedelta(hours=1), xforwardedfor=long_xff)])
        newest = storage.read_usage(route="/items/<int:item_id>")
        assert newest[0]["route"] == "/items/<int:item_id>"
        assert newest[0]["xforwardedfor"] == long_xff  # widened, or never cut (SQLite)
        assert storage.upgrade_table() == []
    finally:
        drop_table(engine, table_name)
        engine.dispose()


def test_missing_table_is_created_only_when_allowed(db_url: str, table_name: str) -> None:
    storage = SQLStorage(db_url, table_name=table_name, create_tables=False)
    try:
        with pytest.raises(RuntimeError, match="does not exist"):
            storage.read_usage()
        storage.create_table()
        assert storage.read_usage() == []
    finally:
        drop_table(storage.engine, table_name)
        storage.engine.dispose()


def test_constructor_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one of conn_str, engine or db"):
        SQLStorage()
    with pytest.raises(ValueError, match="exactly one"):
        SQLStorage("sqlite://", engine=sa.create_engine("sqlite://"))


def test_in_memory_sqlite_is_shared_with_the_writer_thread() -> None:
    import threading

    storage = SQLStorage("sqlite://")
    thread = threading.Thread(target=storage.store, args=([at(T0)],))
    thread.start()
    thread.join()
    assert len(storage.read_usage()) == 1
