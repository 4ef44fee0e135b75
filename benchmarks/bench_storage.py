"""Storage benchmarks: writer throughput, get_usage latency on a large table, and the per-request cost.

Run: .venv/bin/python benchmarks/bench_storage.py [--quick]
Prints a table and writes benchmarks/results/storage.json. Needs PostgreSQL on 127.0.0.1:5432
(database ``test``); without it only the SQLite figures are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.record import UsageRecord
from flask_usage_otel.storage.batch import BatchWriter
from flask_usage_otel.storage.sql import SQLStorage

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RESULTS = Path(__file__).parent / "results" / "storage.json"
TABLE_START = datetime(2024, 1, 1)
SECONDS_APART = 3  # 1,000,000 rows cover about 35 days; one day holds 28,800 rows


def record(i: int) -> UsageRecord:
    return UsageRecord(
        timestamp=time.time(),
        speed=0.004,
        method="GET",
        scheme="https",
        host="example.org",
        script_root="",
        path=f"/items/{i}",
        query_string="ref=bench",
        route="/items/<int:item_id>",
        endpoint="item",
        blueprint=None,
        view_args={"item_id": i},
        status=200,
        content_length=None,
        response_size=512,
        remote_addr="203.0.113.9",
        xforwardedfor="2001:db8::1, 198.51.100.7",
        user_agent="Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        accept_language="en-GB,en;q=0.9",
        authorization=False,
        username="user42",
        server_name="bench",
        protocol="HTTP/1.1",
        track_var={},
    )


def postgres_up() -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", 5432)) == 0


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm the cache and the connection pool
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


# -- writer throughput ----------------------------------------------------------------------


def writer_rows_per_second(url: str, rows: int, batch_size: int) -> float:
    """Rows/s through a BatchWriter into a fresh table, from the first put until flush() returns."""
    name = f"bench_w_{uuid.uuid4().hex[:10]}"
    storage = SQLStorage(url, table_name=name)
    storage.create_table()
    records = [record(i) for i in range(rows)]
    writer = BatchWriter(storage, queue_size=rows + 1, batch_size=batch_size, flush_interval=0.01)
    try:
        start = time.perf_counter()
        for rec in records:
            writer.put(rec)
        assert writer.flush(600), "writer did not finish"
        elapsed = time.perf_counter() - start
        with storage.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(storage.table)).scalar() == rows
        return rows / elapsed
    finally:
        writer.shutdown(5)
        storage.table.drop(storage.engine)
        storage.engine.dispose()


# -- get_usage on a large table ---------------------------------------------------------------


def fill_large_table(storage: SQLStorage, rows: int) -> None:
    """Generate ``rows`` rows inside the database (INSERT ... SELECT), then gather planner statistics."""
    storage.create_table()
    table = storage.engine.dialect.identifier_preparer.format_table(storage.table)
    columns = "datetime, url, path, route, endpoint, method, status, speed, remote_addr, response_size, ua_browser"
    if storage.engine.dialect.name == "postgresql":
        sql = f"""
            INSERT INTO {table} ({columns})
            SELECT timestamp '2024-01-01' + g * interval '{SECONDS_APART} seconds',
                   'https://example.org/r' || mod(g, 50), '/r' || mod(g, 50), '/r' || mod(g, 50), 'r' || mod(g, 50),
                   'GET', CASE WHEN mod(g, 100) = 0 THEN 500 ELSE 200 END, mod(g, 997) / 10000.0,
                   '10.0.' || mod(g, 250) || '.1', 1000 + mod(g, 500), 'firefox'
            FROM generate_series(1, {rows}) AS g"""
        analyze = f"ANALYZE {table}"
    else:
        # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff'; generate the same text.
        sql = f"""
            WITH RECURSIVE seq(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM seq WHERE g < {rows})
            INSERT INTO {table} ({columns})
            SELECT strftime('%Y-%m-%d %H:%M:%f', '2024-01-01', '+' || (g * {SECONDS_APART}) || ' seconds') || '000',
                   'https://example.org/r' || (g % 50), '/r' || (g % 50), '/r' || (g % 50), 'r' || (g % 50),
                   'GET', CASE WHEN g % 100 = 0 THEN 500 ELSE 200 END, (g % 997) / 10000.0,
                   '10.0.' || (g % 250) || '.1', 1000 + g % 500, 'firefox'
            FROM seq"""
        analyze = "ANALYZE"
    with storage.engine.begin() as conn:
        conn.exec_driver_sql(sql)
    with storage.engine.begin() as conn:
        conn.exec_driver_sql(analyze)


def query_latencies(url: str, rows: int, repeat: int) -> dict[str, Any]:
    name = f"bench_q_{uuid.uuid4().hex[:10]}"
    storage = SQLStorage(url, table_name=name)
    try:
        start = time.perf_counter()
        fill_large_table(storage, rows)
        fill_seconds = time.perf_counter() - start
        span_days = rows * SECONDS_APART / 86400
        day = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(days=int(span_days // 2))
        end = day + timedelta(days=1)
        result = {
            "rows": rows,
            "fill_seconds": round(fill_seconds, 1),
            "get_usage_one_day_limit_500_ms": median_ms(lambda: storage.get_usage(day, end, limit=500), repeat),
            "get_usage_one_day_page_20_ms": median_ms(lambda: storage.get_usage(day, end, limit=500, page=20), repeat),
            "get_usage_one_day_route_filter_ms": median_ms(
                lambda: storage.get_usage(day, end, limit=500, route="/r7"), repeat
            ),
            "get_usage_newest_500_ms": median_ms(lambda: storage.get_usage(limit=500), repeat),
            "summary_by_route_one_day_ms": median_ms(
                lambda: storage.get_summary(by="route", period="hour", start_date=day, end_date=end), repeat
            ),
            "plan_one_day": storage.explain_usage(day, end, limit=500),
        }
        assert len(storage.get_usage(day, end, limit=500)) == 500
        return result
    finally:
        storage.table.drop(storage.engine)
        storage.engine.dispose()


# -- the request path ----------------------------------------------------------------------------


class NullStorage:
    """Accepts batches and discards them: isolates the cost of the queue from the database."""

    def store(self, records: Any) -> None:
        pass

    def get_usage(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return []


def put_microseconds(count: int) -> float:
    writer = BatchWriter(NullStorage(), queue_size=count + 1, batch_size=500, flush_interval=0.05)
    rec = record(1)
    writer.put(rec)  # starts the thread
    start = time.perf_counter()
    for _ in range(count):
        writer.put(rec)
    elapsed = time.perf_counter() - start
    writer.shutdown(5)
    return elapsed / count * 1e6


def request_microseconds(storage: Any, requests: int, rounds: int) -> float:
    """Median per-request time of a tracked Flask app through the test client (Prometheus on in both)."""
    app = Flask("bench")
    app.config.update(TRACK_USAGE_QUEUE_SIZE=requests * 2 + 10)

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return "ok"

    tracker = TrackUsage(app, storage=storage, registry=CollectorRegistry())
    client = app.test_client()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(requests):
            client.get(f"/items/{i}")
        times.append((time.perf_counter() - start) / requests * 1e6)
        if storage is not None:
            with app.app_context():
                tracker.flush(60)
    return statistics.median(times)


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller tables and fewer rows (about 20 seconds)")
    args = parser.parse_args()
    quick = args.quick
    batched_rows, single_rows = (5_000, 500) if quick else (50_000, 2_000)
    large_rows = 100_000 if quick else 1_000_000
    repeat = 5 if quick else 20

    tmp = tempfile.TemporaryDirectory()
    backends = {"sqlite": f"sqlite:///{Path(tmp.name) / 'bench.db'}"}
    if postgres_up():
        backends["postgresql"] = POSTGRES_URL
    else:
        print("PostgreSQL is not reachable on 127.0.0.1:5432: measuring SQLite only", file=sys.stderr)

    results: dict[str, Any] = {
        "quick": quick,
        "python": platform.python_version(),
        "sqlalchemy": sa.__version__,
        "cpus": os.cpu_count(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "writer": {},
        "queries": {},
    }
    for name, url in backends.items():
        print(f"writer into {name} ...", file=sys.stderr)
        results["writer"][name] = {
            "batched_500_rows_per_s": round(writer_rows_per_second(url, batched_rows, 500)),
            "one_insert_per_row_rows_per_s": round(writer_rows_per_second(url, single_rows, 1)),
        }
    for name, url in backends.items():
        print(f"get_usage on {large_rows:,} rows in {name} ...", file=sys.stderr)
        results["queries"][name] = query_latencies(url, large_rows, repeat)

    print("request path ...", file=sys.stderr)
    requests, rounds = (2_000, 3) if quick else (5_000, 5)
    sqlite_url = f"sqlite:///{Path(tmp.name) / 'requests.db'}"
    baseline = request_microseconds(None, requests, rounds)
    with_storage = request_microseconds(SQLStorage(sqlite_url), requests, rounds)
    results["request_path"] = {
        "put_us": round(put_microseconds(200_000), 3),
        "request_without_storage_us": round(baseline, 1),
        "request_with_sql_storage_us": round(with_storage, 1),
        "added_per_request_us": round(with_storage - baseline, 1),
    }
    tmp.cleanup()

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwritten to {RESULTS}")


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{'measure':<48} {'sqlite':>12} {'postgresql':>12}")
    rows = [
        ("writer, batches of 500 (rows/s)", "writer", "batched_500_rows_per_s"),
        ("writer, one INSERT per row (rows/s)", "writer", "one_insert_per_row_rows_per_s"),
        ("get_usage one day, limit 500 (ms)", "queries", "get_usage_one_day_limit_500_ms"),
        ("get_usage one day, page 20 (ms)", "queries", "get_usage_one_day_page_20_ms"),
        ("get_usage one day, route filter (ms)", "queries", "get_usage_one_day_route_filter_ms"),
        ("get_usage newest 500 (ms)", "queries", "get_usage_newest_500_ms"),
        ("get_summary by route per hour, one day (ms)", "queries", "summary_by_route_one_day_ms"),
    ]
    for label, section, key in rows:
        cells = []
        for backend in ("sqlite", "postgresql"):
            value = results[section].get(backend, {}).get(key)
            cells.append("-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.2f}")
        print(f"{label:<48} {cells[0]:>12} {cells[1]:>12}")
    large = next(iter(results["queries"].values()))["rows"]
    print(f"(query figures on a {large:,}-row table)")
    path = results["request_path"]
    print(f"\nBatchWriter.put: {path['put_us']:.3f} us per record")
    print(
        f"request through the test client: {path['request_without_storage_us']:.1f} us without storage, "
        f"{path['request_with_sql_storage_us']:.1f} us with SQLStorage (+{path['added_per_request_us']:.1f} us)"
    )
    for backend, figures in results["queries"].items():
        print(f"\n{backend} plan of a one-day get_usage:\n{figures['plan_one_day']}")


if __name__ == "__main__":
    main()
