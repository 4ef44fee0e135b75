"""Faults under load, with real gunicorn workers writing SQL rows to a real PostgreSQL on loopback.

- PostgreSQL unreachable mid-load (a TCP proxy in front of it refuses and resets every connection, as a
  stopped server does; the shared server itself keeps running): no request fails, and every request ends
  up either as exactly one row or as one count in ``flask_usage_storage_rows_dropped_total``.
- A table locked for seconds: requests do not wait for the database (p99 compared with and without).
- A worker killed with SIGKILL: the others keep serving, counters never go backwards, and what is lost
  is exactly the rows the killed worker still had queued; a SIGTERM loses nothing.

Each request carries its number (``?n=17``), which is stored in the row's ``url``, so rows and
requests are matched one to one. Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from tests.integration.gunicorn_harness import (
    Gunicorn,
    postgres_usage_database,
    request_counts,
    run_gunicorn,
    scrape,
)
from tests.integration.load import Load, p99
from tests.integration.servers import wait_until
from tests.integration.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

WORKERS = 3
FAST_WRITER = {"TRACK_USAGE_QUEUE_SIZE": 60, "TRACK_USAGE_BATCH_SIZE": 20, "TRACK_USAGE_FLUSH_INTERVAL": 0.05}
# Nothing is written before a graceful stop: every row stays in its worker's queue.
HOLDING_WRITER = {"TRACK_USAGE_BATCH_SIZE": 5000, "TRACK_USAGE_FLUSH_INTERVAL": 600}
LOCK_SECONDS = 4.0


def app_spec(config: dict[str, object], otel: bool = False) -> str:
    """The gunicorn app argument for the fault app with this config."""
    return f"tests.integration.fault_app:create_app(config={config!r}, otel={otel})"


@pytest.fixture
def database() -> Iterator[str]:
    """A PostgreSQL database of this test's own, with the usage table created."""
    with postgres_usage_database("usage_faults") as url:
        yield url


