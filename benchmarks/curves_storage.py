"""The database curves of bench_curves.py: the writer against round-trip time (PostgreSQL and
MariaDB), reads and bytes against table size (plain and partitioned PostgreSQL)."""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta, timezone
from typing import Any

import sqlalchemy as sa
from bench_storage import POSTGRES_URL, SECONDS_APART, TABLE_START, fill_large_table, median_ms, record
from latency_proxy import LatencyProxy

from flask_usage_otel import PartitionedSQLStorage, SQLStorage
from flask_usage_otel.writer import BatchWriter

BATCH = 500
MARIADB_URL = os.environ.get("BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def reachable(url: str) -> bool:
    """Whether something listens where ``url`` points."""
    parsed = sa.engine.make_url(url)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((parsed.host or "127.0.0.1", parsed.port or 3306)) == 0


def writer_curve(rtt_ms: Sequence[float], rows: int, database: str = POSTGRES_URL) -> list[dict[str, Any]]:
    """Rows/s the writer keeps up with into ``database`` through a proxy adding ``rtt`` to each round trip.

    The slope of milliseconds per batch against the round-trip time is the number of round trips
    a batch takes.
    """
    url = sa.engine.make_url(database)
    port = url.port or (5432 if url.get_backend_name() == "postgresql" else 3306)
    points = []
    for rtt in rtt_ms:
        proxy = LatencyProxy(port, rtt, url.host or "127.0.0.1")
        try:
            rate = steady_writer_rows_per_s(url.set(host="127.0.0.1", port=proxy.port).render_as_string(False), rows)
        finally:
            proxy.close()
        points.append({"rtt_ms": rtt, "rows_per_s": rate, "ms_per_batch": BATCH / rate * 1e3})
    return points


def steady_writer_rows_per_s(url: str, rows: int) -> float:
    """Rows/s through a ``BatchWriter`` into a fresh table, from the first put of ``rows`` rows until flush()
    returns, after a first batch written apart: a writer's first batch also reads the table's layout and
    prunes old batch ids (a dozen round trips, once per writer), which is no part of what it keeps up with."""
    storage = SQLStorage(url, table_name=f"bench_w_{uuid.uuid4().hex[:10]}")
    storage.create_table()
    records = [record(i) for i in range(rows + BATCH)]
    writer = BatchWriter(storage, queue_size=rows + BATCH, batch_size=BATCH, flush_interval=0.01)
    try:
        for rec in records[:BATCH]:
            writer.put(rec)
        assert writer.flush(600), "writer did not finish its first batch"
        start = time.perf_counter()
        for rec in records[BATCH:]:
            writer.put(rec)
        assert writer.flush(600), "writer did not finish"
        elapsed = time.perf_counter() - start
        with storage.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(storage.table)).scalar() == rows + BATCH
        return rows / elapsed
    finally:
        writer.shutdown(5)
        storage.table.drop(storage.engine)
        storage.batches.drop(storage.engine, checkfirst=True)
        storage.engine.dispose()


def _table_bytes(storage: SQLStorage) -> int:
    """Heap, indexes and TOAST of the table and, when partitioned, of every partition."""
    with storage.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT pg_total_relation_size(CAST(:t AS regclass)) + coalesce((SELECT sum("
                    "pg_total_relation_size(relid)) FROM pg_partition_tree(CAST(:t AS regclass)) WHERE isleaf), 0)"
                ),
                {"t": storage.table.name},
            ).scalar()
        )


def _reads(storage: SQLStorage, rows: int, repeats: int) -> dict[str, Any]:
    """The reads a dashboard and ``flask usage`` make, on the newest whole day of ``rows`` rows."""
    first_day = TABLE_START.replace(tzinfo=timezone.utc)
    last = first_day + timedelta(seconds=rows * SECONDS_APART)
    # The last whole day (the first day when fewer rows than two days' are there).
    day = max(last.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1), first_day)
    end = day + timedelta(days=1)
    assert storage.get_usage(day, end, limit=500), "the day read holds no row"
    return {
        "get_usage_one_day_ms": median_ms(lambda: storage.get_usage(day, end, limit=500), repeats),
        "get_usage_newest_ms": median_ms(lambda: storage.get_usage(limit=500), repeats),
        "summary_one_day_ms": median_ms(
            lambda: storage.get_summary(by="route", period="hour", start_date=day, end_date=end), repeats
        ),
        "summary_all_ms": median_ms(lambda: storage.get_summary(by="route", period="day"), max(1, repeats // 3)),
        "bytes_per_row": _table_bytes(storage) / rows,
    }


def storage_curve(table_rows: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    """Each kind of table filled up to each size in turn (the rows of the smaller size kept)."""
    points = []
    for kind, cls in (("plain", SQLStorage), ("partitioned", PartitionedSQLStorage)):
        # No statement deadline: a summary over 10M rows may take longer than the writer's 15 s.
        storage = cls(POSTGRES_URL, table_name=f"bench_c_{uuid.uuid4().hex[:10]}", statement_timeout=None)
        try:
            storage.create_table()
            if isinstance(storage, PartitionedSQLStorage):
                first_day = int(TABLE_START.replace(tzinfo=timezone.utc).timestamp() // 86400)
                days = math.ceil(max(table_rows) * SECONDS_APART / 86400) + 1
                storage.ensure_partitions(range(first_day, first_day + days + 1))
            filled = 0
            for rows in sorted(table_rows):
                start = time.perf_counter()
                fill_large_table(storage, rows, first=filled + 1)
                fill_s = time.perf_counter() - start
                filled = rows
                points.append({"kind": kind, "rows": rows, "fill_s": fill_s, **_reads(storage, rows, repeats)})
        finally:
            storage.table.drop(storage.engine)
            storage.batches.drop(storage.engine, checkfirst=True)
            storage.engine.dispose()
    return points
