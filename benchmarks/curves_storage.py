"""The database curves of bench_curves.py: the writer against round-trip time, reads and bytes
against table size (plain and partitioned PostgreSQL)."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta, timezone
from typing import Any

import sqlalchemy as sa
from bench_storage import POSTGRES_URL, SECONDS_APART, TABLE_START, fill_large_table, median_ms, writer_throughput
from latency_proxy import LatencyProxy

from flask_usage_otel import PartitionedSQLStorage, SQLStorage

BATCH = 500


def writer_curve(rtt_ms: Sequence[float], rows: int) -> list[dict[str, Any]]:
    """Rows/s from the first put to flush() through a proxy adding ``rtt`` to each round trip.

    The slope of milliseconds per batch against the round-trip time is the number of round trips
    a batch takes.
    """
    url = sa.engine.make_url(POSTGRES_URL)
    points = []
    for rtt in rtt_ms:
        proxy = LatencyProxy(url.port or 5432, rtt)
        try:
            measured = writer_throughput(url.set(port=proxy.port).render_as_string(False), rows, BATCH)
        finally:
            proxy.close()
        rate = measured["rows_per_s"]
        points.append({"rtt_ms": rtt, "rows_per_s": rate, "ms_per_batch": BATCH / rate * 1e3})
    return points


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