def stored_numbers(url: str) -> Counter[int]:
    """How many rows each request number has."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            urls = conn.exec_driver_sql("SELECT url FROM flask_usage").scalars().all()
    finally:
        engine.dispose()
    numbers: Counter[int] = Counter()
    for value in urls:
        match = re.search(r"[?&]n=(\d+)", value)
        assert match, f"a row with no request number: {value!r}"
        numbers[int(match.group(1))] += 1
    return numbers


def storage_counters(server: Gunicorn) -> dict[str, float]:
    _, samples = scrape(server.base_url)
    return {name: value for (name, _labels), value in samples.items() if name.startswith("flask_usage_storage_")}


def queued_rows(server: Gunicorn) -> float:
    _, samples = scrape(server.base_url)
    return sum(value for (name, _labels), value in samples.items() if name == "flask_usage_storage_queue_rows")


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def test_postgres_unreachable_mid_load_loses_no_request_and_counts_every_row(tmp_path: Path, database: str) -> None:
    proxy = TcpProxy(5432)
    proxied = sa.make_url(database).set(port=proxy.port).render_as_string(hide_password=False)
    env = {"USAGE_DB_URL": proxied}
    spec = app_spec(FAST_WRITER)
    with proxy, run_gunicorn(tmp_path, workers=WORKERS, multiproc_dir=tmp_path, extra_env=env, app=spec) as server:
        with Load(server.base_url) as load:
            load.wait_for(150)
            try:
                proxy.mode = "down"
                stopped_at = load.count()
                load.wait_for(stopped_at + 400)  # a bounded amount of traffic while the database is unreachable
            finally:
                proxy.mode = "pass"
            restarted_at = load.count()
            served_while_down = restarted_at - stopped_at
            # Each writer retries after its backoff (up to 15 s): wait until no queue is full any more (a
            # stuck worker's holds 60), so the requests after that are written too, whatever the backoff was.
            wait_until(lambda: queued_rows(server) < 40, 30, "the writers to drain their queues")
            load.wait_for(load.count() + 150)
        counters = storage_counters(server)
        assert server.stop() == 0  # SIGTERM: every worker writes out its queue
    sent = [s.n for s in load.sent]
    assert load.errors == []
    assert Counter(s.status for s in load.sent) == {200: len(sent)}  # no request noticed the outage
    numbers = stored_numbers(database)
    duplicates = [n for n, copies in numbers.items() if copies > 1]
    assert duplicates == []
    assert set(numbers) <= set(sent)
    dropped = counters["flask_usage_storage_rows_dropped_total"]
    print(
        f"\nPostgreSQL outage: {len(sent)} requests ({served_while_down} while it was down), "
        f"{len(numbers)} rows written, {dropped:.0f} dropped, {counters['flask_usage_storage_write_errors_total']:.0f}"
        " failed writes"
    )
    assert len(numbers) + dropped == len(sent)  # every request is a row or a counted drop
    assert counters["flask_usage_storage_write_errors_total"] > 0  # the database really was down
    assert dropped > 0  # the queues (60 rows per worker) really filled up
    assert len(numbers) > 300  # rows from before, during (queued) and after the outage


def test_locked_table_does_not_slow_requests(tmp_path: Path, database: str) -> None:
    env = {"USAGE_DB_URL": database}
    config = {"TRACK_USAGE_BATCH_SIZE": 20, "TRACK_USAGE_FLUSH_INTERVAL": 0.05}
    with run_gunicorn(tmp_path, workers=WORKERS, multiproc_dir=tmp_path, extra_env=env, app=app_spec(config)) as server:
        with Load(server.base_url) as load, psycopg.connect(libpq_url(database)) as locker:
            time.sleep(2.0)  # traffic, rows written as it comes
            locker.execute("LOCK TABLE flask_usage IN ACCESS EXCLUSIVE MODE")
            locked_at = time.monotonic()
            wait_until(lambda: waiting_writers(locker) > 0, 10, "a writer to wait for the lock", interval=0.05)
            time.sleep(max(0.0, LOCK_SECONDS - (time.monotonic() - locked_at)))
            blocked_writers = waiting_writers(locker)
            locker.rollback()
            released_at = time.monotonic()
            time.sleep(0.5)
        assert server.stop() == 0
    assert load.errors == []
    assert {s.status for s in load.sent} == {200}
    before = [s.seconds for s in load.sent if s.started < locked_at]
    during = [s.seconds for s in load.sent if locked_at <= s.started < released_at]
    print(
        f"\nlocked table: {len(before)} requests before the lock (p99 {p99(before) * 1000:.1f} ms), "
        f"{len(during)} during {released_at - locked_at:.1f} s of lock (p99 {p99(during) * 1000:.1f} ms), "
        f"{blocked_writers} writers waiting at the end"
    )
    assert blocked_writers >= 1  # the writers really were stuck on the lock
    assert len(during) > 100
    assert p99(during) < LOCK_SECONDS / 4  # nobody waited for the lock
    numbers = stored_numbers(database)
    assert sorted(numbers.elements()) == sorted(s.n for s in load.sent)  # once the lock went, all rows came


def waiting_writers(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Sessions waiting for a lock on the usage table (the lock holder's own query takes none)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE relation = 'flask_usage'::regclass AND NOT granted"
    ).fetchone()
    return int(row[0]) if row else 0


def test_sigkill_loses_only_the_killed_workers_queue(tmp_path: Path, database: str) -> None:
    env = {"USAGE_DB_URL": database}
    with run_gunicorn(
        tmp_path, workers=WORKERS, multiproc_dir=tmp_path, extra_env=env, app=app_spec(HOLDING_WRITER)
    ) as server:
        with Load(server.base_url, limit=150) as first:
            first.join()
        before = request_counts(scrape(server.base_url)[1])
        victim = Counter(int(s.body) for s in first.sent).most_common(1)[0][0]
        with Load(server.base_url, first=1000, limit=1400) as second:
            second.wait_for(50)
            os.kill(victim, signal.SIGKILL)
            second.join()
        after = [request_counts(scrape(server.base_url)[1]) for _ in range(2 * WORKERS)]
        wait_until(lambda: victim not in server.worker_pids(), 10, f"gunicorn to reap worker {victim}")
        assert server.stop() == 0
    answered = first.sent + second.sent
    assert first.errors == []
    # At most the one request the killed worker had in hand goes unanswered.
    assert len(second.errors) <= 1, second.errors
    assert {s.status for s in answered} == {200}
    for counts in after:  # counts of the dead worker stay: never backwards, always everything answered
        total = sum(counts.values())
        assert len(answered) <= total <= len(answered) + len(second.errors)
        assert all(counts.get(key, 0) >= value for key, value in before.items())
    served_by_victim = {s.n for s in answered if int(s.body) == victim}
    survivors = {s.n for s in answered if int(s.body) != victim}
    numbers = stored_numbers(database)
    print(
        f"\nSIGKILL: {len(answered)} requests answered, {len(served_by_victim)} by the killed worker "
        f"(its queue, lost), {len(numbers)} rows written by the others after SIGTERM, "
        f"{len(second.errors)} requests unanswered"
    )
    assert served_by_victim  # the killed worker had rows queued
    assert set(numbers) == survivors  # lost: exactly the killed worker's queue; kept: everything else
    assert max(numbers.values()) == 1
