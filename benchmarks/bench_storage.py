"""Storage benchmarks: writer throughput, get_usage latency on a large table, and the per-request cost.

Run: .venv/bin/python benchmarks/bench_storage.py [--quick] [--profile sqlite|postgresql]
Prints a table and writes benchmarks/results/storage.json (with the issue's writer targets). Needs
PostgreSQL on 127.0.0.1:5432 (database ``test``); without it only the SQLite figures are measured.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
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
from report import machine_info, print_targets, write_json

from flask_usage_otel import TrackUsage
from flask_usage_otel.record import UsageRecord
from flask_usage_otel.storage.sql import SQLStorage
from flask_usage_otel.writer import BatchWriter

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RESULTS = Path(__file__).parent / "results" / "storage.json"
TABLE_START = datetime(2024, 1, 1)
SECONDS_APART = 3  # 1,000,000 rows cover about 35 days; one day holds 28,800 rows


def record(i: int) -> UsageRecord:
    """A realistic record: a parametrised route, many users and clients, no track_var."""
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
        status=404 if i % 50 == 0 else 200,
        content_length=None,
        response_size=512,
        remote_addr=f"203.0.{i % 250}.{i % 97}",
        xforwardedfor="2001:db8::1, 198.51.100.7",
        user_agent="Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        accept_language="en-GB,en;q=0.9",
        authorization=False,
        username=f"user{i % 5000}",
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


def writer_throughput(url: str, rows: int, batch_size: int) -> dict[str, float]:
    """Rows/s through a BatchWriter into a fresh table, from the first put until flush() returns, and the
    writer thread's own CPU time per row (what it takes from request threads in the same process)."""
    name = f"bench_w_{uuid.uuid4().hex[:10]}"
    storage = SQLStorage(url, table_name=name)
    storage.create_table()
    records = [record(i) for i in range(rows)]
    writer = BatchWriter(storage, queue_size=rows + 1, batch_size=batch_size, flush_interval=0.01)
    try:
        start = time.perf_counter()
        writer.put(records[0])  # starts the thread
        thread = writer._thread
        assert thread is not None
        assert thread.ident is not None
        clock = time.pthread_getcpuclockid(thread.ident)
        cpu_start = time.clock_gettime(clock)
        for rec in records[1:]:
            writer.put(rec)
        assert writer.flush(600), "writer did not finish"
        cpu = time.clock_gettime(clock) - cpu_start
        elapsed = time.perf_counter() - start
        with storage.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(storage.table)).scalar() == rows
        return {"rows": rows, "rows_per_s": rows / elapsed, "writer_cpu_us_per_row": cpu / rows * 1e6}
    finally:
        writer.shutdown(5)
        storage.table.drop(storage.engine)
        storage.batches.drop(storage.engine, checkfirst=True)
        storage.engine.dispose()


def profile_writer(url: str, rows: int, top: int) -> None:
    """cProfile of ``SQLStorage.store`` in batches of 500 (the writer thread's work), sorted by own time."""
    name = f"bench_p_{uuid.uuid4().hex[:10]}"
    storage = SQLStorage(url, table_name=name)
    storage.create_table()
    records = [record(i) for i in range(rows)]
    profiler = cProfile.Profile()
    try:
        storage.store(records[:500])  # compile the INSERT, open the connection
        profiler.enable()
        for i in range(0, rows, 500):
            storage.store(records[i : i + 500])
        profiler.disable()
    finally:
        storage.table.drop(storage.engine)
        storage.batches.drop(storage.engine, checkfirst=True)
        storage.engine.dispose()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


# -- get_usage on a large table ---------------------------------------------------------------


def fill_large_table(storage: SQLStorage, rows: int, first: int = 1) -> None:
    """Generate rows ``first`` to ``rows`` inside the database (INSERT ... SELECT), then gather planner
    statistics; the table is made when ``first`` is 1. Row ``g`` is ``g * SECONDS_APART`` after
    TABLE_START, with the text a browser's request leaves (user agent, language, user, protocol)."""
    if first == 1:
        storage.create_table()
    table = storage.engine.dialect.identifier_preparer.format_table(storage.table)
    columns = (
        "datetime, url, path, route, endpoint, method, status, speed, remote_addr, response_size, ua_browser, "
        "user_agent_raw, ua_platform, ua_version, ua_language, username, protocol, server_name"
    )
    browser = "'Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0', 'linux', '120.0', 'en-GB'"
    if storage.engine.dialect.name == "postgresql":
        sql = f"""
            INSERT INTO {table} ({columns})
            SELECT timestamp '2024-01-01' + g * interval '{SECONDS_APART} seconds',
                   'https://example.org/r' || mod(g, 50), '/r' || mod(g, 50), '/r' || mod(g, 50), 'r' || mod(g, 50),
                   'GET', CASE WHEN mod(g, 100) = 0 THEN 500 ELSE 200 END, mod(g, 997) / 10000.0,
                   '10.0.' || mod(g, 250) || '.1', 1000 + mod(g, 500), 'firefox',
                   {browser}, 'user' || mod(g, 5000), 'HTTP/1.1', 'bench'
            FROM generate_series({first}, {rows}) AS g"""
        analyze = f"ANALYZE {table}"
    else:
        # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff'; generate the same text.
        sql = f"""
            WITH RECURSIVE seq(g) AS (SELECT {first} UNION ALL SELECT g + 1 FROM seq WHERE g < {rows})
            INSERT INTO {table} ({columns})
            SELECT strftime('%Y-%m-%d %H:%M:%f', '2024-01-01', '+' || (g * {SECONDS_APART}) || ' seconds') || '000',
                   'https://example.org/r' || (g % 50), '/r' || (g % 50), '/r' || (g % 50), 'r' || (g % 50),
                   'GET', CASE WHEN g % 100 = 0 THEN 500 ELSE 200 END, (g % 997) / 10000.0,
                   '10.0.' || (g % 250) || '.1', 1000 + g % 500, 'firefox',
                   {browser}, 'user' || (g % 5000), 'HTTP/1.1', 'bench'
            FROM seq"""
        analyze = "ANALYZE"
    # An engine of its own: the storage's carries the per-statement deadline of the writer.
    engine = sa.create_engine(storage.engine.url.render_as_string(hide_password=False))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
        with engine.begin() as conn:
            conn.exec_driver_sql(analyze)
    finally:
        engine.dispose()


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
        storage.batches.drop(storage.engine, checkfirst=True)
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
    """Median per-request time of a tracked Flask app through the test client (Prometheus on in both),
    until every request's row is written."""
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
        if storage is not None:  # the rows are part of the cost: the writer shares this process's CPU
            with app.app_context():
                tracker.flush(60)
        times.append((time.perf_counter() - start) / requests * 1e6)
    return statistics.median(times)


