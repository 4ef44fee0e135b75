"""The sinks that hand each finished request to a storage.

The request is captured on the request thread as plain data (``record.CapturedRequest``),
queued, and built into its ``UsageRecord`` on the writer's thread; the storage's ``store``
receives batches of records (:class:`StorageSink`). With ``TRACK_USAGE_SYNC_WRITES`` the
record is built and stored at once, on the request thread (:class:`SyncStorageSink`, meant
for tests and scripts that read straight back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..record import build_record
from ..sinks import QueueingSink, RequestState, Sink
from ..writer import Observer

if TYPE_CHECKING:
    from ..config import Settings
    from ..prometheus import PrometheusMetrics
    from ..record import RecordContext
    from .base import UsageStorage


def storage_sink(
    storage: UsageStorage, settings: Settings, metrics: PrometheusMetrics | None, context: RecordContext
) -> Sink:
    """The sink that writes an app's requests to ``storage``, as its settings say."""
    observer = metrics.storage_observer() if metrics is not None else Observer()
    if settings.sync_writes:
        return SyncStorageSink(storage, context, observer)
    return StorageSink(storage, context, settings, observer)


class StorageSink(QueueingSink):
    """Queues each request for a storage's ``store``, written in batches by a background thread."""

    name = "storage"

    def __init__(self, storage: UsageStorage, context: RecordContext, settings: Settings, observer: Observer) -> None:
        self.storage = storage
        super().__init__(storage, context, settings, observer)


class SyncStorageSink(Sink):
    """Stores each request's record at once, on the request thread (``TRACK_USAGE_SYNC_WRITES``)."""

    name = "storage"

    def __init__(self, storage: UsageStorage, context: RecordContext, observer: Observer) -> None:
        self.storage = storage
        self._context = context
        self._observer = observer

    def finish(self, state: RequestState) -> None:
        captured = state.captured
        if captured is None:  # a value of the request could not be made plain: its record alone is lost
            self._observer.dropped("unserialisable", 1)
            return
        try:
            lost = self.storage.store([build_record(self._context, captured)])
        except Exception:
            self._observer.dropped("storage_error", 1)
            raise  # the tracker logs it with its traceback (once per interval) and counts the sink's failure
        if lost:  # a row the storage lost on its own
            self._observer.dropped("storage_error", 1)
        else:
            self._observer.written(1)
