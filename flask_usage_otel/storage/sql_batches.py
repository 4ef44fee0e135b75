"""Idempotent batch retries: each batch's id is recorded in the batch's own transaction.

When the connection breaks after the server committed but before its answer
arrived, the writer cannot know whether the batch is in; it retries. The retry
inserts the batch id first: a unique-key conflict means the earlier attempt
committed (the retry rolls back and counts the batch as written); no conflict
means it did not, and the retry writes the batch. A conflicting attempt still in
progress on the server makes the retry wait for its outcome (the unique index's
lock), so the answer is exact on PostgreSQL, MariaDB and SQLite, on every write
path (COPY included), and on a Flask-Track-Usage table, which is never altered:
the ids live in a table of their own, ``<table>_batches``.

Ids are kept ``BATCH_ID_RETENTION`` (a retry never comes later than its writer's
process lives). Older ones are deleted by each writer with its first batch and then at most
once an hour (so writers that live minutes, such as recycled gunicorn workers, prune too),
and by every ``prune`` (``SQLStorage.prune``, ``flask usage prune``).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from .sql_errors import driver_error

BATCH_ID_RETENTION = timedelta(days=1)
_PRUNE_EVERY = 3600.0  # seconds
_MAX_ID_LENGTH = 63  # PostgreSQL's identifier limit (MariaDB's is 64)


class AlreadyWritten(Exception):
    """A retried batch had been committed by an earlier attempt whose answer was lost."""


def batch_table_name(usage_table: str) -> str:
    """``<usage_table>_batches``, shortened with a hash when too long for an identifier."""
    name = f"{usage_table}_batches"
    if len(name) <= _MAX_ID_LENGTH:
        return name
    digest = hashlib.sha1(usage_table.encode()).hexdigest()[:8]
    return f"{usage_table[: _MAX_ID_LENGTH - 18]}_{digest}_batches"


def batch_table(usage_table: str, metadata: sa.MetaData, schema: str | None) -> sa.Table:
    """The table of written batch ids (defined on ``metadata`` so ``create_all`` and migrations see it)."""
    name = batch_table_name(usage_table)
    key = f"{schema}.{name}" if schema else name
    if key in metadata.tables:
        return metadata.tables[key]
    return sa.Table(
        name,
        metadata,
        sa.Column("batch_id", sa.String(32), primary_key=True),
        sa.Column("written_at", sa.DateTime(), nullable=False),
        schema=schema,
        mysql_charset="utf8mb4",
    )


class BatchLog:
    """Records batch ids in a transaction and prunes old ones."""

    def __init__(self, table: sa.Table) -> None:
        self.table = table
        self._last_prune = -_PRUNE_EVERY  # the first batch of each writer prunes
        self._compiled: tuple[sa.Dialect, str, Any] | None = None

    def claim(self, conn: sa.Connection, batch_id: str) -> None:
        """Record ``batch_id`` in ``conn``'s transaction; raise :class:`AlreadyWritten` when it is there already.

        Sent on the driver's cursor with a statement compiled once per dialect: this runs
        once per batch on the writer's thread, and SQLAlchemy's per-call work would cost
        more than the INSERT itself.
        """
        dialect = conn.dialect
        compiled = self._compiled
        if compiled is None or compiled[0] is not dialect:
            compiled = self._compiled = (dialect, *_insert_sql(self.table, dialect))
        _, sql, parameters = compiled
        raw = conn.connection.dbapi_connection
        assert raw is not None
        dbapi = dialect.loaded_dbapi
        cursor = raw.cursor()
        try:
            cursor.execute(sql, parameters(batch_id, utcnow()))
        except dbapi.IntegrityError:
            raise AlreadyWritten(batch_id) from None
        except dbapi.Error as exc:
            raise driver_error(conn, exc, sql, cursor) from exc
        finally:
            with contextlib.suppress(Exception):
                cursor.close()

    def prune_due(self) -> bool:
        return time.monotonic() - self._last_prune >= _PRUNE_EVERY

    def prune(self, engine: sa.Engine) -> int:
        """Delete ids older than ``BATCH_ID_RETENTION``; returns how many."""
        self._last_prune = time.monotonic()
        cutoff = utcnow() - BATCH_ID_RETENTION
        with engine.begin() as conn:
            return int(conn.execute(sa.delete(self.table).where(self.table.c.written_at < cutoff)).rowcount)


def _insert_sql(table: sa.Table, dialect: sa.Dialect) -> tuple[str, Callable[[str, datetime], Any]]:
    """The INSERT of one batch id as the driver takes it, and what makes its parameters for the driver."""
    compiled = table.insert().compile(dialect=dialect, column_keys=["batch_id", "written_at"])
    process = table.c.written_at.type.dialect_impl(dialect).bind_processor(dialect) or (lambda value: value)
    order = compiled.positiontup
    if order is None:  # named parameters (pyformat, named)

        def named(batch_id: str, written_at: datetime) -> Any:
            return {"batch_id": batch_id, "written_at": process(written_at)}

        return compiled.string, named
    if list(order) == ["batch_id", "written_at"]:
        return compiled.string, lambda batch_id, written_at: (batch_id, process(written_at))
    raise RuntimeError(f"unexpected parameters {order} in the INSERT into {table.name}")


def utcnow() -> datetime:
    """Now in UTC, naive, as ``written_at`` stores it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)
