"""``BatchWriter``: the queue, the thread, batching, retries, deadlines, flush, fork and exit (see the package)."""

from __future__ import annotations

import collections
import logging
import multiprocessing.util
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .protocol import DROP_REASONS, PROGRAMMING_ERRORS, Batch, Observer, Target

logger = logging.getLogger("flask_usage_otel.writer")

_ERROR_LOG_INTERVAL = 60.0
_GAUGE_INTERVAL = 1.0  # seconds between two queue-depth reports while the writer waits to retry
EXIT_FLUSH_TIMEOUT = 5.0
"""Seconds a process that exits gives its writer to write what is queued."""

_live_writers: weakref.WeakSet[BatchWriter] = weakref.WeakSet()


class BatchWriter:
    """Writes items to ``target`` in batches from one background thread.

    :param target: where batches go (see :class:`Target`).
    :param queue_size: most rows waiting (``TRACK_USAGE_QUEUE_SIZE``); more are dropped and counted.
    :param queue_bytes: most bytes the waiting rows may hold, as ``size_of`` measures them
        (``TRACK_USAGE_QUEUE_BYTES``); more are dropped and counted.
    :param size_of: the bytes a queued item holds (asked when it is taken off the queue, so it must
        give what ``put`` was told); None: items are not sized.
    :param batch_size: rows per ``store`` call (``TRACK_USAGE_BATCH_SIZE``); a full batch is written at once.
    :param flush_interval: seconds a row may wait for its batch to fill (``TRACK_USAGE_FLUSH_INTERVAL``).
    :param linger: seconds the writer waits for a partial batch to fill before writing it
        (``TRACK_USAGE_BATCH_LINGER``), so trickling rows are written in a few large
        transactions instead of many small ones; ``flush`` and ``shutdown`` do not wait.
    :param observer: told what is written, dropped (by reason) and failed, and the queue's depth.
    :param min_backoff: first retry delay in seconds after a failed write; doubles on each failure.
    :param max_backoff: longest retry delay in seconds.
    :param prepare: turns each queued item into what ``target.store`` takes, on the writer's
        thread, once per item (not again on a retry); an item it fails on is dropped and
        counted as ``unserialisable``. Default: items are stored as they are.
    """

    def __init__(
        self,
        target: Target,
        *,
        queue_size: int = 10_000,
        queue_bytes: int = 64 * 1024 * 1024,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        linger: float = 0.05,
        observer: Observer | None = None,
        min_backoff: float = 0.1,
        max_backoff: float = 15.0,
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
        self.target = target
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.linger = linger
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.observer = observer or Observer()
        self._prepare = prepare
        self._size_of = size_of
        is_transient = getattr(target, "is_transient_error", None)
        self._is_transient: Callable[[BaseException], bool] = is_transient or _not_a_programming_error
        self._describe: Callable[[BaseException], str] = getattr(target, "describe_error", None) or _describe
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
        self._bytes = 0  # bytes held by queued and pending rows
        self._bytes_lock = threading.Lock()  # request threads add, the writer subtracts: held for one addition
        self._give_up_at = float("inf")
        self._start_lock = threading.Lock()
        self._drop_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.rows_written = 0
        self.rows_dropped = 0
        self.lost_after_queueing = 0
        """Rows accepted by ``put`` and then dropped (a ``flush`` that saw one reports failure)."""
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.write_errors = 0
        self.write_timeouts = 0
        self._last_error_log = -_ERROR_LOG_INTERVAL
        self._logged_drop_reasons: set[str] = set()

    # -- the request path ---------------------------------------------------------------

    def put(self, item: Any, nbytes: int | None = None) -> bool:
        """Queue one item without blocking; False when it was dropped (queue full or writer shut down).

        ``nbytes``: the item's size when the caller knows it already (else ``size_of`` is asked).
        """
        if self._thread is None and not self._ensure_thread():
            self.drop("shutdown")
            return False
        queue = self._queue
        if len(queue) >= self.queue_size:
            self.drop("queue_full")
            return False
        if nbytes is None and self._size_of is not None:
            nbytes = self._size_of(item)
        if nbytes:
            if self._bytes + nbytes > self.queue_bytes:
                self.drop("queue_full")
                return False
            with self._bytes_lock:
                self._bytes += nbytes
        queue.append(item)
        if len(queue) >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    def drop(self, reason: str, rows: int = 1, exc: BaseException | None = None) -> None:
        """Count ``rows`` lost for ``reason``; the first drop of each reason is logged (its type, never values)."""
        with self._drop_lock:  # only droppers take it; the writer never holds it for long
            self.rows_dropped += rows
            self.dropped[reason] += rows
            if reason not in ("queue_full", "shutdown"):
                self.lost_after_queueing += rows
            first = reason not in self._logged_drop_reasons
            self._logged_drop_reasons.add(reason)
        self.observer.dropped(reason, rows)
        if first:
            logger.warning(
                "flask-usage-otel dropped %d usage row(s): %s%s (later drops are only counted, "
                "see flask_usage_storage_dropped_total)",
                rows,
                reason,
                f" ({type(exc).__name__})" if exc is not None else "",
                # A bug in the target: its traceback says where. Row values are not in a traceback's text.
                exc_info=exc if reason == "storage_error" else None,
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

    @property
    def queued_bytes(self) -> int:
        """Bytes the waiting rows hold, as ``size_of`` measured them."""
        return self._bytes

    def flush(self, timeout: float | None = None) -> bool:
        """Write out everything queued so far.

        True when every row queued so far was written; False on timeout, or when a row queued
        before the flush ended was dropped instead (rejected, unbuildable, a target's bug).
        """
        lost_before = self.lost_after_queueing
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
            return self.lost_after_queueing == lost_before
        finally:
            with self._idle:
                self._flushing -= 1

    def shutdown(self, timeout: float | None = 5.0) -> bool:
        """Flush, stop the thread and refuse new rows; True when every queued row was written.

        Rows still unwritten when ``timeout`` passes (the target down or slow) are
        counted as dropped with reason ``timeout``.
        """
        with self._start_lock:
            self._closed = True
            thread, self._thread = self._thread, None  # later puts find no thread and are dropped
        if thread is None or self._pid != os.getpid():
            return not self._queue
        lost_before = self.lost_after_queueing
        self._give_up_at = time.monotonic() + (3600.0 if timeout is None else timeout)
        self._stop.set()
        self._wake.set()
        thread.join(None if timeout is None else timeout + 1.0)
        # A thread stuck in a store call past its deadline loses what it holds too.
        left = self.queued if thread.is_alive() else len(self._queue)
        if left:
            self.drop("timeout", left)
            self._queue.clear()
        lost = self.lost_after_queueing - lost_before
        if lost:
            logger.warning("flask-usage-otel writer stopped with %d rows not written", lost)
        return not lost and not thread.is_alive()

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._drain()
            self._report_depth()
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
            unwritten = self._write_with_retry(batch) if batch else 0
            if unwritten:  # shutdown's deadline passed while the target still fails
                self.drop("timeout", unwritten)
            if nbytes:
                with self._bytes_lock:
                    self._bytes -= nbytes
            self._pending = 0
            self._report_depth()
            with self._idle:
                self._busy = False
                self._idle.notify_all()
            if unwritten:
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
        prepared = Batch()
        for item in items:
            try:
                prepared.append(prepare(item))
            except Exception as exc:  # one bad item never blocks the queue
                self.drop("unserialisable", exc=exc)
        return prepared

    def _write_with_retry(self, batch: Batch) -> int:
        """Write one batch, retrying with backoff; the rows left unwritten when shutdown's deadline passed."""
        delay = self.min_backoff
        while True:
            try:
                lost = self.target.store(batch)
            except Exception as exc:
                self._count_error(exc)
                if not self._is_transient(exc):
                    remaining = self._write_one_by_one(batch)
                    if not remaining:
                        return 0
                    batch = remaining  # the target failed for good reason in the middle: retry the rest
                if self._stop.is_set():
                    # Shutting down: retry quickly until shutdown's deadline, then give up.
                    if time.monotonic() >= self._give_up_at:
                        return len(batch)
                    time.sleep(min(delay, 0.2, max(0.0, self._give_up_at - time.monotonic())))
                else:
                    self._wait_before_retry(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            if lost:  # rows the target failed on its own (and logged), the others stored
                self.drop("storage_error", lost)
            self._count_written(len(batch) - (lost or 0))
            return 0

    def _wait_before_retry(self, delay: float) -> None:
        """Wait ``delay`` (shutdown cuts it short), reporting the queue's depth each second meanwhile:
        rows keep arriving while the target is down, and an alert on the depth must see them."""
        until = time.monotonic() + delay
        while True:
            self._report_depth()
            remaining = until - time.monotonic()
            if remaining <= 0 or self._stop.wait(min(remaining, _GAUGE_INTERVAL)):
                return

    def _write_one_by_one(self, batch: Batch) -> Batch:
        """After a failure that retrying cannot fix: keep the good rows, drop (and count) the others.

        Returns the rows not tried yet when a transient failure (the target went away)
        interrupts, so they are retried as a batch; empty when every row was dealt with.
        """
        bugs: list[BaseException] = []
        stored = 0
        for index, record in enumerate(batch):
            single = Batch((record,), batch_id=f"{batch.batch_id[:24]}{index:08x}")
            try:
                self.target.store(single)
            except Exception as exc:
                self._count_error(exc)
                if self._is_transient(exc):
                    self._drop_bugs(bugs, stored)
                    return Batch(batch[index:], batch_id=f"{batch.batch_id[:23]}r{index:08x}")
                if isinstance(exc, PROGRAMMING_ERRORS):
                    bugs.append(exc)
                else:
                    self.drop("rejected", exc=exc)
            else:
                stored += 1
                self._count_written(1)
        self._drop_bugs(bugs, stored)
        return Batch()

    def _drop_bugs(self, bugs: list[BaseException], stored: int) -> None:
        """Rows that failed with a programming error: their own fault when others were stored, else the target's."""
        if bugs:
            self.drop("unserialisable" if stored else "storage_error", len(bugs), exc=bugs[0])

    def _count_written(self, rows: int) -> None:
        self.rows_written += rows
        self.observer.written(rows)

    def _count_error(self, exc: BaseException) -> None:
        self.write_errors += 1
        timed_out = isinstance(exc, TimeoutError)
        if timed_out:
            self.write_timeouts += 1
        self.observer.write_failed(timed_out)
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL:  # one line a minute, not one per retry
            self._last_error_log = now
            logger.warning(
                "flask-usage-otel could not write usage rows (%s; %d failed attempts so far, %d rows waiting)",
                self._describe(exc),
                self.write_errors,
                self.queued,
            )

    def _report_depth(self) -> None:
        self.observer.queue_depth(self.queued)

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here and its queued rows are the parent's to write.
        closed = self._closed
        self._reset()
        self._closed = closed


def _not_a_programming_error(exc: BaseException) -> bool:
    """For a target that does not say: retry anything but a programming error."""
    return not isinstance(exc, PROGRAMMING_ERRORS)


def _describe(exc: BaseException) -> str:
    """The error's type and the type of its cause: never its text, which may quote row values."""
    cause = exc.__cause__
    return type(exc).__name__ if cause is None else f"{type(exc).__name__}, {type(cause).__name__}"


def _exit_flush(writer_ref: weakref.ref[BatchWriter]) -> None:
    writer = writer_ref()
    if writer is not None and writer._pid == os.getpid():
        writer.shutdown(EXIT_FLUSH_TIMEOUT)


def _reset_writers_after_fork() -> None:
    for writer in list(_live_writers):
        writer._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_writers_after_fork)
