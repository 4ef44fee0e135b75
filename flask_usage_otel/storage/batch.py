"""``BatchWriter``: a bounded queue and one background thread between the request path and a storage.

The request thread only appends to a deque (no lock, a few hundred nanoseconds);
the writer thread takes batches off it and hands each batch to ``storage.store``
in one call (one transaction, one ``executemany`` INSERT). When the database is
slow or down the writer keeps the batch and retries it with capped exponential
backoff; the queue keeps filling meanwhile, and once it is full new rows are
dropped and counted, so memory stays bounded and a request never waits.

Fork safety: the thread is started lazily on the first ``put``. A child created
by ``fork`` (gunicorn workers, multiprocessing) forgets the parent's thread and
queued rows (they are the parent's to write) and starts its own thread on its
own first ``put``.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..prometheus import PrometheusMetrics
    from .base import Storage

logger = logging.getLogger("flask_usage_otel.storage")

_ERROR_LOG_INTERVAL = 60.0

_live_writers: weakref.WeakSet[BatchWriter] = weakref.WeakSet()


class BatchWriter:
    """Writes records to ``storage`` in batches from one background thread.

    :param storage: where batches go; ``storage.store(batch)`` must write the whole
        batch or nothing (one transaction), so a retried batch is never written twice.
    :param queue_size: most rows waiting (``TRACK_USAGE_QUEUE_SIZE``); more are dropped and counted.
    :param batch_size: rows per ``store`` call (``TRACK_USAGE_BATCH_SIZE``); a full batch is written at once.
    :param flush_interval: seconds a row may wait for its batch to fill (``TRACK_USAGE_FLUSH_INTERVAL``).
    :param metrics: Prometheus metrics for the queue length and the written / dropped / failed counts, or None.
    :param min_backoff: first retry delay in seconds after a failed write; doubles on each failure.
    :param max_backoff: longest retry delay in seconds.
    :param prepare: turns each queued item into the record ``storage.store`` takes, on the
        writer's thread, once per item (not again on a retry); an item it fails on is
        dropped and counted. Default: items are records already.
    :param is_transient: tells a passing failure (the database is down: retry the batch) from
        one that retrying cannot fix (a row the database rejects: write the rows one by one and
        drop those that still fail). Default: the storage's ``is_transient_error``, else every
        failure is transient.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        metrics: PrometheusMetrics | None = None,
        min_backoff: float = 0.1,
        max_backoff: float = 15.0,
        is_transient: Callable[[BaseException], bool] | None = None,
        prepare: Callable[[Any], Any] | None = None,
    ) -> None:
        if queue_size < 1 or batch_size < 1 or flush_interval <= 0 or min_backoff <= 0 or max_backoff < min_backoff:
            raise ValueError("queue_size and batch_size must be >= 1, intervals > 0 and max_backoff >= min_backoff")
        self.storage = storage
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._metrics = metrics
        self._prepare = prepare
        self._is_transient = is_transient or getattr(storage, "is_transient_error", None) or (lambda exc: True)
        self._closed = False
        self._reset()
        _live_writers.add(self)

    def _reset(self) -> None:
        """Fresh queue, locks and no thread: at construction and in a forked child."""
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()  # a full batch is waiting, or flush/shutdown asked
        self._stop = threading.Event()
        self._idle = threading.Condition(threading.Lock())  # flush() waits on it
        self._busy = False  # the writer holds rows taken off the queue and not yet written
        self._pending = 0
        self._give_up_at = float("inf")
        self._start_lock = threading.Lock()
        self._drop_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.rows_written = 0
        self.rows_dropped = 0
        self.write_errors = 0
        self._last_error_log = -_ERROR_LOG_INTERVAL

    # -- the request path ---------------------------------------------------------------

    def put(self, record: Any) -> bool:
        """Queue one record without blocking; False when it was dropped (queue full or writer shut down)."""
        if self._thread is None and not self._ensure_thread():
            self._count_drop()
            return False
        queue = self._queue
        if len(queue) >= self.queue_size:
            self._count_drop()
            return False
        queue.append(record)
        if len(queue) >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    def _count_drop(self) -> None:
        with self._drop_lock:  # only droppers take it; the writer never does
            self.rows_dropped += 1
        if self._metrics is not None:
            self._metrics.storage_rows_dropped.inc()

    def _ensure_thread(self) -> bool:
        with self._start_lock:
            if self._closed:
                return False
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="flask-usage-otel-writer", daemon=True)
                thread.start()
                self._thread = thread
            return True

    # -- flushing and shutting down -------------------------------------------------------

    @property
    def queued(self) -> int:
        """Rows waiting: in the queue plus the batch being written or retried."""
        return len(self._queue) + self._pending

    def flush(self, timeout: float | None = None) -> bool:
        """Write out everything queued so far; True when nothing is left, False on timeout."""
        if self._thread is None or self._pid != os.getpid():
            return not self._queue
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake.set()
        with self._idle:
            while self._queue or self._busy:
                if not self._thread.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # Bounded waits: the writer notifies after each batch, but a put can race the check.
                self._idle.wait(0.05 if remaining is None else min(remaining, 0.05))
                self._wake.set()
        return True

    def shutdown(self, timeout: float | None = 5.0) -> bool:
        """Flush, stop the thread and refuse new rows; True when every queued row was written."""
        with self._start_lock:
            self._closed = True
            thread, self._thread = self._thread, None  # later puts find no thread and are dropped
        if thread is None or self._pid != os.getpid():
            return not self._queue
        self._give_up_at = time.monotonic() + (3600.0 if timeout is None else timeout)
        self._stop.set()
        self._wake.set()
        thread.join(None if timeout is None else timeout + 1.0)
        left = self.queued
        if left:
            logger.warning("flask-usage-otel storage writer stopped with %d rows not written", left)
        return left == 0 and not thread.is_alive()

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._drain()
            self._update_gauge()
            if self._stop.is_set() and (not self._queue or time.monotonic() >= self._give_up_at):
                return

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            with self._idle:
                self._busy = True
            batch: list[Any] = []
            try:
                while queue and len(batch) < self.batch_size:
                    batch.append(queue.popleft())
            except IndexError:  # emptied under us: only possible after a fork reset
                pass
            self._pending = len(batch)
            if self._prepare is not None:
                batch = self._prepared(batch)
            written = not batch or self._write_with_retry(batch)
            if not written:  # shut down while the database is down: put the batch back and stop
                queue.extendleft(reversed(batch))
            self._pending = 0
            self._update_gauge()
            with self._idle:
                self._busy = False
                self._idle.notify_all()
            if not written:
                return
        with self._idle:
            self._busy = False
            self._idle.notify_all()

    def _prepared(self, items: list[Any]) -> list[Any]:
        prepare = self._prepare
        assert prepare is not None
        records: list[Any] = []
        for item in items:
            try:
                records.append(prepare(item))
            except Exception as exc:  # one bad item never blocks the queue
                self._count_error(exc)
                self._count_drop()
        return records

    def _write_with_retry(self, batch: list[Any]) -> bool:
        """Write one batch, retrying with backoff; False when shutdown's deadline passed while it still fails."""
        delay = self.min_backoff
        while True:
            try:
                self.storage.store(batch)
            except Exception as exc:
                self._count_error(exc)
                if not self._is_transient(exc):
                    self._write_one_by_one(batch)
                    return True
                self._update_gauge()
                if self._stop.is_set():
                    # Shutting down: retry quickly until shutdown's deadline, then give up.
                    if time.monotonic() >= self._give_up_at:
                        return False
                    time.sleep(min(delay, 0.2, max(0.0, self._give_up_at - time.monotonic())))
                else:
                    self._stop.wait(delay)  # shutdown cuts the wait short
                delay = min(delay * 2, self.max_backoff)
                continue
            self._count_written(len(batch))
            return True

    def _write_one_by_one(self, batch: Sequence[Any]) -> None:
        """After a non-transient failure: keep the good rows, drop (and count) the ones the database rejects."""
        for record in batch:
            try:
                self.storage.store([record])
            except Exception as exc:
                self._count_error(exc)
                self._count_drop()
            else:
                self._count_written(1)

    def _count_written(self, rows: int) -> None:
        self.rows_written += rows
        if self._metrics is not None:
            self._metrics.storage_rows_written.inc(rows)

    def _count_error(self, exc: BaseException) -> None:
        self.write_errors += 1
        if self._metrics is not None:
            self._metrics.storage_write_errors.inc()
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL:  # one traceback a minute, not one per retry
            self._last_error_log = now
            logger.warning("flask-usage-otel could not write usage rows (will retry): %s", exc, exc_info=exc)

    def _update_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.storage_queue_rows.set(self.queued)

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here and its queued rows are the parent's to write.
        closed = self._closed
        self._reset()
        self._closed = closed


def _reset_writers_after_fork() -> None:
    for writer in list(_live_writers):
        writer._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_writers_after_fork)
