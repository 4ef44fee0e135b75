"""Summary hooks: hits and bytes per key and period, upserted per batch on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from flask_usage_otel.storage.sql import SQLStorage
from flask_usage_otel.storage.summaries import period_starts
from flask_usage_otel.summarization import ALL_HOOKS, sumLanguage, sumRemote, sumServer, sumUrl, sumUserAgent
from tests.ftu.conftest import Database
from tests.storage.conftest import make_record

BASE = 1_710_073_800.0  # 2024-03-10 12:30:00 UTC


def _at(seconds: float, **fields: Any) -> Any:
    return make_record(timestamp=BASE + seconds, **fields)


@pytest.fixture
def storage(database: Database) -> Iterator[SQLStorage]:
    store = SQLStorage(database.url, table_name=database.table(), hooks=list(ALL_HOOKS))
    yield store
    store.engine.dispose()


def test_counts_per_key_and_period(storage: SQLStorage) -> None:
    batch1 = [
        _at(0, path="/a", response_size=100, remote_addr="203.0.113.1"),
        _at(60, path="/a", response_size=50, remote_addr="203.0.113.2"),
        _at(120, path="/b", response_size=None, accept_language="de-CH"),
    ]
    batch2 = [
        _at(3600, path="/a", response_size=1),  # the next hour, same day
        _at(86_400, path="/b", response_size=7, user_agent=None),  # the next day
    ]
    storage.store(batch1)
    storage.store(batch2)

    urls = {(r["date"], r["url"]): (r["hits"], r["transfer"]) for r in storage.get_sum(sumUrl, period="hourly")}
    hour = datetime(2024, 3, 10, 12)
    url_a, url_b = batch1[0].url, batch1[2].url
    assert urls == {
        (hour, url_a): (2, 150),
        (hour, url_b): (1, 0),
        (hour + timedelta(hours=1), url_a): (1, 1),
        (datetime(2024, 3, 11, 12), url_b): (1, 7),
    }
    daily = {(r["date"], r["url"]): r["hits"] for r in storage.get_sum("sumUrl", period="day")}
    assert daily == {
        (datetime(2024, 3, 10), url_a): 3,
        (datetime(2024, 3, 10), url_b): 1,
        (datetime(2024, 3, 11), url_b): 1,
    }
    [monthly] = storage.get_sum(sumServer, period="monthly")
    assert monthly == {"date": datetime(2024, 3, 1), "server": "shop-app", "hits": 5, "transfer": 158}
    remotes = Counter({r["remote"]: r["hits"] for r in storage.get_sum(sumRemote, period="monthly")})
    assert remotes == Counter({"203.0.113.9": 3, "203.0.113.1": 1, "203.0.113.2": 1})
    languages = {r["language"]: r["hits"] for r in storage.get_sum(sumLanguage, period="monthly")}
    assert languages == {"de-CH": 5}
    agents = {r["useragent"]: r["hits"] for r in storage.get_sum(sumUserAgent, period="monthly")}
    assert agents == {batch1[0].user_agent: 4, "": 1}
    # newest first, a key filter, paging
    assert [r["date"] for r in storage.get_sum(sumUrl, period="daily")] == sorted(daily_dates(daily), reverse=True)
    assert [r["hits"] for r in storage.get_sum(sumUrl, period="daily", target=url_a)] == [3]
    assert len(storage.get_sum(sumUrl, period="hourly", limit=2, page=2)) == 2


def daily_dates(daily: dict[tuple[datetime, str], int]) -> list[datetime]:
    return [date for date, _ in daily]


def test_a_failed_batch_counts_nothing_and_its_retry_counts_once(storage: SQLStorage) -> None:
    fail = {"on": True}

    def failing_after_summaries(conn: sa.Connection, records: Any) -> None:
        if fail["on"]:
            raise sa.exc.OperationalError("INSERT", {}, Exception("connection lost"))

    storage.batch_hooks.append(failing_after_summaries)
    batch = [_at(0), _at(1)]
    with pytest.raises(sa.exc.OperationalError):
        storage.store(batch)
    assert storage.get_sum(sumServer, period="daily") == []
    fail["on"] = False
    storage.store(batch)
    [row] = storage.get_sum(sumServer, period="daily")
    assert row["hits"] == 2


def test_long_keys_are_cut_and_still_counted(storage: SQLStorage) -> None:
    long_path = "/" + "p" * 600
    storage.store([_at(0, path=long_path, query_string=""), _at(1, path=long_path, query_string="")])
    [row] = storage.get_sum(sumUrl, period="daily")
    assert row["hits"] == 2
    assert len(row["url"]) == 255


def test_ftu_shaped_summary_table_is_set_aside_by_upgrade(database: Database) -> None:
    usage = database.table()
    engine = sa.create_engine(database.url)
    old = sa.Table(
        f"{usage}_server_daily",
        sa.MetaData(),
        sa.Column("date", sa.DateTime, primary_key=True),  # Flask-Track-Usage's key: the date alone
        sa.Column("server", sa.String(128)),
        sa.Column("hits", sa.Integer),
        sa.Column("transfer", sa.Integer),
    )
    old.create(engine)
    with engine.begin() as conn:
        conn.execute(old.insert().values(date=datetime(2024, 3, 10), server="x", hits=9, transfer=0))
    storage = SQLStorage(database.url, table_name=usage, hooks=[sumServer])
    try:
        storage.store([_at(0)])  # raw rows are written; the old-shaped table is left alone
        assert len(storage.read_usage()) == 1
        assert storage.get_sum(sumServer, period="daily")[0]["hits"] == 9
        changes = storage.upgrade_table()
        assert any(change.startswith(f"renamed {usage}_server_daily") for change in changes)
        assert sa.inspect(engine).has_table(f"{usage}_server_daily_ftu_old")
        storage.store([_at(0), _at(5)])
        [row] = storage.get_sum(sumServer, period="daily")
        assert (row["server"], row["hits"]) == ("shop-app", 2)
    finally:
        storage.engine.dispose()
        engine.dispose()


def test_period_starts_are_utc() -> None:
    hour, day, month = period_starts(BASE + 59 * 60)
    assert (hour, day, month) == (datetime(2024, 3, 10, 13), datetime(2024, 3, 10), datetime(2024, 3, 1))


def test_hooks_must_be_summary_hooks() -> None:
    with pytest.raises(TypeError, match="summary hooks"):
        SQLStorage("sqlite://", hooks=[print])
    with pytest.raises(ValueError, match="no summary hooks"):
        SQLStorage("sqlite://").get_sum(sumUrl)