# -- main ----------------------------------------------------------------------------------------


TARGET_ROWS_PER_S = 20_000


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 6's writer target: at least 20,000 rows/s sustained into SQLite and PostgreSQL, batched."""
    out = []
    for backend in ("sqlite", "postgresql"):
        figures = results["writer"].get(backend)
        value = None if figures is None else figures["batched_500_rows_per_s"]
        out.append(
            {
                "name": f"writer_{backend}",
                "description": f"writer into {backend}, batches of 500, rows/s >= {TARGET_ROWS_PER_S:,}",
                "value": value,
                "passed": None if value is None else value >= TARGET_ROWS_PER_S,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller tables and fewer rows (about 20 seconds)")
    parser.add_argument(
        "--profile",
        choices=("sqlite", "postgresql"),
        help="only print a cProfile of the writer's work (SQLStorage.store, batches of 500) into this database",
    )
    args = parser.parse_args()
    quick = args.quick
    batched_rows, single_rows = (10_000, 500) if quick else (200_000, 2_000)
    large_rows = 100_000 if quick else 1_000_000
    repeat = 5 if quick else 20

    tmp = tempfile.TemporaryDirectory()
    backends = {"sqlite": f"sqlite:///{Path(tmp.name) / 'bench.db'}"}
    if postgres_up():
        backends["postgresql"] = POSTGRES_URL
    else:
        print("PostgreSQL is not reachable on 127.0.0.1:5432: measuring SQLite only", file=sys.stderr)
    if args.profile:
        profile_writer(backends[args.profile], 20_000 if quick else 100_000, top=30)
        return

    results: dict[str, Any] = {
        "benchmark": "storage",
        "quick": quick,
        "machine": machine_info(),
        "writer": {},
        "queries": {},
    }
    for name, url in backends.items():
        print(f"writer into {name} ...", file=sys.stderr)
        batched = writer_throughput(url, batched_rows, 500)
        single = writer_throughput(url, single_rows, 1)
        results["writer"][name] = {
            "batched_rows": batched_rows,
            "batched_500_rows_per_s": round(batched["rows_per_s"]),
            "batched_writer_cpu_us_per_row": round(batched["writer_cpu_us_per_row"], 1),
            "one_insert_per_row_rows_per_s": round(single["rows_per_s"]),
            "one_insert_per_row_writer_cpu_us_per_row": round(single["writer_cpu_us_per_row"], 1),
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
    results["targets"] = targets(results)

    write_json(results, RESULTS)
    print_table(results)
    print_targets(results["targets"])
    print(f"\nwritten to {RESULTS}")


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{'measure':<48} {'sqlite':>12} {'postgresql':>12}")
    rows = [
        ("writer, batches of 500 (rows/s)", "writer", "batched_500_rows_per_s"),
        ("  writer thread CPU per row (us)", "writer", "batched_writer_cpu_us_per_row"),
        ("writer, one INSERT per row (rows/s)", "writer", "one_insert_per_row_rows_per_s"),
        ("  writer thread CPU per row (us)", "writer", "one_insert_per_row_writer_cpu_us_per_row"),
        ("get_usage one day, limit 500 (ms)", "queries", "get_usage_one_day_limit_500_ms"),
        ("get_usage one day, page 20 (ms)", "queries", "get_usage_one_day_page_20_ms"),
        ("get_usage one day, route filter (ms)", "queries", "get_usage_one_day_route_filter_ms"),
        ("get_usage newest 500 (ms)", "queries", "get_usage_newest_500_ms"),
        ("get_summary by route per hour, one day (ms)", "queries", "summary_by_route_one_day_ms"),
        ("filling the large table, INSERT ... SELECT (s)", "queries", "fill_seconds"),
    ]
    for label, section, key in rows:
        cells = []
        for backend in ("sqlite", "postgresql"):
            value = results[section].get(backend, {}).get(key)
            cells.append("-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.2f}")
        print(f"{label:<48} {cells[0]:>12} {cells[1]:>12}")
    large = next(iter(results["queries"].values()))["rows"]
    batched = next(iter(results["writer"].values()))["batched_rows"]
    print(f"(writer figures over {batched:,} rows; query figures on a {large:,}-row table)")
    path = results["request_path"]
    print(f"\nBatchWriter.put: {path['put_us']:.3f} us per record")
    print(
        f"request through the test client, rows written included: {path['request_without_storage_us']:.1f} us "
        f"without storage, {path['request_with_sql_storage_us']:.1f} us with SQLStorage on SQLite "
        f"(+{path['added_per_request_us']:.1f} us)"
    )
    for backend, figures in results["queries"].items():
        print(f"\n{backend} plan of a one-day get_usage:\n{figures['plan_one_day']}")


if __name__ == "__main__":
    main()
