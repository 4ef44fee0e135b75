"""Daily range partitions of the usage table on PostgreSQL: ``PartitionedSQLStorage``.

At a few million rows a day, deleting old rows row by row (``prune``) costs as much as
writing them, and the table and its indexes only ever grow. Partitioned by day on
``datetime``, old days go with a ``DROP TABLE`` of their partition: instant, no dead
rows, no vacuum. Everything else works as on a plain table: ``get_usage``, ``iter_usage``,
summaries, ``forget`` and the CLI read and write the parent table, and PostgreSQL routes
each row to its day (and skips the days a query's date range excludes).

The writer thread makes the partitions: before a batch is written, every day it holds
(and ``days_ahead`` days after today) is made sure of, once per process and day, under
an advisory lock so that several workers never race on the same ``CREATE``; a day's
partition therefore exists before its first row, and midnight costs no DDL on the
request path of anyone.

The table's primary key is ``(id, datetime)`` (PostgreSQL requires the partition key in
every unique constraint); ``id`` is still unique, drawn from one sequence.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from ..record import UsageRecord
from .sql import SQLStorage

_SECONDS_PER_DAY = 86_400
_MAX_ID_LENGTH = 63  # PostgreSQL's identifier limit
_EPOCH = date(1970, 1, 1)


class PartitionedSQLStorage(SQLStorage):
    """:class:`SQLStorage` on a table partitioned by day (PostgreSQL only).

    The table is defined by ``usage_table(..., partition_by_day=True)``: ``PARTITION BY RANGE
    (datetime)`` and the primary key ``(id, datetime)``. A table already on a given ``metadata``
    (Flask-SQLAlchemy's) is used as it is defined there.

    Takes the arguments of :class:`SQLStorage`, plus:

    :param days_ahead: partitions made ahead of today, so each day's exists before its first row.

    An existing plain table is not converted: create the partitioned table under a new
    name (or migrate the rows yourself) and point the storage at it.
    """

    _partition_by_day = True

    def __init__(self, *args: Any, days_ahead: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(days_ahead, int) or isinstance(days_ahead, bool) or not 0 <= days_ahead <= 366:
            raise ValueError(f"days_ahead must be an int from 0 to 366, got {days_ahead!r}")
        self.days_ahead = days_ahead
        self._days: set[int] = set()  # days (since the epoch) whose partition this process made sure of
        self._days_lock = threading.Lock()

    # -- creating ------------------------------------------------------------------------

    def _create(self, engine: sa.Engine) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError(f"PartitionedSQLStorage needs PostgreSQL, not {engine.dialect.name}")
        super()._create(engine)
        today = _day_number(datetime.now(timezone.utc).timestamp())
        self.ensure_partitions(range(today, today + self.days_ahead + 1))

    def ensure_partitions(self, days: Sequence[int] | range) -> list[str]:
        """Create the partitions of ``days`` (days since 1970-01-01, UTC) that do not exist yet."""
        with self._days_lock:
            missing = [d for d in days if d not in self._days]
        if not missing:
            return []
        parent = self._qualified(self.table.name)
        created = []
        with self.engine.begin() as conn:
            # One process at a time per table: CREATE ... IF NOT EXISTS alone can still race.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": parent})
            for day in missing:
                name = self.partition_name(day)
                start, end = _day_start(day), _day_start(day + 1)
                conn.execute(
                    sa.text(
                        f"CREATE TABLE IF NOT EXISTS {self._qualified(name)} PARTITION OF {parent} "
                        f"FOR VALUES FROM ('{start.isoformat(sep=' ')}') TO ('{end.isoformat(sep=' ')}')"
                    )
                )
                created.append(name)
        with self._days_lock:
            self._days.update(missing)
        return created

    def partition_name(self, day: int) -> str:
        """The partition of ``day`` (days since 1970-01-01): ``{table}_p20261129``."""
        name = f"{self.table.name}_p{_day_start(day):%Y%m%d}"
        if len(name) <= _MAX_ID_LENGTH:
            return name
        digest = hashlib.sha1(self.table.name.encode()).hexdigest()[:8]
        return f"{self.table.name[: _MAX_ID_LENGTH - 19]}_{digest}_p{_day_start(day):%Y%m%d}"

    def partitions(self) -> list[tuple[str, date]]:
        """(name, day) of every daily partition of the table, oldest first."""
        query = sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:parent)"
        )
        with self.engine.connect() as conn:
            names = [row[0] for row in conn.execute(query, {"parent": self._qualified(self.table.name)})]
        found = []
        for name in names:
            suffix = name.rpartition("_p")[2]
            if len(suffix) == 8 and suffix.isdigit():
                found.append((name, datetime.strptime(suffix, "%Y%m%d").date()))
        return sorted(found, key=lambda item: item[1])

    # -- writing -------------------------------------------------------------------------

    def store(self, records: Sequence[UsageRecord]) -> None:
        """Make sure of the batch's days (and those ahead of today), then insert as :class:`SQLStorage`."""
        if records:
            days = {_day_number(r.timestamp) for r in records}
            today = _day_number(datetime.now(timezone.utc).timestamp())
            days.update(range(today, today + self.days_ahead + 1))
            if not days <= self._days:
                self._table_state()  # creates the parent table first when create_tables is on
                self.ensure_partitions(sorted(days))
        super().store(records)

    # -- deleting ------------------------------------------------------------------------

    def prune(self, older_than: timedelta, *, chunk_size: int = 10_000) -> int:
        """Drop the partitions of days wholly older than ``older_than``, then delete the older
        rows of the day the cut falls in; returns how many rows went."""
        if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
            raise ValueError(f"older_than must be a positive timedelta, got {older_than!r}")
        cutoff = datetime.now(timezone.utc) - older_than
        parent = self._qualified(self.table.name)
        dropped = 0
        for name, day in self.partitions():
            if datetime.combine(day + timedelta(days=1), datetime.min.time(), timezone.utc) > cutoff:
                continue
            qualified = self._qualified(name)
            with self.engine.begin() as conn:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": parent})
                dropped += int(conn.execute(sa.text(f"SELECT count(*) FROM {qualified}")).scalar_one())
                conn.execute(sa.text(f"DROP TABLE {qualified}"))
            with self._days_lock:
                self._days.discard((day - _EPOCH).days)
        # The day the cut falls in keeps its partition; its older rows go row by row.
        return dropped + super().prune(older_than, chunk_size=chunk_size)

    # -- helpers -------------------------------------------------------------------------

    def _qualified(self, name: str) -> str:
        quote = self.engine.dialect.identifier_preparer.quote
        schema = self.table.schema
        return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def _day_number(timestamp: float) -> int:
    return int(timestamp // _SECONDS_PER_DAY)


def _day_start(day: int) -> datetime:
    """Midnight UTC of ``day`` as the naive datetime the table stores."""
    return datetime(1970, 1, 1) + timedelta(days=day)
