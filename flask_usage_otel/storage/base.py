"""The ``Storage`` protocol: what a backend for raw usage records provides."""

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
class Storage(Protocol):
    """A backend for raw usage records.

    ``store`` is called off the request path (by the storage writer's thread, or
    inline when ``TRACK_USAGE_SYNC_WRITES`` is on) with a batch of records; it
    either stores the whole batch or raises, so a retry never duplicates rows.
    """

    def store(self, records: Sequence[UsageRecord]) -> None:
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
