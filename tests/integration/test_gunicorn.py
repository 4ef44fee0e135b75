"""The demo app under gunicorn with 4 sync workers: /metrics adds up every worker exactly.

Scrapes land on whichever worker accepts them, so a count that is off, or that goes
backwards between two scrapes, means the workers' metrics are not aggregated right.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from flask_usage_otel.record import UNMATCHED_ROUTE
from tests.integration.gunicorn_harness import (
    Gunicorn,
    request_counts,
    run_gunicorn,
    scrape,
    temporary_postgres_database,
)
from tests.integration.servers import wait_until

pytestmark = pytest.mark.integration

WORKERS = 4
ITEM_ROUTE = "/api/items/<int:item_id>"

# (method, path, expected (method, route, status) or None when the path is not tracked, repeats)
PLAN: list[tuple[str, str, tuple[str, str, str] | None, int]] = [
    ("GET", "/", ("GET", "/", "200"), 80),
    ("GET", "/api/items/{i}", ("GET", ITEM_ROUTE, "200"), 80),
    ("GET", "/api/items/5{i}000", ("GET", ITEM_ROUTE, "404"), 20),
    ("POST", "/api/items", ("POST", "/api/items", "201"), 40),
    ("GET", "/error", ("GET", "/error", "500"), 20),
    ("GET", "/stream", ("GET", "/stream", "200"), 40),
    ("GET", "/slow", ("GET", "/slow", "200"), 10),
    ("GET", "/no/such/page/{i}", ("GET", UNMATCHED_ROUTE, "404"), 30),
    ("DELETE", "/", ("DELETE", UNMATCHED_ROUTE, "405"), 10),
    ("GET", "/healthz", None, 30),  # excluded by the demo app's TRACK_USAGE_EXCLUDE_PATHS
]
SECOND_PLAN = [("GET", "/", ("GET", "/", "200"), 40), ("GET", "/error", ("GET", "/error", "500"), 10)]


def send(base_url: str, plan: list[tuple[str, str, tuple[str, str, str] | None, int]]) -> Counter[tuple[str, ...]]:
    """Send every request of ``plan`` from a bounded thread pool; the expected counts."""
    jobs = [(method, path.format(i=i + 1)) for method, path, _, repeats in plan for i in range(repeats)]
    # Interleave the routes, so every worker sees a mix of them.
    jobs = jobs[::2] + jobs[1::2]

    def one(job: tuple[str, str]) -> int:
        return requests.request(job[0], base_url + job[1], timeout=30).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, jobs))
    expected: Counter[tuple[str, ...]] = Counter()
    for _method, _path, key, repeats in plan:
        if key is not None:
            expected[key] += repeats
    sent_by_status = Counter(str(s) for s in statuses)
    wanted_by_status: Counter[str] = Counter()
    for _method, _path, key, repeats in plan:
        wanted_by_status[key[2] if key else "200"] += repeats
    assert sent_by_status == wanted_by_status, "the demo app answered other statuses than planned"
    return expected


class Scraper:
    """Scrapes /metrics in a background thread until stopped; keeps every result in order."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.results: list[dict[tuple[str, str, str], float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            for _ in range(2000):  # bounded even if stop() is never called
                if self._stop.wait(0.05):
                    return
                self.results.append(request_counts(scrape(self.base_url)[1]))
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def assert_never_backwards(history: list[dict[tuple[str, str, str], float]]) -> None:
    for before, after in itertools.pairwise(history):
        for key, value in before.items():
            assert after.get(key, 0.0) >= value, f"{key} went from {value} to {after.get(key)} between scrapes"


def totals(server: Gunicorn) -> dict[tuple[str, str, str], float]:
    return request_counts(scrape(server.base_url)[1])


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    # Left-overs of a "previous run": on_starting must delete the metric file (it would
    # break the collector) and leave anything else alone.
    (path / "counter_1.db").write_bytes(b"not a metrics file")
    (path / "README.txt").write_text("not ours")
    return path


