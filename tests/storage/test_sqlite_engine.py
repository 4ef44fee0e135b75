"""The SQLite engine SQLStorage makes from a URL: WAL, so readers and several writers get along."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import sqlalchemy as sa

from flask_usage_otel import SQLStorage
from flask_usage_otel.record import UsageRecord


def _record(n: int) -> UsageRecord:
    return UsageRecord(
        time.time(), 0.001, "GET", "http", "h", "", f"/r/{n}", "", "/r/<int:n>", "r", None, {"n": n}, 200, None, 2,
        "192.0.2.1", None, None, None, False, None, "app", "HTTP/1.1", {},
    )  # fmt: skip


def test_file_database_uses_write_ahead_log(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}")
    storage.store([_record(1)])
    with storage.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_two_storages_on_one_file_both_write(tmp_path: Path) -> None:
    # Two gunicorn workers with the same URL: every batch of both lands, none fails on the lock.
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = SQLStorage(url), SQLStorage(url)
    first.store([_record(0)])
    errors: list[BaseException] = []

    def write(storage: SQLStorage, base: int) -> None:
        try:
            for i in range(40):
                storage.store([_record(base + j) for j in range(i * 25, i * 25 + 25)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, k * 10_000)) for k, s in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with first.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM flask_usage")).scalar() == 1 + 2 * 40 * 25
