"""``SQLStorage("sqlite://")``: one in-memory database for every thread, lent to one user at a time
(``storage/shared_memory.py``), through TrackUsage, real requests and the real writer."""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest
import sqlalchemy as sa
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.storage.sql import SQLStorage


def test_every_request_is_a_row_while_other_threads_read_the_database() -> None:
    app = Flask("shared")
    app.config.update(TRACK_USAGE_BATCH_SIZE=7, TRACK_USAGE_FLUSH_INTERVAL=0.01)

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return str(item_id)

    storage = SQLStorage("sqlite://")
    tracker = TrackUsage(app, storage=storage, registry=CollectorRegistry())
    stop = threading.Event()
    reads: list[int] = []

    def read() -> None:
        while not stop.is_set():
            with app.app_context():
                reads.append(len(tracker.get_usage(limit=5)))  # each read ends with a rollback

    def serve(first: int) -> None:
        client = app.test_client()
        for i in range(first, first + 150):
            assert client.get(f"/items/{i}").status_code == 200

    readers = [threading.Thread(target=read) for _ in range(2)]
    servers = [threading.Thread(target=serve, args=(n * 150,)) for n in range(2)]
    for thread in readers + servers:
        thread.start()
    for thread in servers:
        thread.join(60)
    try:
        assert tracker.flush(30)
    finally:
        stop.set()
        for thread in readers:
            thread.join(10)
    with storage.engine.connect() as conn:
        paths = conn.execute(sa.select(storage.table.c.path)).scalars().all()
    assert sorted(paths) == sorted(f"/items/{i}" for i in range(300))
    assert reads
    assert max(reads) <= 5


def test_a_thread_may_hold_two_connections_and_the_next_thread_waits_for_both() -> None:
    storage = SQLStorage("sqlite://")
    storage.create_table()
    engine = storage.engine
    order: list[str] = []
    asked = threading.Event()

    def other() -> None:
        asked.set()
        with engine.connect() as conn:
            order.append(f"other sees {conn.execute(sa.text('SELECT count(*) FROM t')).scalar()}")

    with engine.begin() as outer:
        outer.execute(sa.text("CREATE TABLE t (n INTEGER)"))
        with engine.connect() as inner:  # the same thread again: no deadlock
            inner.execute(sa.text("SELECT 1"))
        waiting = threading.Thread(target=other)
        waiting.start()
        asked.wait(5)
        time.sleep(0.05)
        outer.execute(sa.text("INSERT INTO t VALUES (1)"))
        order.append("committed")
    waiting.join(10)
    assert order == ["committed", "other sees 1"]


def test_a_connection_the_garbage_collector_returns_frees_the_database_for_others() -> None:
    storage = SQLStorage("sqlite://")
    storage.create_table()
    engine = storage.engine
    taken = threading.Event()

    def forget_to_close() -> None:
        conn = engine.connect()
        conn.execute(sa.text("SELECT 1"))
        taken.set()  # the thread ends holding it; its connection is never closed

    thread = threading.Thread(target=forget_to_close)
    thread.start()
    thread.join(10)
    assert taken.is_set()
    gc.collect()
    got = threading.Event()

    def use() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            got.set()

    user = threading.Thread(target=use, daemon=True)
    user.start()
    user.join(5)
    assert got.is_set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_uses_its_copy_while_the_parent_holds_the_connection() -> None:
    storage = SQLStorage("sqlite://")
    storage.create_table()
    with storage.engine.connect():  # held by this (the parent's) thread across the fork
        pid = os.fork()
        if pid == 0:  # the child: its only thread must get the database, not wait for the parent's
            code = 1
            try:
                done = threading.Event()

                def use() -> None:
                    with storage.engine.connect() as conn:
                        conn.execute(sa.text("SELECT 1"))
                    done.set()

                threading.Thread(target=use, daemon=True).start()
                code = 0 if done.wait(5) else 3
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