def test_counts_add_up_over_workers_and_never_go_backwards(tmp_path: Path, multiproc_dir: Path) -> None:
    with run_gunicorn(tmp_path, workers=WORKERS, multiproc_dir=multiproc_dir) as server:
        assert not (multiproc_dir / "counter_1.db").exists()
        assert (multiproc_dir / "README.txt").exists()
        assert len(server.worker_pids()) == WORKERS

        with Scraper(server.base_url) as scraper:
            expected = send(server.base_url, PLAN)
        assert scraper.error is None, scraper.error
        history = [*scraper.results, totals(server)]
        # Scrapes hit different workers: each must still see the sum over all of them.
        for _ in range(2 * WORKERS):
            history.append(totals(server))
        assert len(history) > 2 * WORKERS
        assert_never_backwards(history)
        for final in history[-2 * WORKERS :]:
            assert final == dict(expected), f"counts differ from what was sent: {final}"

        _, samples = scrape(server.base_url)
        assert sum(v for (name, _), v in samples.items() if name == "flask_usage_requests_in_progress") == 0
        exceptions = {
            dict(labels)["route"]: value
            for (name, labels), value in samples.items()
            if name == "flask_usage_request_exceptions_total" and dict(labels)["exception"] == "RuntimeError"
        }
        assert exceptions == {"/error": 20}
        durations = request_counts(samples, "flask_usage_request_duration_seconds_count")
        assert durations == dict(expected)

        # A worker that dies is replaced; its counts must stay in the totals.
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        _wait_for_replacement(server, victim)
        assert not list(multiproc_dir.glob(f"gauge_livesum_{victim}.db")), "child_exit did not mark the worker dead"
        expected += send(server.base_url, SECOND_PLAN)
        after_restart = [totals(server) for _ in range(2 * WORKERS)]
        assert_never_backwards([history[-1], *after_restart])
        assert after_restart[-1] == dict(expected)

        assert server.stop() == 0
    log = server.log()
    assert log.count("Worker exiting") >= WORKERS
    assert not list(multiproc_dir.glob("gauge_livesum_*.db")), "workers stopped but not marked dead"


def _wait_for_replacement(server: Gunicorn, victim: int) -> None:
    def replaced() -> bool:
        pids = server.worker_pids()
        booted = server.log().count("Booting worker") > WORKERS
        # The new worker must answer as well, not only be forked.
        return victim not in pids and len(pids) == WORKERS and booted and _all_workers_answer(server)

    wait_until(replaced, 20, f"gunicorn to replace worker {victim}")


def _all_workers_answer(server: Gunicorn) -> bool:
    return all(requests.get(server.base_url + "/healthz", timeout=5).status_code == 200 for _ in range(2 * WORKERS))


def _count_rows(url: str) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM flask_usage").scalar_one())
    finally:
        engine.dispose()


@pytest.fixture
def postgres_database() -> Iterator[str]:
    with temporary_postgres_database("usage_gunicorn") as url:
        yield url


def test_sql_rows_of_all_workers_are_written_after_sigterm(
    tmp_path: Path, multiproc_dir: Path, postgres_database: str
) -> None:
    import sqlalchemy

    from flask_usage_otel.storage.sql import SQLStorage

    storage = SQLStorage(postgres_database)
    storage.create_table()
    storage.engine.dispose()
    env = {"USAGE_DB_URL": postgres_database}
    # Batches larger than the traffic and a long flush interval: rows reach the table only
    # because SIGTERM makes every worker flush its queue before it exits.
    app = "examples.demo_app:create_app({'TRACK_USAGE_FLUSH_INTERVAL': 600, 'TRACK_USAGE_BATCH_SIZE': 5000})"
    with run_gunicorn(tmp_path, workers=WORKERS, multiproc_dir=multiproc_dir, extra_env=env, app=app) as server:
        expected = send(server.base_url, PLAN)
        assert _count_rows(postgres_database) == 0, "rows were written before the graceful stop"
        assert server.stop() == 0
    engine = sqlalchemy.create_engine(postgres_database)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT method, route, status, count(*) FROM flask_usage GROUP BY 1, 2, 3")
            written = {(m, r, str(s)): n for m, r, s, n in rows}
    finally:
        engine.dispose()
    assert written == dict(expected)
