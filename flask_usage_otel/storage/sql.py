"""``SQLStorage``: raw usage rows in any SQLAlchemy database (SQLAlchemy 2 Core, no ORM session).

The table is a superset of Flask-Track-Usage's ``flask_usage`` table: the same
column names for the columns it had, widths that hold real data, and the new
record fields. Values longer than a column are cut to its width (see
``COLUMN_WIDTHS``) rather than failing the INSERT, and NUL characters, which
PostgreSQL refuses in text, are removed. Timestamps are stored as naive UTC (as
Flask-Track-Usage did) and returned timezone-aware.

A table created by Flask-Track-Usage 2.0 keeps working: the storage reads which
columns exist, writes only those (cut to their narrower widths), and
:meth:`SQLStorage.upgrade_table` (``flask usage upgrade-table``) adds the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.pool import SingletonThreadPool, StaticPool

from ..privacy import Anonymizer, stored_addresses
from . import sql_errors
from .base import SUMMARY_BY, SUMMARY_PERIODS
from .deadline import WriteTimeout, watchdog
from .engine import make_engine, register_engine
from .legacy_rows import legacy_usage_dict
from .sql_batches import AlreadyWritten, BatchLog, batch_table
from .sql_rows import JSON_COLUMNS, Inserter, clean_text
from .summaries import Summaries

if TYPE_CHECKING:
    from flask import Flask

    from ..record import UsageRecord

logger = logging.getLogger("flask_usage_otel.storage")

COLUMN_WIDTHS: dict[str, int] = {
    "url": 4096,
    "ua_browser": 64,
    "ua_language": 64,
    "ua_platform": 64,
    "ua_version": 64,
    "blueprint": 255,
    "view_args": 16_000,
    "remote_addr": 64,
    "xforwardedfor": 1024,
    "ip_info": 16_000,
    "path": 2048,
    "username": 255,
    "track_var": 16_000,
    "method": 16,
    "route": 512,
    "endpoint": 255,
    "user_agent_raw": 1024,
    "server_name": 255,
    "protocol": 16,
    "exception": 255,
    "trace_id": 32,
    "span_id": 16,
}
"""Most characters kept per text column; longer values are cut. JSON columns hold at most
16,000 characters (a MariaDB TEXT holds 65,535 bytes, four per utf8mb4 character)."""

LEGACY_COLUMNS: tuple[str, ...] = (
    "id",
    "url",
    "ua_browser",
    "ua_language",
    "ua_platform",
    "ua_version",
    "blueprint",
    "view_args",
    "status",
    "remote_addr",
    "xforwardedfor",
    "authorization",
    "ip_info",
    "path",
    "speed",
    "datetime",
    "username",
    "track_var",
)
"""The columns of Flask-Track-Usage 2.0's ``flask_usage`` table."""

FILTER_COLUMNS: tuple[str, ...] = ("endpoint", "route", "blueprint", "status", "method", "username")
"""Columns ``get_usage`` filters on."""

INDEXED_FILTERS: tuple[str, ...] = ("route", "username")
"""Filter columns with an index ``(column, datetime)``, besides the index on ``datetime`` alone.

Every index costs each INSERT (about 1 µs of the writer's CPU per row and index on SQLite,
more server time on PostgreSQL), so only these are kept:

- ``datetime``: every time range (``get_usage``, ``iter_usage``, summaries, ``prune``, the
  dashboards) and the newest-first order of ``get_usage``;
- ``(route, datetime)``: the usual filter, and a rarely hit route would otherwise scan the whole
  time range; ``endpoint`` is one-to-one with the route in most apps and is served by the
  ``datetime`` index within a range;
- ``(username, datetime)``: many distinct values, so a user's rows are few and scattered, and
  ``forget(username=...)`` (an erasure request) must find them without reading the table.

``status``, ``method`` and ``blueprint`` have a handful of values each: the ``datetime`` index
over the requested range, then a filter, reads about as much as their index would.
"""

DROPPED_INDEXES: tuple[str, ...] = ("endpoint", "blueprint", "status", "method")
"""Filter columns that had an index ``ix_<table>_<column>`` in earlier versions; ``upgrade_table`` drops them."""

SUMMARY_COLUMNS: dict[str, str] = {
    "route": "route",
    "url": "url",
    "path": "path",
    "endpoint": "endpoint",
    "remote_addr": "remote_addr",
    "user_agent": "user_agent_raw",
    "browser": "ua_browser",
    "platform": "ua_platform",
    "language": "ua_language",
    "server": "server_name",
    "status": "status",
    "username": "username",
}
"""The column each ``get_summary(by=...)`` choice groups by."""
assert tuple(SUMMARY_COLUMNS) == SUMMARY_BY

_MAX_ID_LENGTH = 63  # PostgreSQL's identifier limit (MariaDB's is 64)


