"""``SQLStorage``: raw usage rows in any SQLAlchemy database (SQLAlchemy 2 Core, no ORM session).

The table (``storage.table``, from ``columns.COLUMNS``) is a superset of Flask-Track-Usage's
``flask_usage`` table. Values longer than a column are cut to its width (see
``COLUMN_WIDTHS``) rather than failing the INSERT, and NUL characters, which
PostgreSQL refuses in text, are removed. Timestamps are stored as naive UTC (as
Flask-Track-Usage did) and returned timezone-aware.

A table created by Flask-Track-Usage 2.0 keeps working: the storage reads which
columns exist, writes only those (cut to their narrower widths), and
:meth:`SQLStorage.upgrade_table` (``flask usage upgrade-table``) adds the rest.

This module holds the storage itself (construction, engine, table state, writing); reading
is in ``storage.reading``, deleting in ``storage.erasure``. The names other code imported
from here are still importable from here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import StaticPool

from ..columns import COLUMN_WIDTHS, LEGACY_COLUMNS
from ..config import ConfigError
from ..ftu_names import warn_legacy_name
from . import sql_errors
from .deadline import WriteTimeout, watchdog
from .engine import make_engine, register_engine, shares_memory_database
from .erasure import UsageErasure
from .reading import FILTER_COLUMNS, SUMMARY_COLUMNS, UsageReading
from .sql_batches import AlreadyWritten, BatchLog, batch_table
from .sql_rows import Inserter
from .summaries import Summaries
from .table import DROPPED_INDEXES, INDEXED_FILTERS, TableState, reflect, upgrade, usage_table

if TYPE_CHECKING:
    from flask import Flask

    from ..config import Settings
    from ..record import UsageRecord

__all__ = [
    "COLUMN_WIDTHS",
    "DROPPED_INDEXES",
    "FILTER_COLUMNS",
    "INDEXED_FILTERS",
    "LEGACY_COLUMNS",
    "SUMMARY_COLUMNS",
    "SQLStorage",
    "usage_table",
]

logger = logging.getLogger("flask_usage_otel.storage")


class SQLStorage(UsageReading, UsageErasure):
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
        self._engine_made = conn_str is not None
        if engine is not None:
            register_engine(engine)
        if conn_str is not None:
            self._engine = make_engine(
                conn_str,
                dict(engine_options or {}),
                connect_timeout=connect_timeout,
                statement_timeout=statement_timeout,
                abandon_after=write_timeout,
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
        self._state: TableState | None = None
        self._state_lock = threading.Lock()
        self._state_read_at = 0.0
        self.legacy_recheck_interval = 60.0
        """Seconds between two looks at an old (Flask-Track-Usage) table's layout."""
        self._inserter_for: tuple[TableState, Inserter] | None = None
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

    def _table_state(self) -> TableState:
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
                self._state = reflect(inspector, self.table, batch_ids)
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
        changes = upgrade(self.engine, self.table, self.batches, self._table_state())
        with self._state_lock:
            self._state = None
        if self.summaries is not None:
            changes += self.summaries.upgrade(self.engine)
        return changes

    @staticmethod
    def is_transient_error(exc: BaseException) -> bool:
        """Whether retrying later may succeed, as opposed to a row the database rejects (see ``sql_errors``).

        The connection, the server's state (read-only, shutting down), permissions, a
        missing table (someone may create it) and deadlines are transient.
        """
        return sql_errors.is_transient(exc)

    def describe_error(self, exc: BaseException) -> str:
        """What went wrong, for the writer's log: the error's type and database code, and for a connection
        error (which carries no row data) the driver's message, credentials masked, and which database."""
        return sql_errors.describe(exc, self._engine.url if self._engine is not None else None)

    # -- writing -------------------------------------------------------------------------

    def store(self, records: Sequence[UsageRecord]) -> None:
        """Insert a batch of records in one transaction (one ``executemany`` INSERT; ``COPY`` on PostgreSQL,
        where the batch, its id and the COMMIT take two round trips; on MariaDB/MySQL through PyMySQL with an
        engine made from a URL, one query and one round trip).

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
                self.prune_batch_ids()
            except (sa_exc.SQLAlchemyError, WriteTimeout) as exc:
                logger.info("could not delete old batch ids (%s); will try again in an hour", type(exc).__name__)

    def prune_batch_ids(self) -> int:
        """Delete the batch ids older than a day (``sql_batches.BATCH_ID_RETENTION``); returns how many."""
        if not self._table_state().batch_ids:
            return 0
        with self._deadline():
            return self._batch_log.prune(self.engine)

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
        claim = batch_id if inserter.batch_ids else None
        with self.engine.connect() as conn:
            watchdog.attach(conn.connection.dbapi_connection)
            if not self.batch_hooks and inserter.commits_itself(conn):
                # One query from BEGIN to COMMIT (MariaDB/MySQL: mysql_batch): SQLAlchemy's transaction around
                # it would add a COMMIT of its own, a round trip more.
                inserter.insert(conn, records, self._batch_log, claim, last=True)
                return
            with conn.begin():
                inserter.insert(conn, records, self._batch_log, claim, last=not self.batch_hooks)
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

    # -- set-up checks and Flask-Track-Usage's private names --------------------------------

    def check_settings(self, settings: Settings) -> None:
        """Refuse, at ``init_app``, an engine these settings cannot write through (the key is named)."""
        # An engine made from a URL shares its in-memory database (storage.engine); one given may not.
        if not settings.sync_writes and self._engine is not None and not self._engine_made:
            _refuse_private_memory_database(self._engine)

    @property
    def _eng(self) -> sa.Engine:
        """Flask-Track-Usage's name for :attr:`engine` (deprecated)."""
        warn_legacy_name("SQLStorage._eng", "SQLStorage.engine")
        return self.engine


# -- engine ---------------------------------------------------------------------------------


def _refuse_private_memory_database(engine: sa.Engine) -> None:
    """An in-memory SQLite engine whose pool gives each thread its own database loses every row
    written from the writer thread; with every write on the request thread (as in Flask-Track-Usage), it works."""
    url = engine.url
    memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    if memory and not (shares_memory_database(engine) or isinstance(engine.pool, StaticPool)):
        raise ConfigError(
            "TRACK_USAGE_SYNC_WRITES",
            "SQLStorage's in-memory SQLite engine gives each thread a database of its own, so the writer "
            "thread's rows would never be seen: set TRACK_USAGE_SYNC_WRITES = True (every row written on "
            "the request thread), pass SQLStorage('sqlite://') (one shared connection) or use a file",
        )
