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
  ``executemany`` (SQLite, MySQL/MariaDB) or ``COPY`` (PostgreSQL with psycopg 3),
  never re-compiled or re-bound by SQLAlchemy per row.

Every strategy writes a batch inside the caller's transaction, so a batch is
written completely or not at all.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from functools import lru_cache
from operator import gt, itemgetter, length_hint
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from .. import columns
from ..record import first_language
from ..useragent import parse_user_agent

if TYPE_CHECKING:
    from ..record import UsageRecord

# The three groups of columns, each in table order; a row is its text, then JSON, then plain values.
TEXT_COLUMNS: tuple[str, ...] = columns.TEXT_COLUMNS
JSON_COLUMNS: tuple[str, ...] = columns.JSON_COLUMNS
PLAIN_COLUMNS: tuple[str, ...] = columns.PLAIN_COLUMNS
INTEGER_LIMITS: dict[str, int] = columns.COLUMN_LIMITS
"""Largest value per integer column (INTEGER, BIGINT); a value outside the column's range is stored as NULL."""

TRUNCATED_JSON_KEY = "_truncated"

# Encoder built once: json.dumps with options builds a new JSONEncoder per call.
_JSON = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"))


def _encode_json(value: Any) -> str:
    """``_JSON.encode(value)``, calling the C encoder it would use straight, without its Python-level setup."""
    if _c_make_encoder is None:  # no C accelerator in this Python
        return _JSON.encode(value)
    # A fresh markers dict per call, as JSONEncoder does: circular data is refused, and threads share nothing.
    chunks = _c_make_encoder({}, str, _c_encode_text, None, ":", ",", False, False, True)(value, 0)
    return "".join(chunks)


_c_make_encoder: Callable[..., Any] | None = getattr(json.encoder, "c_make_encoder", None)
_c_encode_text = json.encoder.encode_basestring  # the C function when the accelerator is there
# Characters quote(path, safe="/:@!$&()*+,;=~") would change; most paths have none and skip quoting.
_PATH_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9_.\-~/:@!$&()*+,;=]").search
_cached_language = lru_cache(maxsize=1024)(first_language)
_MAX_CACHED_LANGUAGE = 256  # longer headers are parsed each time rather than kept in the cache


def _language(accept_language: str | None) -> str | None:
    if accept_language is not None and len(accept_language) > _MAX_CACHED_LANGUAGE:
        return first_language(accept_language)
    return _cached_language(accept_language)


_EPOCH = datetime(1970, 1, 1)
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


