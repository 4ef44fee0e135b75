"""Soak: gunicorn with 2 workers and everything on (Prometheus multiprocess metrics, SQL rows on
PostgreSQL, OpenTelemetry spans through an SDK provider) under steady load.

Memory of each worker stays flat after warm-up, the storage queue never holds more than its size,
the same workers serve from start to end, and rows written + rows dropped = requests sent.
``make soak`` runs the 60-second run; ``make test`` runs an 8-second one. Figures are printed
(``pytest -s``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration.gunicorn_harness import Gunicorn, postgres_usage_database, run_gunicorn, scrape
from tests.integration.load import Load
from tests.integration.test_faults import app_spec, stored_numbers

pytestmark = pytest.mark.integration

WORKERS = 2
QUEUE_SIZE = 2000
CONFIG = {"TRACK_USAGE_OTEL": True, "TRACK_USAGE_QUEUE_SIZE": QUEUE_SIZE, "TRACK_USAGE_BATCH_SIZE": 200}
RSS_GROWTH_LIMIT_KB = 30 * 1024


@pytest.fixture
def database() -> Iterator[str]:
    with postgres_usage_database("usage_soak") as url:
        yield url


def rss_kb(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/PID/status), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


class QueueWatch:
    """Scrapes ``flask_usage_storage_queue_rows`` (summed over the workers) every half second."""

    def __init__(self, server: Gunicorn) -> None:
        self.server = server
        self.values: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(100_000):  # bounded even if never stopped
            if self._stop.wait(0.5):
                return
            _, samples = scrape(self.server.base_url)
            self.values.append(samples[("flask_usage_storage_queue_rows", ())])

    def __enter__(self) -> QueueWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def untraced_rows(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM flask_usage WHERE trace_id IS NULL").scalar_one())
    finally:
        engine.dispose()


def soak(tmp_path: Path, database: str, seconds: float) -> None:
    warm_up = max(2.0, seconds / 6)
    app = app_spec(CONFIG, otel=True)
    with run_gunicorn(
        tmp_path, workers=WORKERS, multiproc_dir=tmp_path, extra_env={"USAGE_DB_URL": database}, app=app
    ) as server:
        workers = server.worker_pids()
        at_start = {pid: rss_kb(pid) for pid in workers}
        with (
            Load(server.base_url, threads=3) as pages,
            Load(server.base_url, "/shop/cart", 1, first=10**9) as cart,
            QueueWatch(server) as queue,
        ):
            time.sleep(warm_up)
            after_warm_up = {pid: rss_kb(pid) for pid in workers}
            time.sleep(seconds - warm_up)
            at_end = {pid: rss_kb(pid) for pid in workers}
        assert server.worker_pids() == workers, "a worker was replaced during the soak"
        _, samples = scrape(server.base_url)
        assert server.stop() == 0
    sent = pages.sent + cart.sent
    assert pages.errors == []
    assert cart.errors == []
    assert {s.status for s in sent} == {200}
    dropped = samples[("flask_usage_storage_rows_dropped_total", ())]
    numbers = stored_numbers(database)
    print(
        f"\nsoak {seconds:.0f} s: {len(sent)} requests ({len(sent) / seconds:.0f}/s), {len(numbers)} rows written, "
        f"{dropped:.0f} dropped, queue max {max(queue.values, default=0):.0f} rows over {len(queue.values)} scrapes"
    )
    for pid in workers:
        print(
            f"  worker {pid}: RSS {at_start[pid] / 1024:.1f} MB at start, {after_warm_up[pid] / 1024:.1f} MB "
            f"after {warm_up:.0f} s warm-up, {at_end[pid] / 1024:.1f} MB at the end"
        )
    assert max(numbers.values()) == 1
    assert len(numbers) + dropped == len(sent)
    assert queue.values
    assert max(queue.values) <= WORKERS * QUEUE_SIZE
    assert untraced_rows(database) == 0  # every request had its span
    for pid in workers:
        assert at_end[pid] - after_warm_up[pid] < RSS_GROWTH_LIMIT_KB, f"worker {pid} grew after warm-up"


def test_short_soak(tmp_path: Path, database: str) -> None:
    soak(tmp_path, database, 8.0)


@pytest.mark.slow
def test_soak_one_minute(tmp_path: Path, database: str) -> None:
    soak(tmp_path, database, 60.0)
