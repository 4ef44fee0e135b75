"""A storage made before ``fork``: forked children, multiprocessing workers and gunicorn ``--preload``.

The parent uses the storage first, so its pool holds open connections when it forks: a child that
reused them would interleave its protocol with the parent's on one socket. Every request must end up
as exactly one row, and children that end through ``os._exit`` (multiprocessing) must still flush.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.storage.sql import SQLStorage
from tests.integration.gunicorn_harness import run_gunicorn
from tests.integration.load import Load
from tests.storage.conftest import MARIADB_URL, POSTGRES_URL, drop_table, require_server, unique_table

pytestmark = pytest.mark.integration

CHILDREN = 4
PER_CHILD = 150
SERVERS = {"postgresql": (POSTGRES_URL, 5432), "mariadb": (MARIADB_URL, 3306)}


@pytest.fixture(params=["postgresql", "mariadb"])
def server_url(request: pytest.FixtureRequest) -> str:
    url, port = SERVERS[request.param]
    require_server(request.param, port)
    return url


@pytest.fixture
def tracked(server_url: str) -> Iterator[tuple[Flask, TrackUsage, SQLStorage]]:
    table = unique_table()
    storage = SQLStorage(server_url, table_name=table)
    app = Flask(f"fork_{table}")
    app.config.update(TRACK_USAGE_BATCH_SIZE=20, TRACK_USAGE_FLUSH_INTERVAL=0.05, TRACK_USAGE_BATCH_LINGER=0.01)

    @app.route("/hit/<who>/<int:n>")
    def hit(who: str, n: int) -> str:
        return "ok"

    tracker = TrackUsage(app, storage=storage, registry=CollectorRegistry())
    try:
        yield app, tracker, storage
    finally:
        with app.app_context():
            tracker.flush(10)
        engine = sa.create_engine(server_url)
        drop_table(engine, table)
        drop_table(engine, storage.batches.name)
        engine.dispose()
        storage.engine.dispose()


def send(app: Flask, who: str, count: int) -> None:
    client = app.test_client()
    for n in range(count):
        assert client.get(f"/hit/{who}/{n}").status_code == 200


def stored(storage: SQLStorage) -> Counter[str]:
    with sa.create_engine(storage.engine.url).connect() as conn:
        return Counter(conn.execute(sa.select(storage.table.c.path)).scalars().all())


def test_four_forked_children_and_the_parent_write_every_row_once(
    tracked: tuple[Flask, TrackUsage, SQLStorage],
) -> None:
    app, tracker, storage = tracked
    send(app, "parent", 20)
    with app.app_context():
        assert tracker.flush(10)  # the parent's pool now holds an open connection
    children = []
    for c in range(CHILDREN):
        pid = os.fork()
        if pid == 0:  # the child: serve, flush, leave without running the parent's test machinery
            code = 1
            try:
                send(app, f"child{c}", PER_CHILD)
                with app.app_context():
                    code = 0 if tracker.flush(30) else 2
            finally:
                os._exit(code)
        children.append(pid)
    send(app, "parent-during", PER_CHILD)  # the parent keeps writing on its own connections meanwhile
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    with app.app_context():
        assert tracker.flush(30)
    assert codes == [0] * CHILDREN
    rows = stored(storage)
    assert [p for p, n in rows.items() if n > 1] == []
    assert len(rows) == 20 + PER_CHILD * (CHILDREN + 1)


def _serve_in_worker(args: tuple[int, int]) -> int:
    first, count = args
    send(_FORKED_APP[0], f"w{first}", count)  # no flush: the worker's exit must write the rows
    return count


_FORKED_APP: list[Flask] = []


def test_multiprocessing_children_flush_when_they_exit(tracked: tuple[Flask, TrackUsage, SQLStorage]) -> None:
    app, tracker, storage = tracked
    send(app, "parent", 10)
    with app.app_context():
        assert tracker.flush(10)
    _FORKED_APP[:] = [app]
    context = multiprocessing.get_context("fork")
    process = context.Process(target=_serve_in_worker, args=((9000, 100),))
    process.start()
    with context.Pool(2) as pool:
        served = sum(pool.map(_serve_in_worker, [(i * 1000, 50) for i in range(4)]))
        pool.close()
        pool.join()  # workers leave through os._exit: only multiprocessing's finalizers run
    process.join(30)
    assert process.exitcode == 0
    rows = stored(storage)
    assert [p for p, n in rows.items() if n > 1] == []
    assert len(rows) == 10 + 100 + served


def test_gunicorn_preload_writes_every_request_once(tmp_path: Path, server_url: str) -> None:
    table = unique_table()
    env = {
        "USAGE_DB_URL": server_url,
        "USAGE_TABLE": table,
        "USAGE_CREATE_TABLE": "1",
        "GUNICORN_CMD_ARGS": "--preload",
    }
    config = {"TRACK_USAGE_BATCH_SIZE": 20, "TRACK_USAGE_FLUSH_INTERVAL": 0.05}
    spec = f"tests.integration.fault_app:create_app(config={config!r})"
    engine = sa.create_engine(server_url)
    try:
        with run_gunicorn(tmp_path, workers=4, multiproc_dir=tmp_path, extra_env=env, app=spec) as server:
            with Load(server.base_url, limit=1500) as load:
                load.join()
            assert server.stop() == 0  # SIGTERM: each worker writes out its queue
        assert load.errors == []
        with engine.connect() as conn:
            urls = conn.execute(sa.text(f"SELECT url FROM {table}")).scalars().all()
        numbers = Counter(int(re.search(r"[?&]n=(\d+)", u).group(1)) for u in urls)  # type: ignore[union-attr]
        assert [n for n, copies in numbers.items() if copies > 1] == []
        assert sorted(numbers) == sorted(s.n for s in load.sent)
        assert "Booting worker" in server.log()
    finally:
        drop_table(engine, table)
        drop_table(engine, f"{table}_batches")
        engine.dispose()
