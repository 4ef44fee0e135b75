"""The ``UsageStorage`` protocol: what a backend for raw usage records provides.

(``flask_usage_otel.storage.Storage`` is Flask-Track-Usage's base class, kept at its module path.)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from ..record import UsageRecord

SUMMARY_BY: tuple[str, ...] = (
    "route",
    "url",
    "path",
    "endpoint",
    "remote_addr",
    "user_agent",
    "browser",
    "platform",
    "language",
    "server",
    "status",
    "username",
)
"""What ``get_summary(by=...)`` can group rows by."""

SUMMARY_PERIODS: tuple[str, ...] = ("hour", "day", "month")
"""The periods ``get_summary(period=...)`` can group rows into."""


@runtime_checkable
class UsageStorage(Protocol):
    """A backend for raw usage records.

    ``store`` is called off the request path (by the background writer's thread, or
    inline when ``TRACK_USAGE_SYNC_WRITES`` is on) with a batch of :class:`UsageRecord`;
    it either stores the whole batch or raises, so a retry never duplicates rows. A storage
    that deals with each record on its own and cannot undo the ones done returns how many it
    lost instead (they are counted as dropped, reason ``storage_error``).
    """

    def store(self, records: Sequence[UsageRecord]) -> int | None:
        """Store a batch of records atomically."""
        ...

    def get_usage(
        self,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        limit: int = 500,
        page: int = 1,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Raw rows, newest first."""
        ...
