"""``StorageSink``: hands each finished record to a storage, off the request path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..sinks import RequestState, Sink

if TYPE_CHECKING:
    from ..config import Settings
    from ..prometheus import PrometheusMetrics
    from .base import Storage


class StorageSink(Sink):
    """Writes records to one storage (synchronously for now)."""

    name = "storage"

    def __init__(self, storage: Storage, settings: Settings, metrics: PrometheusMetrics | None) -> None:
        self.storage = storage
        self._metrics = metrics

    def finish(self, state: RequestState) -> None:
        self.storage.store([state.record])
