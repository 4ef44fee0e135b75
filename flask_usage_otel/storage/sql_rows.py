"""Records to INSERT parameters, and the fastest correct way to send a batch of them to each database.

This runs on the storage writer's thread for every row, and that thread shares the
interpreter lock with the request threads, so each microsecond here is one less for
requests. The rules that keep it cheap:

- a row is a plain tuple in a fixed column order, not a dict per row;
- text is checked (``len <= width``, ASCII, no NUL) with C-level string methods and
  only copied or cut when it really has to be;
- values that repeat across requests (the language of an ``Accept-Language``
  header, a parsed user agent) are computed once per distinct input;
- the INSERT is compiled once per table layout and sent with the driver's own
  ``executemany`` (SQLite, mysqlclient), ``COPY`` (PostgreSQL with psycopg 3) or one
  multi-row INSERT in the batch's one query (PyMySQL), never re-compiled or re-bound by
  SQLAlchemy per row.

Every strategy writes a batch inside the caller's transaction, so a batch is
written completely or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .. import columns as column_defs
from . import mysql_batch
from .row_builder import RowBuilder
from .sql_text import TRUNCATED_JSON_KEY, clean_text, json_text, record_url, values_url

if TYPE_CHECKING:
    from ..record import UsageRecord
    from .sql_batches import BatchLog

__all__ = ["TRUNCATED_JSON_KEY", "Inserter", "RowBuilder", "clean_text", "json_text", "record_url", "values_url"]

# Values each plain column takes, to find the bind processors that change nothing for them.
_PLAIN_SAMPLES: dict[str, tuple[Any, ...]] = {
    "status": (200, 404),
    "authorization": (True, False),
    "speed": (0.25, 1e-06),
    "content_length": (0, 12),
    "response_size": (0, 12),
}
_DATETIME_SAMPLES = (
    datetime(2024, 3, 10, 12, 30, 15, 250000),
    datetime(1999, 12, 31),
    datetime(2024, 1, 2, 3, 4, 5, 6),
)


def _cheaper_processor(column: str, process: Callable[[Any], Any]) -> Callable[[Any], Any] | None:
    """``process``, or something faster that gives the same for this column's values, or None when it changes
    nothing (a float to float, True to 1: the driver stores both alike)."""
    samples = _PLAIN_SAMPLES.get(column)
    if samples is not None and all(process(value) == value for value in samples):
        return None
    if column == "datetime" and all(process(dt) == _iso_text(dt) for dt in _DATETIME_SAMPLES):
        return _iso_text  # SQLite's text timestamps: one C call instead of a %-format of a dict
    return process


_BOOLEAN_COLUMNS = frozenset(name for name, samples in _PLAIN_SAMPLES.items() if type(samples[0]) is bool)
_BOOL_AS_INT: Callable[[Any], Any] = {True: 1, False: 0}.get  # None stays None (NULL)
_MAX_STATEMENTS = 64


def _iso_text(value: datetime) -> str:
    return value.isoformat(" ", "microseconds")


def _picker(order: Sequence[str], wanted: Sequence[str]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]] | None:
    if list(order) == list(wanted):
        return None
    indexes = [order.index(name) for name in wanted]
    if not indexes:
        return lambda values: ()
    getter = itemgetter(*indexes)
    return (lambda values: (getter(values),)) if len(indexes) == 1 else getter


# -- sending a batch ------------------------------------------------------------------------


def _raw_identifier(preparer: Any, name: str) -> str:
    """``name`` quoted for the driver as it is, ``%`` not doubled (SQLAlchemy's quoting doubles it for
    format/pyformat drivers; done below only where the driver will format the statement)."""
    return (
        f"{preparer.initial_quote}{name.replace(preparer.escape_quote, preparer.escape_to_quote)}{preparer.final_quote}"
    )


def _raw_table(preparer: Any, table: sa.Table) -> str:
    target = _raw_identifier(preparer, table.name)
    return f"{_raw_identifier(preparer, table.schema)}.{target}" if table.schema else target


class Inserter:
    """Writes batches of records into ``table`` (only ``columns``) on a connection inside a transaction.

    Picks the path per driver: PostgreSQL with psycopg 3 gets ``COPY ... FROM STDIN`` with the
    batch id and the COMMIT in the same query (two round trips for the batch, no per-row
    statement on the server: ``pg_batch``); MariaDB/MySQL through PyMySQL, on an engine the
    storage made, one multi-row INSERT with the batch id and the COMMIT in one query (one
    round trip: ``mysql_batch``); SQLite's and the MySQL drivers' own ``executemany`` take
    tuples straight (PyMySQL and mysqlclient send one multi-row INSERT); any other driver
    goes through SQLAlchemy's ``insert()`` with dicts, which knows its best batching
    (insertmanyvalues).
    """

    def __init__(self, table: sa.Table, columns: Sequence[str], widths: Mapping[str, int], dialect: sa.Dialect):
        known = set(column_defs.TEXT_COLUMNS) | set(column_defs.JSON_COLUMNS) | set(column_defs.PLAIN_COLUMNS)
        columns = [c for c in columns if c in known]
        self._dialect = dialect
        preparer = dialect.identifier_preparer
        driver = dialect.driver
        if dialect.name == "postgresql" and driver == "psycopg":
            self.method = "copy"
        elif driver in ("pysqlite", "pymysql", "mysqldb") and dialect.paramstyle in ("qmark", "format", "pyformat"):
            self.method = "executemany"
        else:
            self.method = "sqlalchemy"
        processors: dict[str, Callable[[Any], Any]] = {}
        if self.method != "sqlalchemy":  # SQLAlchemy applies them itself on its own path
            for name in columns:
                process = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                if process is not None and (process := _cheaper_processor(name, process)) is not None:
                    processors[name] = process
        # sqlite3 binds only exact int, float, str and bytes without looking up an adapter (bool and None are
        # looked up, and the miss formats an error it then clears): bools go as ints, None as NULL in the SQL.
        self._sqlite = self.method == "executemany" and driver == "pysqlite"
        if self._sqlite:
            processors.update((name, _BOOL_AS_INT) for name in columns if name in _BOOLEAN_COLUMNS)
        # The text every driver here sends for a datetime anyway (SQLite's default storage format,
        # COPY's and MySQL's literals), made faster than from a datetime; a dialect that formats
        # datetimes its own way keeps its processor.
        datetime_text = self.method != "sqlalchemy" and processors.get("datetime", _iso_text) is _iso_text
        self.builder = RowBuilder(columns, widths, processors, datetime_text=datetime_text)
        names = ", ".join(_raw_identifier(preparer, c) for c in self.builder.columns)
        target = _raw_table(preparer, table)
        marker = ""
        if self.method == "copy":
            self.sql = f"COPY {target} ({names}) FROM STDIN"
        else:
            marker = "?" if dialect.paramstyle == "qmark" else "%s"
            if dialect.paramstyle in ("format", "pyformat"):
                names, target = names.replace("%", "%%"), target.replace("%", "%%")
            self.sql = f"INSERT INTO {target} ({names}) VALUES ({', '.join([marker] * len(self.builder.columns))})"
        self._table = table
        self.batch_ids = True  # the storage sets it: whether the batch-id table exists
        self._marker = marker if self.method != "copy" else ""
        self._target = target
        self._names = names
        # PyMySQL's one-query batch (mysql_batch): the INSERT up to VALUES as sent (no `%` doubled), one row's markers.
        self._one_query: tuple[str, str] | None = None
        if self.method == "executemany" and driver == "pymysql":
            raw_names = ", ".join(_raw_identifier(preparer, c) for c in self.builder.columns)
            markers = f"({', '.join(['%s'] * len(self.builder.columns))})"
            self._one_query = (f"INSERT INTO {_raw_table(preparer, table)} ({raw_names}) VALUES ", markers)
        self._claims: dict[sa.Table, str] = {}
        self._statements: dict[tuple[bool, ...], tuple[str, Callable[[tuple[Any, ...]], tuple[Any, ...]] | None]] = {}

    def insert(
        self,
        conn: sa.Connection,
        records: Sequence[UsageRecord],
        batch_log: BatchLog | None = None,
        batch_id: str | None = None,
        *,
        last: bool = False,
    ) -> None:
        """Insert ``records`` on ``conn``, with ``batch_id`` recorded in ``batch_log``'s table when both are given.

        The caller's transaction commits or rolls back the whole batch. ``last``: nothing else
        follows in the transaction, so PostgreSQL's COPY path commits it with the batch (the
        caller's commit then has nothing left to do), and so does PyMySQL's one query, which
        is then sent with no transaction of the caller's open (:meth:`commits_itself`).

        :raises AlreadyWritten: the batch id was recorded already (a retry of a committed batch).
        """
        if self.method == "copy":
            from .pg_batch import write_batch  # psycopg is imported only where it is used

            claim = None
            if batch_log is not None and batch_id is not None:
                claim = (_raw_table(self._dialect.identifier_preparer, batch_log.table), batch_log.table.name, batch_id)
            write_batch(conn, self.sql, lambda: self.builder.rows(records), claim, commit=last)
            return
        if self.commits_itself(conn):
            assert self._one_query is not None
            one = None if batch_log is None or batch_id is None else (self._claim(batch_log.table), batch_id)
            mysql_batch.write_batch(conn, self._one_query, self.builder.rows(records), one, commit=last)
            return
        rows = self.builder.rows(records)
        if batch_log is not None and batch_id is not None:
            batch_log.claim(conn, batch_id)
        if self._sqlite:
            self._insert_sqlite(conn, rows)
        elif self.method == "executemany":
            conn.exec_driver_sql(self.sql, rows)  # type: ignore[arg-type]
        else:
            columns = self.builder.columns
            conn.execute(self._table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])

    def commits_itself(self, conn: sa.Connection) -> bool:
        """Whether a batch on ``conn`` is one query that can end with its COMMIT (``mysql_batch``): then
        no transaction of SQLAlchemy's may be open around it, whose COMMIT would cost a round trip more."""
        return self._one_query is not None and mysql_batch.can_write(conn)

    def _claim(self, table: sa.Table) -> str:
        """The INSERT of a batch id into ``table`` up to its values, as sent."""
        claim = self._claims.get(table)
        if claim is None:
            preparer = self._dialect.identifier_preparer
            names = ", ".join(_raw_identifier(preparer, c) for c in ("batch_id", "written_at"))
            claim = self._claims[table] = f"INSERT INTO {_raw_table(preparer, table)} ({names}) VALUES "
        return claim

    def _insert_sqlite(self, conn: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
        """``executemany`` with ``NULL`` written into the statement for the columns None in every row of the batch.

        Most rows of a batch leave the same dozen columns empty; binding each of those
        None values costs sqlite3 an adapter lookup. The values stored are the same.
        """
        if not rows:
            return
        nones = (None,) * len(rows)
        # Per column, not per row: a tuple comparison stops at the first value that is not None.
        key = tuple(values == nones for values in zip(*rows, strict=True))
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statement(key)
        sql, pick = statement
        conn.exec_driver_sql(sql, rows if pick is None else list(map(pick, rows)))  # type: ignore[arg-type]

    def _statement(self, nulls: tuple[bool, ...]) -> tuple[str, Callable[[tuple[Any, ...]], tuple[Any, ...]] | None]:
        """The INSERT with ``NULL`` for the columns marked in ``nulls``, and what picks the others from a row."""
        columns = self.builder.columns
        bound = [name for name, null in zip(columns, nulls, strict=True) if not null]
        if not bound:  # nothing left to bind (a table of optional columns only): bind the Nones
            statement: tuple[str, Callable[[tuple[Any, ...]], tuple[Any, ...]] | None] = (self.sql, None)
        else:
            values = ", ".join("NULL" if null else self._marker for null in nulls)
            statement = (f"INSERT INTO {self._target} ({self._names}) VALUES ({values})", _picker(columns, bound))
        if len(self._statements) >= _MAX_STATEMENTS:  # one per pattern of empty columns seen: keep it bounded
            self._statements.clear()
        self._statements[nulls] = statement
        return statement
