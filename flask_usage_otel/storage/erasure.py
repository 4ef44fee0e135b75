"""Deleting usage rows: ``prune`` (rows older than a time) and ``forget`` (an erasure request for a user
or an address), in chunks of a bounded number of rows per transaction."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ..columns import COLUMN_WIDTHS
from ..privacy import Anonymizer, stored_addresses
from .queries import chain_entry, check_positive_int, naive_utc
from .sql_rows import clean_text

if TYPE_CHECKING:
    from .table import TableState


class UsageErasure:
    """The deleting half of :class:`~flask_usage_otel.storage.sql.SQLStorage` (which provides what is declared here)."""

    table: sa.Table

    if TYPE_CHECKING:

        @property
        def engine(self) -> sa.Engine: ...

        def _table_state(self) -> TableState: ...

        def prune_batch_ids(self) -> int: ...

    def prune(self, older_than: timedelta, *, chunk_size: int = 10_000) -> int:
        """Delete rows older than ``older_than`` (from now), ``chunk_size`` rows per transaction;
        returns how many were deleted."""
        if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
            raise ValueError(f"older_than must be a positive timedelta, got {older_than!r}")
        cutoff = naive_utc(datetime.now(timezone.utc) - older_than)
        deleted = self._delete_in_chunks(self.table.c.datetime < cutoff, chunk_size)
        self.prune_batch_ids()  # the ids of written batches are kept a day, whatever the rows' retention
        return deleted

    def forget(
        self,
        username: str | None = None,
        remote_addr: str | None = None,
        *,
        anonymizer: Anonymizer | None = None,
        chunk_size: int = 10_000,
    ) -> int:
        """Delete every row of a user and/or a client address (an erasure request); returns how many.

        The values are transformed as they were when the rows were written, so they match:
        the user name cut to the column's width; the address with the app's anonymization
        (``TrackUsage.forget`` and ``flask usage forget`` pass it), in every spelling of the
        same address (``::ffff:192.0.2.1`` is ``192.0.2.1``), matched in ``remote_addr`` and as
        an entry of ``xforwardedfor``.

        :param anonymizer: the ``Anonymizer`` the rows were written with, if any.
        :raises ErasureRefused: the rows keep truncated addresses, which cannot single out a person.
        """
        if username is None and remote_addr is None:
            raise ValueError("forget needs a username, a remote_addr or both")
        check_positive_int("chunk_size", chunk_size)
        state = self._table_state()
        table = self.table
        conditions: list[sa.ColumnElement[bool]] = []
        if remote_addr is not None:
            # First: a refusal must come before anything is deleted.
            addresses = [clean_text(a, None) or "" for a in stored_addresses(remote_addr, anonymizer)]
            width = state.widths.get("remote_addr", COLUMN_WIDTHS["remote_addr"])
            conditions.append(table.c.remote_addr.in_([a[:width] for a in addresses]))
            if "xforwardedfor" in state.columns:
                conditions.extend(chain_entry(table.c.xforwardedfor, a) for a in addresses)
        if username is not None:
            conditions.append(table.c.username == clean_text(username, state.widths.get("username")))
        return self._delete_in_chunks(sa.or_(*conditions), chunk_size)

    def _delete_in_chunks(self, condition: sa.ColumnElement[bool], chunk_size: int) -> int:
        check_positive_int("chunk_size", chunk_size)
        self._table_state()
        engine = self.engine
        table = self.table
        if engine.dialect.name in ("mysql", "mariadb"):
            # MariaDB refuses LIMIT in an IN subquery but has DELETE ... LIMIT.
            statement = sa.delete(table).where(condition).with_dialect_options(mysql_limit=chunk_size)
        else:
            ids = sa.select(table.c.id).where(condition).limit(chunk_size).scalar_subquery()
            statement = sa.delete(table).where(table.c.id.in_(ids))
        deleted = 0
        while True:
            with engine.begin() as conn:
                count = conn.execute(statement).rowcount
            deleted += count
            if count < chunk_size:
                return deleted
