"""``StorageSink``: hands each finished record to a storage, off the request path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app, has_app_context

from ..record import UsageRecord
from ..sinks import RequestState, Sink
from .batch import BatchWriter

if TYPE_CHECKING:
    from ..config import Settings
    from ..prometheus import PrometheusMetrics
    from .base import Storage


class StorageSink(Sink):
    """Queues each record for a :class:`BatchWriter` (or, with ``TRACK_USAGE_SYNC_WRITES``,
    writes it at once, which is meant for tests and scripts)."""

    name = "storage"

    def __init__(self, storage: Storage, settings: Settings, metrics: PrometheusMetrics | None) -> None:
        self.storage = storage
        self._metrics = metrics
        # A storage that needs the app (one using Flask-SQLAlchemy's engine) learns it on the first request.
        self._bind_app = getattr(storage, "bind_app", None)
        self.writer: BatchWriter | None = None
        if not settings.sync_writes:
            self.writer = BatchWriter(
                storage,
                queue_size=settings.queue_size,
                batch_size=settings.batch_size,
                flush_interval=settings.flush_interval,
                metrics=metrics,
                # The request thread queues its state; the writer builds the record from it.
                prepare=_record_of,
            )

    def finish(self, state: RequestState) -> None:
        if self._bind_app is not None and has_app_context():
            bind, self._bind_app = self._bind_app, None
            bind(current_app._get_current_object())  # type: ignore[attr-defined]
        writer = self.writer
        if writer is not None:
            writer.put(state)
            return
        self.storage.store([state.record])
        if self._metrics is not None:
            self._metrics.storage_rows_written.inc()

    def flush(self, timeout: float | None = None) -> bool:
        return True if self.writer is None else self.writer.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> None:
        if self.writer is not None:
            self.writer.shutdown(timeout)


def _record_of(item: RequestState | UsageRecord) -> UsageRecord:
    # A batch put back after a failed shutdown write holds records already.
    return item.record if isinstance(item, RequestState) else item