def usage_table(
    name: str = "flask_usage",
    metadata: sa.MetaData | None = None,
    schema: str | None = None,
    *,
    partition_by_day: bool = False,
) -> sa.Table:
    """The ``flask_usage`` table definition (on a new ``MetaData`` unless one is given).

    ``partition_by_day``: PostgreSQL range partitioning on ``datetime`` (see ``storage.partitions``),
    whose primary key must then include ``datetime``.
    """
    metadata = metadata if metadata is not None else sa.MetaData()

    def text(column: str) -> sa.Column[str]:
        width = COLUMN_WIDTHS[column]
        kind: sa.types.TypeEngine[str] = sa.Text() if column in JSON_COLUMNS else sa.String(width)
        return sa.Column(column, kind, nullable=True)

    table = sa.Table(
        name,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        text("url"),
        text("ua_browser"),
        text("ua_language"),
        text("ua_platform"),
        text("ua_version"),
        text("blueprint"),
        text("view_args"),
        sa.Column("status", sa.Integer()),
        text("remote_addr"),
        text("xforwardedfor"),
        sa.Column("authorization", sa.Boolean()),
        text("ip_info"),
        text("path"),
        sa.Column("speed", sa.Double()),
        # Microseconds on MariaDB too (its DATETIME keeps whole seconds by default).
        sa.Column(
            "datetime",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
            nullable=False,
            primary_key=partition_by_day,
        ),
        text("username"),
        text("track_var"),
        # New in flask-usage-otel:
        text("method"),
        text("route"),
        text("endpoint"),
        text("user_agent_raw"),
        sa.Column("content_length", sa.BigInteger()),
        sa.Column("response_size", sa.BigInteger()),
        text("server_name"),
        text("protocol"),
        text("exception"),
        text("trace_id"),
        text("span_id"),
        schema=schema,
        # utf8mb4 with a binary collation: every character fits, and grouping and
        # filtering are exact as on PostgreSQL and SQLite.
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        postgresql_partition_by="RANGE (datetime)" if partition_by_day else None,
    )
    sa.Index(_index_name(name, "datetime"), table.c.datetime)
    for column in INDEXED_FILTERS:
        sa.Index(_index_name(name, column), table.c[column], table.c.datetime)
    return table


def _index_name(table: str, column: str) -> str:
    name = f"ix_{table}_{column}"
    if len(name) <= _MAX_ID_LENGTH:
        return name
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    return f"ix_{table[: _MAX_ID_LENGTH - len(column) - 13]}_{digest}_{column}"


@dataclass(frozen=True)
class _TableState:
    """What the database table really has (it may be a narrower, older table)."""

    columns: tuple[str, ...]
    widths: dict[str, int]
    batch_ids: bool = True
    """Whether the ``<table>_batches`` table exists (idempotent retries); see ``sql_batches``."""

    @property
    def is_legacy(self) -> bool:
        return any(c.name not in self.columns for c in _NEW_COLUMNS)


_NEW_COLUMNS = tuple(c for c in usage_table().columns if c.name not in LEGACY_COLUMNS)


