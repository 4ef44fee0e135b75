"""BatchWriter: batching by size and time, bounded queue, retries without duplicates, fork safety, shutdown."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from flask_usage_otel.config import DEFAULT_BUCKETS, DEFAULT_SIZE_BUCKETS
from flask_usage_otel.prometheus import PrometheusMetrics
from flask_usage_otel.writer import BatchWriter

WAIT = 10.0  # generous upper bound for anything that should happen at once; never a timing assertion


class Unavailable(ConnectionError):
    """What a storage raises while its database is down."""


class ListStorage:
    """A real in-memory storage: keeps every batch it was given, can be made to fail or to block."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.failures_left = 0
        self.reject: set[Any] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.lock = threading.Lock()

    def store(self, records: Sequence[Any]) -> None:
        self.entered.set()
        assert self.gate.wait(WAIT)
        with self.lock:
            if self.failures_left:
                self.failures_left -= 1
                raise Unavailable("database is down")
            if self.reject.intersection(records):
                raise ValueError("row rejected")
            self.batches.append(list(records))

    @property
    def rows(self) -> list[Any]:
        with self.lock:
            return [row for batch in self.batches for row in batch]

    def get_usage(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return []


def metrics() -> PrometheusMetrics:
    return PrometheusMetrics(CollectorRegistry(), "flask_usage_", DEFAULT_BUCKETS, DEFAULT_SIZE_BUCKETS)


def sample(m: PrometheusMetrics, name: str) -> float:
    return {
        "queue": m.storage_queue_rows,
        "written": m.storage_rows_written,
        "dropped": m.storage_rows_dropped,
        "errors": m.storage_write_errors,
    }[name]._value.get()


def test_full_batch_is_written_without_waiting_for_the_interval() -> None:
    storage = ListStorage()
    writer = BatchWriter(storage, batch_size=10, flush_interval=3600)
    for i in range(25):
        assert writer.put(i)
    # Two full batches go out at once; the remaining 5 wait for the (hour-long) interval or a flush.
    deadline = threading.Event()
    for _ in range(200):
        if len(storage.batches) >= 2:
            break
        deadline.wait(0.05)
    assert storage.batches[:2] == [list(range(10)), list(range(10, 20))]
    assert writer.flush(WAIT)
    assert storage.rows == list(range(25))
    writer.shutdown(WAIT)


def test_rows_are_written_after_the_flush_interval_without_a_flush() -> None:
    storage = ListStorage()
    writer = BatchWriter(storage, batch_size=1000, flush_interval=0.05)
    for i in range(3):
        writer.put(i)
    waited = threading.Event()
    for _ in range(200):
        if storage.rows:
            break
        waited.wait(0.05)
    assert storage.batches == [[0, 1, 2]]
    writer.shutdown(WAIT)


def test_full_queue_drops_new_rows_and_counts_them() -> None:
    storage = ListStorage()
    storage.gate.clear()  # the database hangs
    m = metrics()
    writer = BatchWriter(storage, queue_size=5, batch_size=1, flush_interval=0.01, observer=m.storage_observer())
    writer.put("first")
    assert storage.entered.wait(WAIT)  # the writer holds "first" and is stuck writing it
    accepted = [writer.put(i) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert writer.rows_dropped == 3
    assert sample(m, "dropped") == 3
    storage.gate.set()
    assert writer.flush(WAIT)
    assert storage.rows == ["first", 0, 1, 2, 3, 4]
    assert sample(m, "written") == 6
    assert sample(m, "queue") == 0
    writer.shutdown(WAIT)


def test_failed_batch_is_retried_with_backoff_and_written_once() -> None:
    storage = ListStorage()
    storage.failures_left = 4
    m = metrics()
    writer = BatchWriter(
        storage, batch_size=3, flush_interval=0.01, observer=m.storage_observer(), min_backoff=0.01, max_backoff=0.02
    )
    for i in range(7):
        writer.put(i)
    assert writer.flush(WAIT)
    assert sorted(storage.rows) == list(range(7))  # every row, none twice
    assert len(storage.rows) == 7
    assert writer.write_errors == 4
    assert sample(m, "errors") == 4
    assert sample(m, "written") == 7
    assert writer.rows_dropped == 0
    writer.shutdown(WAIT)


def test_rows_stay_queued_while_the_storage_is_down() -> None:
    storage = ListStorage()
    storage.failures_left = 10**9
    writer = BatchWriter(storage, batch_size=2, flush_interval=0.01, min_backoff=0.01, max_backoff=0.01)
    for i in range(5):
        writer.put(i)
    assert not writer.flush(0.3)  # cannot finish while the database is down
    assert writer.queued == 5
    assert storage.rows == []
    with storage.lock:
        storage.failures_left = 0
    assert writer.flush(WAIT)
    assert storage.rows == [0, 1, 2, 3, 4]
    writer.shutdown(WAIT)


def test_rejected_rows_are_dropped_and_the_rest_of_the_batch_is_kept() -> None:
    storage = ListStorage()
    storage.reject = {"bad"}
    m = metrics()
    writer = BatchWriter(storage, batch_size=10, flush_interval=0.01, observer=m.storage_observer())
    for item in ("a", "bad", "b"):
        writer.put(item)
    assert not writer.flush(WAIT)  # done, but a row it was asked to write is lost: no success reported
    assert storage.rows == ["a", "b"]
    assert writer.rows_dropped == 1
    assert writer.dropped["unserialisable"] == 1  # its own fault: the rows beside it were stored
    assert sample(m, "dropped") == 1
    writer.put("c")
    assert writer.flush(WAIT)  # nothing lost since
    writer.shutdown(WAIT)


def test_shutdown_writes_everything_queued_and_refuses_later_rows() -> None:
    storage = ListStorage()
    writer = BatchWriter(storage, batch_size=1000, flush_interval=3600)
    for i in range(50):
        writer.put(i)
    assert writer.shutdown(WAIT)
    assert storage.rows == list(range(50))
    assert not writer.put("late")
    assert writer.rows_dropped == 1
    assert writer.dropped["shutdown"] == 1


def test_shutdown_gives_up_after_its_timeout_when_the_storage_stays_down() -> None:
    storage = ListStorage()
    storage.failures_left = 10**9
    writer = BatchWriter(storage, batch_size=10, flush_interval=3600, min_backoff=0.01)
    for i in range(3):
        writer.put(i)
    assert not writer.shutdown(0.2)
    # Nothing is left behind uncounted: the three rows are dropped, reason "timeout".
    assert (writer.queued, writer.rows_dropped, writer.dropped["timeout"]) == (0, 3, 3)


def test_no_thread_before_the_first_put() -> None:
    writer = BatchWriter(ListStorage())
    assert writer._thread is None
    assert writer.flush(0.1)
    writer.put(1)
    assert writer._thread is not None
    assert writer._thread.daemon
    writer.shutdown(WAIT)


@pytest.mark.parametrize(
    "kwargs",
    [{"queue_size": 0}, {"batch_size": 0}, {"flush_interval": 0}, {"min_backoff": 2.0, "max_backoff": 1.0}],
)
def test_bad_parameters_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BatchWriter(ListStorage(), **kwargs)


class FileStorage:
    """Appends each written row with the writing process id to a file shared by parent and child."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.gate = threading.Event()

    def store(self, records: Sequence[Any]) -> None:
        self.gate.wait(WAIT)
        with open(self.path, "a") as out:
            out.write("".join(json.dumps([os.getpid(), r]) + "\n" for r in records))

    def get_usage(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_thread_and_never_writes_the_parents_rows(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    storage = FileStorage(out)  # blocked: the parent's rows stay queued across the fork
    writer = BatchWriter(storage, batch_size=1000, flush_interval=0.01)
    for i in range(3):
        writer.put(f"parent-{i}")
    parent_thread = writer._thread
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only, never return into pytest
        code = 1
        try:
            storage.gate.set()
            ok = writer.queued == 0 and writer._thread is None
            writer.put("child-0")
            writer.put("child-1")
            ok = ok and writer.flush(WAIT) and writer._thread is not None and writer._thread is not parent_thread
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    storage.gate.set()
    assert writer.flush(WAIT)
    writer.shutdown(WAIT)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_row = {row: writer_pid for writer_pid, row in lines}
    assert len(lines) == len(by_row) == 5  # nothing written twice
    assert {by_row[f"parent-{i}"] for i in range(3)} == {os.getpid()}
    assert {by_row["child-0"], by_row["child-1"]} == {pid}
