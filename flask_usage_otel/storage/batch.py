"""``BatchWriter``: a bounded queue and one background thread between the request path and a storage.

The request thread only appends to a deque (a few hundred nanoseconds); the writer
thread takes batches off it and hands each batch to ``storage.store`` in one call
(one transaction). When the database is slow or down the writer keeps the batch
and retries it with capped exponential backoff; the queue keeps filling meanwhile,
and once it is full (in rows or in bytes) new rows are dropped and counted, so
memory stays bounded and a request never waits.

Every row ends up written or counted as dropped with a reason (``DROP_REASONS``):
one bad row is dropped alone and never blocks the rows behind it.

Each batch handed to ``store`` is a :class:`Batch` carrying a ``batch_id`` that
stays the same across retries of that batch, so a storage can make a retry
idempotent (``SQLStorage`` records the id in the batch's own transaction).

Fork safety: the thread is started lazily on the first ``put``. A child created by
``fork`` (gunicorn workers, multiprocessing) forgets the parent's thread and queued
rows (they are the parent's to write) and starts its own thread on its own first
``put``. Each process that starts a writer thread registers an exit flush both
with ``atexit`` (through the extension) and with ``multiprocessing.util.Finalize``,
which multiprocessing children run although they leave through ``os._exit``.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing.util
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..prometheus.metrics import DROP_REASONS

if TYPE_CHECKING:
    from ..prometheus import PrometheusMetrics
    from .base import Storage

logger = logging.getLogger("flask_usage_otel.storage")

_ERROR_LOG_INTERVAL = 60.0
EXIT_FLUSH_TIMEOUT = 5.0
"""Seconds a process that exits gives its writer to write what is queued."""

_UNSERIALISABLE = (TypeError, ValueError, RecursionError, UnicodeError, OverflowError, AttributeError, LookupError)
"""Errors a row raises before the database sees it (building its parameters): the row, not the database."""

_live_writers: weakref.WeakSet[BatchWriter] = weakref.WeakSet()


class Batch(list[Any]):
    """The records of one ``store`` call, with an id that a retry of the same batch keeps."""

    __slots__ = ("batch_id",)

    def __init__(self, records: Iterable[Any] = (), batch_id: str | None = None) -> None:
        super().__init__(records)
        self.batch_id = batch_id or uuid.uuid4().hex


class BatchWriter:
    """Writes records to ``storage`` in batches from one background thread.

    :param storage: where batches go; ``storage.store(batch)`` must write the whole
        batch or nothing (one transaction).
    :param queue_size: most rows waiting (``TRACK_USAGE_QUEUE_SIZE``); more are dropped and counted.
    :param queue_bytes: most bytes the waiting rows may hold, as estimated by ``size_of``
        (``TRACK_USAGE_QUEUE_BYTES``); more are dropped and counted.
    :param size_of: the bytes a queued item holds (called when it is queued and when it is taken
        off the queue, so it must give the same for the same item); None: items are not sized.
    :param batch_size: rows per ``store`` call (``TRACK_USAGE_BATCH_SIZE``); a full batch is written at once.
    :param flush_interval: seconds a row may wait for its batch to fill (``TRACK_USAGE_FLUSH_INTERVAL``).
    :param linger: seconds the writer waits for a partial batch to fill before writing it
        (``TRACK_USAGE_BATCH_LINGER``), so trickling rows are written in a few large
        transactions instead of many small ones; ``flush`` and ``shutdown`` do not wait.
    :param metrics: Prometheus metrics for the queue length and the written / dropped / failed counts, or None.
    :param min_backoff: first retry delay in seconds after a failed write; doubles on each failure.
    :param max_backoff: longest retry delay in seconds.
    :param prepare: turns each queued item into the record ``storage.store`` takes, on the
        writer's thread, once per item (not again on a retry); an item it fails on is
        dropped and counted as ``unserialisable``. Default: items are records already.
    :param is_transient: tells a passing failure (the database is down, read-only, the table
        is missing: retry the batch) from one that retrying cannot fix (a row the database
        rejects: write the rows one by one and drop those that still fail). Default: the
        storage's ``is_transient_error``, else every failure is transient.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        queue_size: int = 10_000,
        queue_bytes: int = 64 * 1024 * 1024,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        linger: float = 0.05,
        metrics: PrometheusMetrics | None = None,
        min_backoff: float = 0.1,
        max_backoff: float = 15.0,
        is_transient: Callable[[BaseException], bool] | None = None,
        prepare: Callable[[Any], Any] | None = None,
        size_of: Callable[[Any], int] | None = None,
    ) -> None:
        if (
            queue_size < 1
            or queue_bytes < 1
            or batch_size < 1
            or flush_interval <= 0
            or linger < 0
            or min_backoff <= 0
            or max_backoff < min_backoff
        ):
            raise ValueError(
                "queue_size, queue_bytes and batch_size must be >= 1, intervals > 0, linger >= 0 "
                "and max_backoff >= min_backoff"
            )
        self.storage = storage
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.linger = linger
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._metrics = metrics
        self._prepare = prepare
        self._size_of = size_of
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
        self._flushing = 0  # flush() calls waiting: the writer does not linger for them
        self._pending = 0
        self._bytes = 0  # estimated bytes held by queued and pending rows
        self._bytes_lock = threading.Lock()  # request threads add, the writer subtracts: held for one addition
        self._give_up_at = float("inf")
        self._start_lock = threading.Lock()
        self._drop_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.rows_written = 0
        self.rows_dropped = 0
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.write_errors = 0
        self.write_timeouts = 0
        self._last_error_log = -_ERROR_LOG_INTERVAL
        self._logged_drop_reasons: set[str] = set()

    # -- the request path ---------------------------------------------------------------

    def put(self, record: Any, nbytes: int | None = None) -> bool:
        """Queue one record without blocking; False when it was dropped (queue full or writer shut down).

        ``nbytes``: the record's size when the caller knows it already (else ``size_of`` is asked).
        """
        if self._thread is None and not self._ensure_thread():
            self._count_drop("shutdown")
            return False
        queue = self._queue
        if len(queue) >= self.queue_size:
            self._count_drop("queue_full")
            return False
        if nbytes is None and self._size_of is not None:
            nbytes = self._size_of(record)
        if nbytes:
            if self._bytes + nbytes > self.queue_bytes:
                self._count_drop("queue_full")
                return False
            with self._bytes_lock:
                self._bytes += nbytes
        queue.append(record)
        if len(queue) >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    def _count_drop(self, reason: str, rows: int = 1, exc: BaseException | None = None) -> None:
        with self._drop_lock:  # only droppers take it; the writer never holds it for long
            self.rows_dropped += rows
            self.dropped[reason] += rows
            first = reason not in self._logged_drop_reasons
            self._logged_drop_reasons.add(reason)
        if self._metrics is not None:
            self._metrics.storage_rows_dropped.inc(rows)
            self._metrics.storage_dropped.labels(reason).inc(rows)
        if first:  # once per reason and writer: the type of the failure, never the row's values
            logger.warning(
                "flask-usage-otel dropped %d usage row(s): %s%s (later drops are only counted, "
                "see flask_usage_storage_dropped_total)",
                rows,
                reason,
                f" ({type(exc).__name__})" if exc is not None else "",
            )

    def _ensure_thread(self) -> bool:
        with self._start_lock:
            if self._closed:
                return False
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="flask-usage-otel-writer", daemon=True)
                thread.start()
                self._thread = thread
                # multiprocessing children end with os._exit, skipping atexit, but run these first.
                multiprocessing.util.Finalize(None, _exit_flush, args=(weakref.ref(self),), exitpriority=10)
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
        with self._idle:
            self._flushing += 1
        try:
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
        finally:
            with self._idle:
                self._flushing -= 1

    def shutdown(self, timeout: float | None = 5.0) -> bool:
        """Flush, stop the thread and refuse new rows; True when every queued row was written.

        Rows still unwritten when ``timeout`` passes (the database down or slow) are
        counted as dropped with reason ``timeout``.
        """
        with self._start_lock:
            self._closed = True
            thread, self._thread = self._thread, None  # later puts find no thread and are dropped
        if thread is None or self._pid != os.getpid():
            return not self._queue
        self._give_up_at = time.monotonic() + (3600.0 if timeout is None else timeout)
        self._stop.set()
        self._wake.set()
        thread.join(None if timeout is None else timeout + 1.0)
        # A thread stuck in a store call past its deadline loses what it holds too.
        left = self.queued if thread.is_alive() else len(self._queue)
        if left:
            logger.warning("flask-usage-otel storage writer stopped with %d rows not written", left)
            self._count_drop("timeout", left)
            self._queue.clear()
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
        wrote = False
        while queue:
            if len(queue) < self.batch_size and not self._flushing and not self._stop.is_set():
                if wrote:
                    # Rows that trickled in while a batch was written wait for the next interval (or a
                    # full batch): one commit per interval under light load, not one per linger.
                    break
                if self.linger:  # a partial batch: give it a moment to fill (put wakes us when it is full)
                    self._wake.wait(self.linger)
                    self._wake.clear()
            wrote = True
            with self._idle:
                self._busy = True
            items: list[Any] = []
            try:
                while queue and len(items) < self.batch_size:
                    items.append(queue.popleft())
            except IndexError:  # emptied under us: only possible after a fork reset
                pass
            self._pending = len(items)
            nbytes = 0 if self._size_of is None else sum(map(self._size_of, items))
            batch = Batch(items) if self._prepare is None else self._prepared(items)
            written = not batch or self._write_with_retry(batch)
            if not written:  # shut down while the database is down: put the batch back and stop
                queue.extendleft(reversed(batch))
            elif nbytes:
                with self._bytes_lock:
                    self._bytes -= nbytes
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

    def _prepared(self, items: list[Any]) -> Batch:
        prepare = self._prepare
        assert prepare is not None
        try:
            return Batch(map(prepare, items))  # the usual case, looped in C
        except Exception:  # an item it fails on: found and dropped, alone, below
            pass
        records = Batch()
        for item in items:
            try:
                records.append(prepare(item))
            except Exception as exc:  # one bad item never blocks the queue
                self._count_drop("unserialisable", exc=exc)
        return records

    def _write_with_retry(self, batch: Batch) -> bool:
        """Write one batch, retrying with backoff; False when shutdown's deadline passed while it still fails."""
        delay = self.min_backoff
        while True:
            try:
                self.storage.store(batch)
            except Exception as exc:
                self._count_error(exc)
                if not self._is_transient(exc):
                    remaining = self._write_one_by_one(batch)
                    if not remaining:
                        return True
                    batch = remaining  # the database failed for good reason in the middle: retry the rest
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

    def _write_one_by_one(self, batch: Batch) -> Batch:
        """After a non-transient failure: keep the good rows, drop (and count) the ones refused.

        Returns the rows not tried yet when a transient failure (the database went away)
        interrupts, so they are retried as a batch; empty when every row was dealt with.
        """
        for index, record in enumerate(batch):
            single = Batch((record,), batch_id=f"{batch.batch_id[:24]}{index:08x}")
            try:
                self.storage.store(single)
            except Exception as exc:
                self._count_error(exc)
                if self._is_transient(exc):
                    return Batch(batch[index:], batch_id=f"{batch.batch_id[:23]}r{index:08x}")
                self._count_drop("unserialisable" if isinstance(exc, _UNSERIALISABLE) else "rejected", exc=exc)
            else:
                self._count_written(1)
        return Batch()

    def _count_written(self, rows: int) -> None:
        self.rows_written += rows
        if self._metrics is not None:
            self._metrics.storage_rows_written.inc(rows)

    def _count_error(self, exc: BaseException) -> None:
        self.write_errors += 1
        timed_out = isinstance(exc, TimeoutError)
        if timed_out:
            self.write_timeouts += 1
        if self._metrics is not None:
            self._metrics.storage_write_errors.inc()
            if timed_out:
                self._metrics.storage_write_timeouts.inc()
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL:  # one line a minute, not one per retry
            self._last_error_log = now
            # The error's type and where it came from, never its text: a driver's message can quote row values.
            logger.warning(
                "flask-usage-otel could not write usage rows (%s; %d failed attempts so far, %d rows waiting)",
                _describe(exc),
                self.write_errors,
                self.queued,
            )

    def _update_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.storage_queue_rows.set(self.queued)

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here and its queued rows are the parent's to write.
        closed = self._closed
        self._reset()
        self._closed = closed


def _describe(exc: BaseException) -> str:
    """The error's type, its database error code when it has one, and the type of its cause."""
    parts = [type(exc).__name__]
    orig = getattr(exc, "orig", None) or exc.__cause__
    if orig is not None:
        parts.append(type(orig).__name__)
        code = getattr(orig, "sqlstate", None)
        if code is None:
            args = getattr(orig, "args", ())
            code = args[0] if args and isinstance(args[0], int) else None
        if code is not None:
            parts.append(f"code {code}")
    return ", ".join(parts)


def _exit_flush(writer_ref: weakref.ref[BatchWriter]) -> None:
    writer = writer_ref()
    if writer is not None and writer._pid == os.getpid():
        writer.shutdown(EXIT_FLUSH_TIMEOUT)


def _reset_writers_after_fork() -> None:
    for writer in list(_live_writers):
        writer._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_writers_after_fork)