def clean_text(value: Any, width: int | None) -> str | None:
    """Text the database accepts: no NUL (PostgreSQL refuses it), no lone surrogates, at most ``width`` characters."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    if width is not None and len(text) > width:
        text = text[:width]
    return text


def json_text(value: Any, width: int) -> str | None:
    """``value`` as compact JSON of at most ``width`` characters (None stays NULL)."""
    if not value:
        if value is None:
            return None
        if type(value) is dict or isinstance(value, Mapping):
            return "{}"  # most requests: no view arguments, no track_var
    text = _encode_json(value)
    if not (text.isascii() and "\x00" not in text):
        text = clean_text(text, None) or ""
    if len(text) > width:
        # Cut JSON is no longer JSON: keep a valid object that says so.
        text = json.dumps({TRUNCATED_JSON_KEY: text[: width - 40]}, ensure_ascii=False)
        text = text if len(text) <= width else json.dumps({TRUNCATED_JSON_KEY: True})
    return text


def record_url(record: UsageRecord) -> str:
    """``record.url`` (``request.url``), which takes a fast path for plain ASCII URLs itself."""
    try:
        return record.url
    except UnicodeEncodeError:  # a lone surrogate: quote() refuses it, so the row would be lost
        return replace(record, path=clean_text(record.path, None), script_root=clean_text(record.script_root, None)).url


# How a column's value is computed from the record, where it is not simply ``record.<record_field>``.
# ``ua`` is the parsed User-Agent header.
_COMPUTED: dict[str, str] = {
    "url": "record_url(record)",
    "ua_browser": "ua.browser",
    "ua_language": "_language(record.accept_language)",
    "ua_platform": "ua.platform",
    "ua_version": "ua.version",
    # Naive UTC, as Flask-Track-Usage stored it; the same value as
    # datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None) (both round half to even) in half the time.
    "datetime": "_EPOCH + timedelta(seconds=record.timestamp)",
}


def _values_function(names: Sequence[str]) -> Callable[[UsageRecord], tuple[Any, ...]]:
    """A function giving a record's values for ``names``, in that order, as a tuple.

    It is compiled once from the column list: one plain Python function per group of columns
    runs several times faster per row on the writer's thread than a loop over getters.
    """
    expressions = [_COMPUTED.get(name, f"record.{columns.BY_NAME[name].record_field}") for name in names]
    lines = ["def values(record):"]
    if any(e.startswith("ua.") for e in expressions):
        lines.append("    ua = parse_user_agent(record.user_agent)  # lru_cached: one parse per distinct header")
    lines.append(f"    return ({', '.join(expressions)},)")
    namespace: dict[str, Any] = {
        "record_url": record_url,
        "_language": _language,
        "parse_user_agent": parse_user_agent,
        "_EPOCH": _EPOCH,
        "timedelta": timedelta,
    }
    exec("\n".join(lines), namespace)  # the source is built above from the fixed column list only
    return namespace["values"]  # type: ignore[no-any-return]


_text_values = _values_function(TEXT_COLUMNS)
_json_values = _values_function(JSON_COLUMNS)
_plain_values = _values_function(PLAIN_COLUMNS)


class RowBuilder:
    """Turns records into parameter tuples for the columns a table really has, in ``columns`` order.

    :param columns: the table's columns (others, such as ``id`` or a user's own, are left out).
    :param widths: most characters per text and JSON column (narrower on an old table).
    :param processors: per column, a function converting the value to what the driver takes
        (SQLAlchemy's bind processors, e.g. datetimes as text on SQLite); None leaves values as they are.
    """

    def __init__(
        self,
        columns: Sequence[str],
        widths: Mapping[str, int],
        processors: Mapping[str, Callable[[Any], Any]] | None = None,
    ) -> None:
        present = set(columns)
        text = [c for c in TEXT_COLUMNS if c in present]
        json_columns = [c for c in JSON_COLUMNS if c in present]
        plain = [c for c in PLAIN_COLUMNS if c in present]
        self.columns: tuple[str, ...] = (*text, *json_columns, *plain)
        self._text_widths = tuple(widths[c] for c in text)
        self._json_widths = tuple(widths[c] for c in json_columns)
        # An older table lacks some columns: pick the ones it has (None: it has them all).
        self._pick_text = _picker(TEXT_COLUMNS, text)
        self._pick_json = _picker(JSON_COLUMNS, json_columns)
        self._pick_plain = _picker(PLAIN_COLUMNS, plain)
        # A hostile Content-Length must not fail the INSERT: out-of-range integers become NULL.
        self._bounded = tuple(
            (i, INTEGER_LIMITS[name]) for i, name in enumerate(self.columns) if name in INTEGER_LIMITS
        )
        self._processors = tuple(
            (i, fn) for i, name in enumerate(self.columns) if (fn := (processors or {}).get(name)) is not None
        )

    def rows(self, records: Sequence[UsageRecord]) -> list[tuple[Any, ...]]:
        """One parameter tuple per record."""
        return [self.row(record) for record in records]

    def row(self, record: UsageRecord) -> tuple[Any, ...]:
        """The parameter tuple of one record."""
        texts = _text_values(record)
        if self._pick_text is not None:
            texts = self._pick_text(texts)
        widths = self._text_widths
        try:
            joined = "".join(filter(None, texts))
        except TypeError:  # a value that is not text (a username given as a number): clean each one
            joined = "\x00"
        if joined.isascii() and "\x00" not in joined:
            # The common case: one check of all the text at once, then only the lengths, compared in C
            # (length_hint gives len() of a str, 0 for None).
            if any(map(gt, map(length_hint, texts), widths)):
                fitted = [v if v is None or len(v) <= w else v[:w] for v, w in zip(texts, widths, strict=True)]
            else:
                fitted = list(texts)
        else:
            fitted = [clean_text(v, w) for v, w in zip(texts, widths, strict=True)]
        mappings = _json_values(record)
        if self._pick_json is not None:
            mappings = self._pick_json(mappings)
        fitted += [json_text(value, width) for value, width in zip(mappings, self._json_widths, strict=True)]
        plain = _plain_values(record)
        fitted += plain if self._pick_plain is None else self._pick_plain(plain)
        for index, limit in self._bounded:
            value = fitted[index]
            if value is not None and not -limit - 1 <= value <= limit:
                fitted[index] = None
        for index, process in self._processors:
            fitted[index] = process(fitted[index])
        return tuple(fitted)


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


class Inserter:
    """Writes batches of records into ``table`` (only ``columns``) on a connection inside a transaction.

    Picks the path per driver: PostgreSQL with psycopg 3 gets ``COPY ... FROM STDIN`` (one
    round trip for the batch, no per-row statement on the server); SQLite's and the MySQL
    drivers' own ``executemany`` take tuples straight (PyMySQL and mysqlclient send one
    multi-row INSERT); any other driver goes through SQLAlchemy's ``insert()`` with dicts,
    which knows its best batching (insertmanyvalues).
    """

    def __init__(self, table: sa.Table, columns: Sequence[str], widths: Mapping[str, int], dialect: sa.Dialect):
        known = set(TEXT_COLUMNS) | set(JSON_COLUMNS) | set(PLAIN_COLUMNS)
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
        self.builder = RowBuilder(columns, widths, processors)
        names = ", ".join(_raw_identifier(preparer, c) for c in self.builder.columns)
        target = _raw_identifier(preparer, table.name)
        if table.schema:
            target = f"{_raw_identifier(preparer, table.schema)}.{target}"
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
        self._statements: dict[tuple[bool, ...], tuple[str, Callable[[tuple[Any, ...]], tuple[Any, ...]] | None]] = {}

    def insert(self, conn: sa.Connection, records: Sequence[UsageRecord]) -> None:
        """Insert ``records`` on ``conn``; the caller's transaction commits or rolls back the whole batch."""
        rows = self.builder.rows(records)
        if self._sqlite:
            self._insert_sqlite(conn, rows)
        elif self.method == "executemany":
            conn.exec_driver_sql(self.sql, rows)  # type: ignore[arg-type]
        elif self.method == "copy":
            self._copy(conn, rows)
        else:
            columns = self.builder.columns
            conn.execute(self._table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])

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

    def _copy(self, conn: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        dbapi = self._dialect.loaded_dbapi
        cursor = raw.cursor()
        try:
            with cursor.copy(self.sql) as copy:
                write_row = copy.write_row
                for row in rows:
                    write_row(row)
        except dbapi.Error as exc:
            # Raise what SQLAlchemy would have (OperationalError, DataError, ...) so the writer can tell a
            # database that is down (retry the batch) from a row it refuses; forget a dead connection.
            disconnected = self._dialect.is_disconnect(exc, raw, cursor)
            if disconnected:
                conn.invalidate(exc)
            raise sa_exc.DBAPIError.instance(
                self.sql, None, exc, dbapi.Error, connection_invalidated=disconnected, dialect=self._dialect
            ) from exc
        finally:
            with contextlib.suppress(dbapi.Error):
                cursor.close()
