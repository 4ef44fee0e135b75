"""gunicorn recycling its workers (``max_requests``) hundreds of times under load.

Each dead worker's counters and histograms are folded into the archive files by
``child_exit``: the totals on /metrics stay exact and never go backwards, the
multiprocess directory stays at a bounded number of files, and the time to render
/metrics does not grow with the number of worker generations.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest

from flask_usage_otel.prometheus.multiprocess import LockedMultiProcessCollector
from tests.integration.gunicorn_harness import Gunicorn, request_counts, run_gunicorn, scrape

pytestmark = pytest.mark.integration

WORKERS = 2
MAX_REQUESTS = 5
APP = "tests.integration.churn_app:create_app()"
KEY = ("GET", "/", "200")
# Live workers' files (counter, histogram, two livesum gauges, the info gauge) plus the
# archives and the master's info gauge (the app is preloaded): a fixed number, whatever the churn.
FILE_LIMIT = 5 * WORKERS + 8


def render_seconds(multiproc_dir: Path, renders: int = 9) -> float:
    """Shortest time (the least disturbed by other load) to merge and encode the directory, as /metrics does.

    Timed in this process, not over HTTP: every scrape counts towards a worker's
    max_requests, so an HTTP timing would mostly measure workers booting.
    """
    times = []
    for _ in range(renders):
        started = time.perf_counter()
        registry = CollectorRegistry()
        LockedMultiProcessCollector(registry, path=str(multiproc_dir))
        generate_latest(registry)
        times.append(time.perf_counter() - started)
    return min(times)


def generations(server: Gunicorn) -> int:
    return server.log().count("Booting worker")


def churn(generations_wanted: int, tmp_path: Path) -> None:
    multiproc_dir = tmp_path / "metrics"
    multiproc_dir.mkdir()
    extra_env = {"GUNICORN_CMD_ARGS": f"--max-requests {MAX_REQUESTS} --max-requests-jitter 0 --preload"}
    requests_to_send = generations_wanted * MAX_REQUESTS
    with run_gunicorn(tmp_path, workers=WORKERS, multiproc_dir=multiproc_dir, extra_env=extra_env, app=APP) as server:
        session = requests.Session()
        # Connection: close on every request, so requests spread over the workers as they recycle.
        session.headers["Connection"] = "close"
        warm_up = 2 * WORKERS * MAX_REQUESTS  # a couple of generations: archives exist, every series too
        for _ in range(warm_up):
            session.get(server.base_url + "/", timeout=30).raise_for_status()
        first_render = render_seconds(multiproc_dir)
        history: list[float] = []
        most_files = 0
        stop = threading.Event()
        errors: list[BaseException] = []

        def watch() -> None:
            nonlocal most_files
            watcher = requests.Session()
            watcher.headers["Connection"] = "close"
            deadline = time.monotonic() + 600
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    history.append(request_counts(scrape(server.base_url, watcher)[1]).get(KEY, 0.0))
                    most_files = max(most_files, len(list(multiproc_dir.glob("*.db"))))
                    stop.wait(0.05)
            except BaseException as exc:  # a failed scrape fails the test, not only this thread
                errors.append(exc)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:

            def one(_: int) -> int:
                return session.get(server.base_url + "/", timeout=30).status_code

            with ThreadPoolExecutor(max_workers=4) as pool:
                statuses = list(pool.map(one, range(requests_to_send)))
        finally:
            stop.set()
            watcher.join(timeout=60)
        assert statuses == [200] * requests_to_send
        assert not errors, f"a scrape failed during the churn: {errors[0]!r}\n{server.log()[-3000:]}"
        assert len(history) > 10, "the scrapes during the churn did not run"

        seen_generations = generations(server)
        assert seen_generations >= generations_wanted, f"only {seen_generations} worker generations"
        last_render = render_seconds(multiproc_dir)
        _, samples = scrape(server.base_url, session)
        assert request_counts(samples)[KEY] == requests_to_send + warm_up
        assert request_counts(samples, "flask_usage_request_duration_seconds_count")[KEY] == requests_to_send + warm_up
        assert history == sorted(history), "a total went backwards while workers were recycled"
        assert most_files <= FILE_LIMIT, f"{most_files} files in the multiprocess directory"
        files_now = sorted(p.name for p in multiproc_dir.glob("*.db"))
        assert len(files_now) <= FILE_LIMIT, files_now
        assert "folding the metric files" not in server.log()
        # Flat: the render time after hundreds of generations is that of a fresh server,
        # with room for a busy shared machine (without folding it grows with every generation).
        assert last_render < 2 * first_render + 0.002, (first_render, last_render)
        print(  # the figures, for `pytest -s`
            f"\n{seen_generations} worker generations, {requests_to_send} requests: "
            f"/metrics {first_render * 1000:.1f} ms -> {last_render * 1000:.1f} ms, "
            f"at most {most_files} files"
        )
        assert server.stop() == 0


def test_worker_churn_keeps_totals_exact_and_the_directory_small(tmp_path: Path) -> None:
    churn(40, tmp_path)


@pytest.mark.slow
def test_hundreds_of_worker_generations(tmp_path: Path) -> None:
    churn(400, tmp_path)
