"""The background writer: a bounded queue and one thread between the request path and a target.

The request thread only appends to a deque (a few hundred nanoseconds); the writer
thread takes batches off it and hands each batch to ``target.store`` in one call
(one transaction for a database). When the target is slow or down the writer keeps the
batch and retries it with capped exponential backoff; the queue keeps filling meanwhile,
and once it is full (in rows or in bytes) new rows are dropped and counted, so memory
stays bounded and a request never waits.

Every row ends up written or counted as dropped with a reason (``DROP_REASONS``): one bad
row is dropped alone and never blocks the rows behind it. What happens is reported to an
:class:`Observer` (the Prometheus metrics are one); this module knows no sink, metric
library or database.

Each batch handed to ``store`` is a :class:`Batch` carrying a ``batch_id`` that stays the
same across retries of that batch, so a target can make a retry idempotent
(``SQLStorage`` records the id in the batch's own transaction).

Fork safety: the thread is started lazily on the first ``put``. A child created by
``fork`` (gunicorn workers, multiprocessing) forgets the parent's thread and queued rows
(they are the parent's to write) and starts its own thread on its own first ``put``. Each
process that starts a writer thread registers an exit flush both with ``atexit`` (through
the extension) and with ``multiprocessing.util.Finalize``, which multiprocessing children
run although they leave through ``os._exit``.
"""

from .batch_writer import EXIT_FLUSH_TIMEOUT, BatchWriter
from .protocol import DROP_REASONS, PROGRAMMING_ERRORS, Batch, Observer, Target

__all__ = ["DROP_REASONS", "EXIT_FLUSH_TIMEOUT", "PROGRAMMING_ERRORS", "Batch", "BatchWriter", "Observer", "Target"]
