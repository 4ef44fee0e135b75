"""Under real gunicorn, a blueprint teardown that raises costs those requests a 500 and nothing else:
each is counted once, the in-progress gauge returns to 0, every request has one row and one ended
span, and the worker's later requests are traced normally (no leaked span context). A failing stream
is recorded with the status the client got, and an endless stream the client hangs up on (the app
preloaded before the fork) is counted once when gunicorn closes it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy

from tests.integration.gunicorn_harness import Gunicorn, request_counts, run_gunicorn, scrape

pytestmark = pytest.mark.integration

APP = "tests.integration.lifecycle_app:create_app()"


@contextmanager
def lifecycle_server(tmp_path: Path, db: Path, *, preload: bool = False) -> Iterator[Gunicorn]:
    """The lifecycle app under one gunicorn worker, its rows in the SQLite file ``db``."""
    multiproc = tmp_path / "metrics"
    multiproc.mkdir()
    env = {"USAGE_DB_URL": f"sqlite:///{db}"}
    if preload:
        env["GUNICORN_CMD_ARGS"] = "--preload"
    with run_gunicorn(tmp_path, workers=1, multiproc_dir=multiproc, app=APP, extra_env=env) as server:
        yield server


def stored_rows(db: Path, columns: str) -> list[Any]:
    """``columns`` of every row the server wrote to the SQLite file ``db``."""
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return list(conn.exec_driver_sql(f"SELECT {columns} FROM flask_usage").all())
    finally:
        engine.dispose()


def test_a_raising_teardown_under_gunicorn(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    with lifecycle_server(tmp_path, db) as server:
        with requests.Session() as session:
            statuses = [session.get(server.base_url + "/", timeout=10).status_code for _ in range(3)]
            statuses += [session.get(server.base_url + "/fragile/page", timeout=10).status_code for _ in range(5)]
            statuses += [session.get(server.base_url + "/items/7", timeout=10).status_code for _ in range(20)]
            assert statuses == [200] * 3 + [500] * 5 + [200] * 20

            spans = session.get(server.base_url + "/spans", timeout=10).json()
            assert spans == {"ended": 28, "with_parent": 0, "statuses": {"200": 23, "500": 5}}

            _, samples = scrape(server.base_url, session)
        counts = {k: v for k, v in request_counts(samples).items() if v}
        assert counts == {
            ("GET", "/", "200"): 3,
            ("GET", "/fragile/page", "500"): 5,
            ("GET", "/items/<int:item_id>", "200"): 20,
        }
        in_progress = [v for (name, _), v in samples.items() if name == "flask_usage_requests_in_progress"]
        assert in_progress
        assert sum(in_progress) == 0
        assert server.stop() == 0  # graceful: the worker flushes its queued rows

    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT route, status, exception FROM flask_usage").all()
    finally:
        engine.dispose()
    assert Counter(map(tuple, rows)) == {
        ("/", 200, None): 3,
        ("/fragile/page", 500, "RuntimeError"): 5,
        ("/items/<int:item_id>", 200, None): 20,
    }


def test_a_stream_that_fails_before_its_first_byte_is_the_servers_500(tmp_path: Path) -> None:
    """Under gunicorn the client of a body that raises before any byte gets gunicorn's 500 page:
    the row, the counter and the span say 500. After a byte, the client got 200 and a cut body."""
    db = tmp_path / "usage.db"
    with lifecycle_server(tmp_path, db) as server:
        with requests.Session() as session:
            assert session.get(f"{server.base_url}/failing-stream/before-first", timeout=10).status_code == 500
            for when in ("after-empty", "mid-way"):  # gunicorn sent the 200 headers with the first chunk
                with pytest.raises(requests.exceptions.RequestException):
                    session.get(f"{server.base_url}/failing-stream/{when}", timeout=10).content  # noqa: B018
        with requests.Session() as session:
            spans = session.get(server.base_url + "/spans", timeout=10).json()
            _, samples = scrape(server.base_url, session)
        assert spans["statuses"] == {"500": 1, "200": 2}
        counts = {k: v for k, v in request_counts(samples).items() if v}
        assert counts == {("GET", "/failing-stream/<when>", "500"): 1, ("GET", "/failing-stream/<when>", "200"): 2}
        assert server.stop() == 0

    rows = stored_rows(db, "path, status, response_size, exception")
    assert sorted(map(tuple, rows)) == [
        ("/failing-stream/after-empty", 200, 0, "RuntimeError"),
        ("/failing-stream/before-first", 500, 0, "RuntimeError"),
        ("/failing-stream/mid-way", 200, 7, "RuntimeError"),
    ]


def test_a_stream_the_client_walks_away_from_under_gunicorn_preload(tmp_path: Path) -> None:
    """An endless stream, the app preloaded before the fork: the client reads a little and hangs
    up; gunicorn closes the body, and the request is counted once, its gauge back to 0, one row."""
    db = tmp_path / "usage.db"
    with lifecycle_server(tmp_path, db, preload=True) as server:
        with requests.get(f"{server.base_url}/endless", stream=True, timeout=10) as response:
            assert response.status_code == 200
            assert len(response.raw.read(65536)) == 65536
        deadline = time.monotonic() + 10
        while True:
            with requests.Session() as session:
                _, samples = scrape(server.base_url, session)
            counts = {k: v for k, v in request_counts(samples).items() if v}
            if counts or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert counts == {("GET", "/endless", "200"): 1}
        in_progress = [v for (name, _), v in samples.items() if name == "flask_usage_requests_in_progress"]
        assert in_progress
        assert sum(in_progress) == 0
        assert server.stop() == 0

    rows = stored_rows(db, "path, status, response_size")
    ((path, status, size),) = rows
    assert (path, status) == ("/endless", 200)
    assert size >= 65536