class SQLStorage:
    """Stores usage records in a SQL table and reads them back.

    Give exactly one of:

    :param conn_str: an SQLAlchemy URL, e.g. ``"sqlite:///usage.db"`` or
        ``"postgresql+psycopg://user@host/db"``; the storage makes its own engine.
    :param engine: an existing SQLAlchemy ``Engine``.
    :param db: a Flask-SQLAlchemy (or Flask-SQLAlchemy-Lite) object; its engine is used
        (looked up in the app context) and, with Flask-SQLAlchemy, its ``metadata``, so
        ``db.create_all()`` and migration tools see the table.

    :param table_name: the table (default ``flask_usage``, as Flask-Track-Usage).
    :param metadata: a ``MetaData`` to define the table on (default: ``db.metadata`` or a new one).
    :param schema: the database schema of the table (PostgreSQL), default the connection's.
    :param create_tables: create the table and its indexes on first use when missing.
    :param engine_options: extra ``create_engine`` keyword arguments (with ``conn_str`` only).
    :param connect_timeout: seconds to open a connection (engines made from ``conn_str``); None: the driver's default.
    :param statement_timeout: seconds one statement may take (engines made from ``conn_str``): PostgreSQL's
        ``statement_timeout``, PyMySQL's read and write timeouts, SQLite's busy timeout; None: no limit.
    :param write_timeout: seconds one attempt to write a batch may take, whatever the engine; past it the
        connection is cut, and the attempt is counted as a timeout and retried. None: no limit.
    :param hooks: Flask-Track-Usage's summary hooks (``sumUrl``, ``sumRemote``, ``sumUserAgent``,
        ``sumLanguage``, ``sumServer`` from :mod:`flask_usage_otel.summarization`): hits and bytes
        per hour, day and month in their own tables, updated with each written batch; read with
        :meth:`get_sum`.

    As in Flask-Track-Usage, an engine may also be given as the first argument.
    """

    _partition_by_day = False  # True in storage.partitions.PartitionedSQLStorage

    def __init__(
        self,
        conn_str: str | None = None,
        *,
        engine: sa.Engine | None = None,
        db: Any = None,
        table_name: str = "flask_usage",
        metadata: sa.MetaData | None = None,
        schema: str | None = None,
        create_tables: bool = True,
        engine_options: Mapping[str, Any] | None = None,
        hooks: Sequence[Any] | None = None,
        connect_timeout: float | None = 10.0,
        statement_timeout: float | None = 15.0,
        write_timeout: float | None = 30.0,
    ) -> None:
        if isinstance(conn_str, sa.Engine) and engine is None:  # Flask-Track-Usage's SQLStorage(engine)
            conn_str, engine = None, conn_str
        given = [name for name, value in (("conn_str", conn_str), ("engine", engine), ("db", db)) if value is not None]
        if len(given) != 1:
            raise ValueError(
                "SQLStorage needs exactly one of conn_str, engine or db, got "
                + (", ".join(given) if given else "none of them")
            )
        if not table_name or not isinstance(table_name, str):
            raise ValueError(f"table_name must be a non-empty string, got {table_name!r}")
        if engine_options and conn_str is None:
            raise ValueError("engine_options only apply with conn_str")
        for name, seconds in (
            ("connect_timeout", connect_timeout),
            ("statement_timeout", statement_timeout),
            ("write_timeout", write_timeout),
        ):
            bad = isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0
            if seconds is not None and bad:
                raise ValueError(f"{name} must be a positive number of seconds or None, got {seconds!r}")
        self.write_timeout = write_timeout
        self._engine: sa.Engine | None = engine
        if engine is not None:
            _refuse_private_memory_database(engine)
            register_engine(engine)
        if conn_str is not None:
            self._engine = make_engine(
                conn_str,
                dict(engine_options or {}),
                connect_timeout=connect_timeout,
                statement_timeout=statement_timeout,
            )
        self._db = db
        self._app: Flask | None = None
        if metadata is None and db is not None:
            metadata = getattr(db, "metadata", None)
        if metadata is not None and table_name in metadata.tables:
            self.table = metadata.tables[table_name]
        elif metadata is not None and schema is not None and f"{schema}.{table_name}" in metadata.tables:
            self.table = metadata.tables[f"{schema}.{table_name}"]
        else:
            self.table = usage_table(table_name, metadata, schema, partition_by_day=self._partition_by_day)
        self.batches = batch_table(self.table.name, self.table.metadata, self.table.schema)
        self._batch_log = BatchLog(self.batches)
        self.create_tables = create_tables
        self._state: _TableState | None = None
        self._state_lock = threading.Lock()
        self._state_read_at = 0.0
        self.legacy_recheck_interval = 60.0
        """Seconds between two looks at an old (Flask-Track-Usage) table's layout."""
        self._inserter_for: tuple[_TableState, Inserter] | None = None
        self.summaries = Summaries(self.table, hooks) if hooks else None
        self.batch_hooks: list[Any] = [self.summaries] if self.summaries is not None else []
        """Called as ``hook(conn, records)`` with each batch, inside the transaction that inserts it
        (so a batch that fails and is retried is seen once); a hook with ``prepare(engine)`` gets it
        called first, outside the transaction."""

    @property
    def track_table(self) -> sa.Table:
        """The usage table (Flask-Track-Usage's name for it)."""
        return self.table

    @property
    def sum_tables(self) -> dict[str, sa.Table]:
        """The summary tables by Flask-Track-Usage's names (``"url_daily"``, ...); empty without hooks."""
        return dict(self.summaries.tables) if self.summaries is not None else {}

    def __repr__(self) -> str:
        where = self._engine.url.render_as_string(hide_password=True) if self._engine is not None else "db"
        return f"SQLStorage({where!r}, table_name={self.table.name!r})"

    # -- engine and table ----------------------------------------------------------------

    def bind_app(self, app: Flask) -> None:
        """Remember the app whose context gives ``db.engine`` (called on the first tracked request)."""
        if self._app is None:
            self._app = app

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine (with ``db``: the current app's, looked up once)."""
        if self._engine is None:
            from flask import current_app, has_app_context

            if has_app_context():
                self._app = self._app or current_app._get_current_object()  # type: ignore[attr-defined]
                self._engine = self._db.engine
            elif self._app is not None:
                with self._app.app_context():
                    self._engine = self._db.engine
            if self._engine is not None:
                register_engine(self._engine)
            else:
                raise RuntimeError(
                    "SQLStorage(db=...) finds its engine in the app context: call this inside "
                    "`with app.app_context():` (or after the first tracked request)"
                )
        assert self._engine is not None
        return self._engine

    def create_table(self) -> None:
        """Create the table and its indexes if they do not exist yet."""
        self._create(self.engine)
        with self._state_lock:
            self._state = None
        if self.summaries is not None:
            self.summaries.prepare(self.engine)

    def _create(self, engine: sa.Engine) -> None:
        for table in (self.table, self.batches):
            try:
                table.create(engine, checkfirst=True)
            except sa_exc.SQLAlchemyError:
                # Another process may have created it between the check and the CREATE.
                if not sa.inspect(engine).has_table(table.name, schema=table.schema):
                    raise

    def _table_state(self) -> _TableState:
        state = self._state
        if state is not None:
            # An old table may be upgraded by another process (`flask usage upgrade-table`):
            # look again now and then, so this one stops cutting values to the old widths.
            if not state.is_legacy or time.monotonic() - self._state_read_at < self.legacy_recheck_interval:
                return state
            with self._state_lock:
                if self._state is state:
                    self._state = None
        with self._state_lock:
            if self._state is None:
                engine = self.engine
                inspector = sa.inspect(engine)
                if not inspector.has_table(self.table.name, schema=self.table.schema):
                    if not self.create_tables:
                        raise RuntimeError(
                            f"table {self.table.name!r} does not exist; create it with `flask usage create-tables` "
                            "or SQLStorage(create_tables=True)"
                        )
                    self._create(engine)
                    inspector = sa.inspect(engine)
                batch_ids = inspector.has_table(self.batches.name, schema=self.batches.schema)
                if not batch_ids and self.create_tables:
                    self._create(engine)
                    batch_ids = True
                elif not batch_ids:
                    logger.warning(
                        "table %r is missing: retried batches may be written twice; create it with "
                        "`flask usage create-tables` or `flask usage upgrade-table`",
                        self.batches.name,
                    )
                self._state = _reflect(inspector, self.table, batch_ids)
                self._state_read_at = time.monotonic()
            return self._state

    def _forget_table(self) -> None:
        """The table vanished (dropped, renamed): look again (and recreate it) on the next use."""
        with self._state_lock:
            self._state = None

    def missing_columns(self) -> list[str]:
        """New columns the database table lacks (an older Flask-Track-Usage table); empty when up to date."""
        state = self._table_state()
        return [c.name for c in self.table.columns if c.name not in state.columns]

    def upgrade_table(self) -> list[str]:
        """Bring an older table up to this layout; returns what it changed.

        Adds the missing columns and indexes, and on PostgreSQL and MariaDB widens
        text columns narrower than ``COLUMN_WIDTHS`` (SQLite does not enforce widths).
        Drops the indexes earlier versions made on ``endpoint``, ``blueprint``, ``status``
        and ``method`` (``DROPPED_INDEXES``), which cost every INSERT and help few queries.
        Existing rows are kept; the new columns are NULL in them.
        """
        engine = self.engine
        state = self._table_state()
        dialect = engine.dialect
        quote = dialect.identifier_preparer.format_table(self.table)
        changes: list[str] = []
        with engine.begin() as conn:
            for column in self.table.columns:
                if column.name in state.columns:
                    continue
                ddl = sa.schema.CreateColumn(column).compile(dialect=dialect)
                conn.exec_driver_sql(f"ALTER TABLE {quote} ADD COLUMN {ddl}")
                changes.append(f"added column {column.name}")
            if dialect.name in ("postgresql", "mysql", "mariadb"):
                for name, width in state.widths.items():
                    if width >= COLUMN_WIDTHS.get(name, 0):
                        continue
                    column = self.table.c[name]
                    kind = column.type.compile(dialect=dialect)
                    col = dialect.identifier_preparer.quote(name)
                    if dialect.name == "postgresql":
                        conn.exec_driver_sql(f"ALTER TABLE {quote} ALTER COLUMN {col} TYPE {kind}")
                    else:
                        conn.exec_driver_sql(f"ALTER TABLE {quote} MODIFY {col} {kind} NULL")
                    changes.append(f"widened {name} to {kind}")
        existing_indexes = {
            ix["name"] for ix in sa.inspect(engine).get_indexes(self.table.name, schema=self.table.schema)
        }
        if dialect.name in ("mysql", "mariadb"):  # reflected from SHOW CREATE TABLE with backticks still doubled
            existing_indexes = {name.replace("``", "`") for name in existing_indexes if name}
        for index in self.table.indexes:
            if index.name not in existing_indexes:
                index.create(engine)
                changes.append(f"created index {index.name}")
        # Indexes earlier versions created and that now only slow down the writer (see INDEXED_FILTERS).
        scratch = self.table.to_metadata(sa.MetaData())  # an Index on self.table would join its definition
        for column in DROPPED_INDEXES:
            name = _index_name(self.table.name, column)
            if name in existing_indexes:
                sa.Index(name, scratch.c[column], scratch.c.datetime).drop(engine)
                changes.append(f"dropped index {name}")
        if not state.batch_ids:
            self.batches.create(engine, checkfirst=True)
            changes.append(f"created table {self.batches.name}")
        with self._state_lock:
            self._state = None
        if self.summaries is not None:
            changes += self.summaries.upgrade(engine)
        return changes

    @staticmethod
    def is_transient_error(exc: BaseException) -> bool:
        """Whether retrying later may succeed, as opposed to a row the database rejects (see ``sql_errors``).

        The connection, the server's state (read-only, shutting down), permissions, a
        missing table (someone may create it) and deadlines are transient.
        """
        return sql_errors.is_transient(exc)

    # -- writing -------------------------------------------------------------------------

    def store(self, records: Sequence[UsageRecord]) -> None:
        """Insert a batch of records in one transaction (one ``executemany`` INSERT, or ``COPY`` on PostgreSQL).

        A batch from the storage writer carries a ``batch_id``, recorded in the same
        transaction, so a retry after a lost COMMIT answer never writes it twice.
        """
        if not records:
            return
        batch_id: str | None = getattr(records, "batch_id", None)
        try:
            # No liveness check of the pooled connection first: a dead one fails the attempt, which is retried.
            with self._deadline(ping=False):
                # Inside the deadline: looking at the table (first use, or after it vanished) talks to the database.
                self._write(self._inserter(), records, batch_id)
        except AlreadyWritten:
            return
        except sa_exc.DBAPIError as exc:
            if sql_errors.is_missing_table(exc):
                self._forget_table()
            raise
        if self._batch_log.prune_due():
            try:
                with self._deadline():
                    self._batch_log.prune(self.engine)
            except (sa_exc.SQLAlchemyError, WriteTimeout) as exc:
                logger.info("could not delete old batch ids (%s); will try again in an hour", type(exc).__name__)

    @contextlib.contextmanager
    def _deadline(self, *, ping: bool = True) -> Iterator[None]:
        """Abandon the block's database calls after ``write_timeout``, raising :class:`WriteTimeout`."""
        with watchdog.guard(self.write_timeout, ping=ping) as attempt:
            try:
                yield
            except AlreadyWritten:
                raise
            except Exception as exc:
                if attempt.expired:
                    raise WriteTimeout(f"no answer from the database within {self.write_timeout} s") from exc
                raise

    def _write(self, inserter: Inserter, records: Sequence[UsageRecord], batch_id: str | None) -> None:
        for hook in self.batch_hooks:
            prepare = getattr(hook, "prepare", None)
            if prepare is not None:
                prepare(self.engine)  # its summary tables, made once
        with self.engine.begin() as conn:
            dbapi_connection = conn.connection.dbapi_connection
            watchdog.attach(dbapi_connection)
            if batch_id is not None and inserter.batch_ids:
                self._batch_log.claim(conn, batch_id)
            inserter.insert(conn, records)
            for hook in self.batch_hooks:
                hook(conn, records)

    def _inserter(self) -> Inserter:
        """The compiled INSERT for the table as it is now (rebuilt after ``upgrade_table``)."""
        state = self._table_state()
        cached = self._inserter_for
        if cached is not None and cached[0] is state:
            return cached[1]
        inserter = Inserter(self.table, [c for c in state.columns if c != "id"], state.widths, self.engine.dialect)
        inserter.batch_ids = state.batch_ids
        self._inserter_for = (state, inserter)
        return inserter

    # -- reading -------------------------------------------------------------------------

    def get_usage(
        self,
        start_date: datetime | date | None = None,
        end_date: datetime | date | None = None,
        limit: int = 500,
        page: int = 1,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Raw rows, newest first, exactly as Flask-Track-Usage 2.0's ``SQLStorage.get_usage`` gave them.

        Its keys only (``url``, ``user_agent``, ``blueprint``, ``view_args``, ``status``, ``remote_addr``,
        ``xforwardedfor``, ``authorization``, ``ip_info``, ``path``, ``speed``, ``date``, ``username``,
        ``track_var``); ``view_args``, ``track_var`` and ``ip_info`` as the JSON text it stored (None when
        empty); ``date`` naive UTC. The keyword filters of :meth:`read_usage` apply too. New code should
        use :meth:`read_usage` (decoded values, every field). See docs/migration.md for each field.
        """
        query = self._usage_query(start_date, end_date, limit, page, filters)
        dialect = self.engine.dialect.name
        with self.engine.connect() as conn:
            return [legacy_usage_dict(row._mapping, dialect) for row in conn.execute(query)]

    def read_usage(
        self,
        start_date: datetime | date | None = None,
        end_date: datetime | date | None = None,
        limit: int = 500,
        page: int = 1,
        *,
        endpoint: str | Iterable[str] | None = None,
        route: str | Iterable[str] | None = None,
        blueprint: str | Iterable[str] | None = None,
        status: int | Iterable[int] | None = None,
        method: str | Iterable[str] | None = None,
        username: str | Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Raw rows, newest first, decoded: the recommended reader.

        Dicts with Flask-Track-Usage's keys plus the new fields (``id``, ``method``, ``route``,
        ``endpoint``, ...); ``view_args``, ``track_var`` and ``ip_info`` decoded from JSON (None when
        absent), ``date`` timezone-aware UTC.

        :param start_date: earliest time (inclusive); a naive datetime is taken as UTC, a date as its midnight.
        :param end_date: latest time (inclusive); a date means up to its midnight, as for ``start_date``.
        :param limit: rows per page (at least 1).
        :param page: page number, from 1: the rows skipped are ``(page - 1) * limit``.
        :param endpoint, route, blueprint, status, method, username: keep only rows whose
            column equals the value (or one of the values, given a list).
        :raises ValueError: an argument is out of range (end before start, page or limit below 1, ...).
        """
        query = self._usage_query(
            start_date,
            end_date,
            limit,
            page,
            {
                "endpoint": endpoint,
                "route": route,
                "blueprint": blueprint,
                "status": status,
                "method": method,
                "username": username,
            },
        )
        with self.engine.connect() as conn:
            return [_usage_dict(row._mapping) for row in conn.execute(query)]

    def get_sum(
        self,
        hook: Any,
        start_date: datetime | date | None = None,
        end_date: datetime | date | None = None,
        limit: int = 500,
        page: int = 1,
        target: str | None = None,
        *,
        period: str = "daily",
    ) -> list[dict[str, Any]]:
        """Rows of a summary hook's table, newest period first, most hits first.

        :param hook: ``sumUrl`` (the class, an instance, ``"sumUrl"`` or ``"url"``), one of this storage's hooks.
        :param period: ``"hourly"``, ``"daily"`` or ``"monthly"`` (or ``hour``, ``day``, ``month``).
        :param target: only this key value (one URL, one address, ...).
        :returns: ``{"date": naive UTC start of the period, <key name>: value, "hits": int, "transfer": int}``;
            the key name is the hook's (``url``, ``remote``, ``useragent``, ``language``, ``server``).
        """
        if self.summaries is None:
            raise ValueError("this SQLStorage has no summary hooks; pass hooks=[sumUrl, ...]")
        self.summaries.prepare(self.engine)
        return self.summaries.read(self.engine, hook, period, start_date, end_date, limit, page, target)

    def explain_usage(
        self,
        start_date: datetime | date | None = None,
        end_date: datetime | date | None = None,
        limit: int = 500,
        page: int = 1,
        **filters: Any,
    ) -> str:
        """The database's query plan for ``get_usage`` with these arguments (to check an index is used)."""
        query = self._usage_query(start_date, end_date, limit, page, filters)
        engine = self.engine
        compiled = query.compile(dialect=engine.dialect)
        params: Any = compiled.params
        if compiled.positional:
            params = tuple(params[name] for name in compiled.positiontup or ())
        prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(prefix + compiled.string, params).all()
        return "\n".join(" ".join(str(value) for value in row) for row in rows)

    def _usage_query(
        self,
        start_date: datetime | date | None,
        end_date: datetime | date | None,
        limit: int,
        page: int,
        filters: Mapping[str, Any],
    ) -> sa.Select[Any]:
        _check_positive_int("limit", limit)
        _check_positive_int("page", page)
        unknown = set(filters) - set(FILTER_COLUMNS)
        if unknown:
            raise ValueError(f"unknown filter {sorted(unknown)}; filters are {', '.join(FILTER_COLUMNS)}")
        where = self._where(start_date, end_date, filters)
        state = self._table_state()
        table = self.table
        return (
            sa.select(*[table.c[name] for name in state.columns])
            .where(*where)
            .order_by(table.c.datetime.desc(), table.c.id.desc())
            .limit(limit)
            .offset((page - 1) * limit)
        )

    def iter_usage(
        self,
        start_date: datetime | date | None = None,
        end_date: datetime | date | None = None,
        *,
        chunk_size: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """Every row in a time range, oldest first, fetched ``chunk_size`` rows at a time (constant memory)."""
        _check_positive_int("chunk_size", chunk_size)
        where = self._where(start_date, end_date, {})
        state = self._table_state()
        table = self.table
        columns = [table.c[name] for name in state.columns]
        last: tuple[datetime, int] | None = None
        while True:
            conditions = list(where)
            if last is not None:  # keyset pagination on (datetime, id): each chunk is an index range scan
                conditions.append(
                    sa.or_(
                        table.c.datetime > last[0],
                        sa.and_(table.c.datetime == last[0], table.c.id > last[1]),
                    )
                )
            query = sa.select(*columns).where(*conditions).order_by(table.c.datetime, table.c.id).limit(chunk_size)
            with self.engine.connect() as conn:
                rows = [_usage_dict(row._mapping) for row in conn.execute(query)]
            yield from rows
            if len(rows) < chunk_size:
                return
            last = (_naive_utc(rows[-1]["date"]), rows[-1]["id"])

    def get_summary(
        self,
        by: str = "route",
        period: str = "day",
        start_date: datetime | date | None = None,
        end_date: datetime | date | None = None,
    ) -> list[dict[str, Any]]:
        """Hits and bytes per ``by`` value per period, computed with GROUP BY in the database.

        :param by: one of ``SUMMARY_BY``: ``route``, ``url``, ``path``, ``endpoint``, ``remote_addr``,
            ``user_agent``, ``browser``, ``platform``, ``language``, ``server``, ``status``, ``username``.
        :param period: ``hour``, ``day`` or ``month``.
        :returns: dicts ``{"period": datetime (UTC, start of the period), by: value, "hits": int,
            "request_bytes": int, "response_bytes": int, "avg_speed": float}``, by period, then most hits first.
        """
        if by not in SUMMARY_COLUMNS:
            raise ValueError(f"by must be one of {', '.join(SUMMARY_BY)}, got {by!r}")
        if period not in SUMMARY_PERIODS:
            raise ValueError(f"period must be one of {', '.join(SUMMARY_PERIODS)}, got {period!r}")
        where = self._where(start_date, end_date, {})
        state = self._table_state()
        table = self.table
        key_column = SUMMARY_COLUMNS[by]
        if key_column not in state.columns:
            raise ValueError(f"summary by {by!r} needs column {key_column!r}: run `flask usage upgrade-table`")

        def optional(name: str) -> sa.ColumnElement[Any]:
            return table.c[name] if name in state.columns else sa.null()

        inner = (
            sa.select(
                _period_expression(self.engine.dialect.name, period, table.c.datetime).label("period"),
                table.c[key_column].label("key"),
                optional("content_length").label("request_bytes"),
                optional("response_size").label("response_bytes"),
                table.c.speed.label("speed"),
            )
            .where(*where)
            .subquery()
        )
        hits = sa.func.count().label("hits")
        query = (
            sa.select(
                inner.c.period,
                inner.c.key,
                hits,
                sa.func.sum(inner.c.request_bytes).label("request_bytes"),
                sa.func.sum(inner.c.response_bytes).label("response_bytes"),
                sa.func.avg(inner.c.speed).label("avg_speed"),
            )
            .group_by(inner.c.period, inner.c.key)
            .order_by(inner.c.period, sa.desc("hits"), inner.c.key)
        )
        with self.engine.connect() as conn:
            return [
                {
                    "period": _aware(row.period),
                    by: row.key,
                    "hits": int(row.hits),
                    "request_bytes": int(row.request_bytes or 0),
                    "response_bytes": int(row.response_bytes or 0),
                    "avg_speed": None if row.avg_speed is None else float(row.avg_speed),
                }
                for row in conn.execute(query)
            ]

    # -- deleting ------------------------------------------------------------------------

    def prune(self, older_than: timedelta, *, chunk_size: int = 10_000) -> int:
        """Delete rows older than ``older_than`` (from now), ``chunk_size`` rows per transaction;
        returns how many were deleted."""
        if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
            raise ValueError(f"older_than must be a positive timedelta, got {older_than!r}")
        cutoff = _naive_utc(datetime.now(timezone.utc) - older_than)
        return self._delete_in_chunks(self.table.c.datetime < cutoff, chunk_size)

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
        _check_positive_int("chunk_size", chunk_size)
        state = self._table_state()
        table = self.table
        conditions: list[sa.ColumnElement[bool]] = []
        if remote_addr is not None:
            # First: a refusal must come before anything is deleted.
            addresses = [clean_text(a, None) or "" for a in stored_addresses(remote_addr, anonymizer)]
            conditions.append(table.c.remote_addr.in_([a[: state.widths.get("remote_addr", 64)] for a in addresses]))
            if "xforwardedfor" in state.columns:
                conditions.extend(_chain_entry(table.c.xforwardedfor, a) for a in addresses)
        if username is not None:
            conditions.append(table.c.username == clean_text(username, state.widths.get("username")))
        return self._delete_in_chunks(sa.or_(*conditions), chunk_size)

    def _delete_in_chunks(self, condition: sa.ColumnElement[bool], chunk_size: int) -> int:
        _check_positive_int("chunk_size", chunk_size)
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

    # -- helpers -------------------------------------------------------------------------

    def _where(
        self,
        start_date: datetime | date | None,
        end_date: datetime | date | None,
        filters: Mapping[str, Any],
    ) -> list[sa.ColumnElement[bool]]:
        start = _as_utc("start_date", start_date)
        end = _as_utc("end_date", end_date)
        if start is not None and end is not None and end < start:
            raise ValueError(f"end_date ({end.isoformat()}) is before start_date ({start.isoformat()})")
        table = self.table
        where: list[sa.ColumnElement[bool]] = []
        if start is not None:
            where.append(table.c.datetime >= _naive_utc(start))
        if end is not None:
            where.append(table.c.datetime <= _naive_utc(end))
        state = self._table_state() if any(v is not None for v in filters.values()) else None
        for name, value in filters.items():
            if value is None:
                continue
            assert state is not None
            if name not in state.columns:
                raise ValueError(
                    f"cannot filter on {name!r}: the table has no such column; run `flask usage upgrade-table`"
                )
            values = _filter_values(name, value)
            column = table.c[name]
            where.append(column == values[0] if len(values) == 1 else column.in_(values))
        return where


# -- engine ---------------------------------------------------------------------------------


def _refuse_private_memory_database(engine: sa.Engine) -> None:
    """An in-memory SQLite engine whose pool gives each thread its own database loses every row."""
    url = engine.url
    memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    if memory and (isinstance(engine.pool, SingletonThreadPool) or not isinstance(engine.pool, StaticPool)):
        raise ValueError(
            "an in-memory SQLite engine gives each thread a database of its own, so the writer's rows "
            "would never be seen: pass SQLStorage('sqlite://') (one shared connection) or use a file"
        )


def _reflect(inspector: sa.Inspector, table: sa.Table, batch_ids: bool = True) -> _TableState:
    columns: list[str] = []
    widths: dict[str, int] = {}
    # SQLite keeps text whole whatever width a column declares, and upgrade_table cannot change a
    # declared width there: an old table's VARCHAR(24) must not cut values after the upgrade.
    enforces_widths = inspector.dialect.name != "sqlite"
    for info in inspector.get_columns(table.name, schema=table.schema):
        name = info["name"]
        if name not in table.c:
            continue  # a column of the user's own: left alone
        columns.append(name)
        length = getattr(info["type"], "length", None) if enforces_widths else None
        if name in COLUMN_WIDTHS:
            widths[name] = min(length, COLUMN_WIDTHS[name]) if isinstance(length, int) else COLUMN_WIDTHS[name]
    if "datetime" not in columns or "id" not in columns:
        raise RuntimeError(f"table {table.name!r} exists but is not a usage table (no id or datetime column)")
    return _TableState(tuple(columns), widths, batch_ids)


# -- rows read back -----------------------------------------------------------------------


def _usage_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    get = row.get
    return {
        "id": row["id"],
        "url": get("url"),
        "user_agent": {
            "browser": get("ua_browser"),
            "language": get("ua_language"),
            "platform": get("ua_platform"),
            "version": get("ua_version"),
        },
        "blueprint": get("blueprint"),
        "view_args": _json_value(get("view_args")),
        "status": get("status"),
        "remote_addr": get("remote_addr"),
        "xforwardedfor": get("xforwardedfor"),
        "authorization": None if get("authorization") is None else bool(get("authorization")),
        "ip_info": _json_value(get("ip_info")),
        "path": get("path"),
        "speed": get("speed"),
        "date": _aware(row["datetime"]),
        "username": get("username"),
        "track_var": _json_value(get("track_var")),
        "method": get("method"),
        "route": get("route"),
        "endpoint": get("endpoint"),
        "user_agent_raw": get("user_agent_raw"),
        "content_length": get("content_length"),
        "response_size": get("response_size"),
        "server_name": get("server_name"),
        "protocol": get("protocol"),
        "exception": get("exception"),
        "trace_id": get("trace_id"),
        "span_id": get("span_id"),
    }


def _json_value(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # an old row cut by a narrow column: give back what there is


# -- dates ----------------------------------------------------------------------------------


def _as_utc(name: str, value: datetime | date | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        try:
            return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        except OverflowError:  # datetime.min with a positive offset, datetime.max with a negative one
            raise ValueError(f"{name} is out of range once converted to UTC: {value!r}") from None
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    raise ValueError(f"{name} must be a datetime or a date, got {type(value).__name__}: {value!r}")


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


_PERIOD_FORMATS = {"hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00", "month": "%Y-%m-01 00:00:00"}


def _period_expression(dialect: str, period: str, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """The start of the row's hour, day or month: a timestamp on PostgreSQL, ISO text elsewhere."""
    if dialect == "postgresql":
        return sa.func.date_trunc(period, column)
    if dialect in ("mysql", "mariadb"):
        return sa.func.date_format(column, _PERIOD_FORMATS[period])
    return sa.func.strftime(_PERIOD_FORMATS[period], column)


# -- argument checks ------------------------------------------------------------------------


_MAX_COUNT = 2**31 - 1  # the largest LIMIT every database takes; (page - 1) * limit then fits a 64-bit OFFSET


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_COUNT:
        raise ValueError(f"{name} must be an integer of at least 1 and at most {_MAX_COUNT}, got {value!r}")


def _filter_values(name: str, value: Any) -> list[Any]:
    values = [value] if isinstance(value, str | int) else list(value) if isinstance(value, Iterable) else [value]
    if not values:
        raise ValueError(f"{name} filter is an empty list")
    for item in values:
        if name == "status":
            if isinstance(item, bool) or not isinstance(item, int) or not -(2**31) <= item < 2**31:
                raise ValueError(f"status must be an integer HTTP status or a list of them, got {item!r}")
        elif not isinstance(item, str):
            raise ValueError(f"{name} must be a string or a list of strings, got {item!r}")
    if name != "status":
        # As stored: without NUL (PostgreSQL refuses it in text) and cut to the column's width.
        values = [clean_text(v, COLUMN_WIDTHS.get(name)) for v in values]
    if name == "method":
        values = [v.upper() for v in values]
    return values


def _chain_entry(column: sa.ColumnElement[Any], address: str) -> sa.ColumnElement[bool]:
    """``column`` (an ``X-Forwarded-For`` chain) has ``address`` as one of its entries.

    Entries are separated by ``,`` with or without a space (anonymized chains always use
    ``", "``); a prefix of a longer address (``10.0.0.1`` in ``10.0.0.12``) does not match.
    """
    # "!" as the escape character: a backslash means different things in MySQL's string literals.
    escaped = address.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    patterns = [f"{escaped},%", f"%, {escaped}", f"%,{escaped}", f"%, {escaped},%", f"%,{escaped},%"]
    return sa.or_(column == address, *(column.like(p, escape="!") for p in patterns))
