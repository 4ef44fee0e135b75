"""The usage table: its definition (from ``columns.COLUMNS``), what a database's table really has, and its upgrade.

The table is a superset of Flask-Track-Usage's ``flask_usage`` table: the same
column names for the columns it had, widths that hold real data, and the new
record fields. A table created by Flask-Track-Usage 2.0 keeps working: the storage
reads which columns exist (:func:`reflect`), writes only those (cut to their narrower
widths), and :func:`upgrade` (``flask usage upgrade-table``) adds the rest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from ..columns import COLUMN_WIDTHS, COLUMNS, Column, Kind

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


_MAX_ID_LENGTH = 63  # PostgreSQL's identifier limit (MariaDB's is 64)


def usage_table(
    name: str = "flask_usage",
    metadata: sa.MetaData | None = None,
    schema: str | None = None,
    *,
    partition_by_day: bool = False,
) -> sa.Table:
    """The ``flask_usage`` table definition (on a new ``MetaData`` unless one is given), from ``columns.COLUMNS``.

    ``partition_by_day``: PostgreSQL range partitioning on ``datetime`` (see ``storage.partitions``),
    whose primary key must then include ``datetime``.
    """
    metadata = metadata if metadata is not None else sa.MetaData()
    table = sa.Table(
        name,
        metadata,
        *(_sql_column(column, partition_by_day) for column in COLUMNS),
        schema=schema,
        # utf8mb4 with a binary collation: every character fits, and grouping and
        # filtering are exact as on PostgreSQL and SQLite.
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        postgresql_partition_by="RANGE (datetime)" if partition_by_day else None,
    )
    sa.Index(index_name(name, "datetime"), table.c.datetime)
    for column in INDEXED_FILTERS:
        sa.Index(index_name(name, column), table.c[column], table.c.datetime)
    return table


_SQL_TYPES: dict[Kind, type[sa.types.TypeEngine[Any]]] = {
    Kind.JSON: sa.Text,
    Kind.INTEGER: sa.Integer,
    Kind.BIGINT: sa.BigInteger,
    Kind.FLOAT: sa.Double,
    Kind.BOOLEAN: sa.Boolean,
}


def _sql_column(column: Column, partition_by_day: bool) -> sa.Column[Any]:
    if column.kind is Kind.ID:
        kind = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
        return sa.Column(column.name, kind, primary_key=True, autoincrement=True)
    if column.kind is Kind.DATETIME:
        # Microseconds on MariaDB too (its DATETIME keeps whole seconds by default).
        kind = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
        return sa.Column(column.name, kind, nullable=False, primary_key=partition_by_day)
    if column.kind is Kind.TEXT:
        assert column.width is not None
        return sa.Column(column.name, sa.String(column.width), nullable=True)
    return sa.Column(column.name, _SQL_TYPES[column.kind](), nullable=True)


def index_name(table: str, column: str) -> str:
    name = f"ix_{table}_{column}"
    if len(name) <= _MAX_ID_LENGTH:
        return name
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    return f"ix_{table[: _MAX_ID_LENGTH - len(column) - 13]}_{digest}_{column}"


@dataclass(frozen=True)
class TableState:
    """What the database table really has (it may be a narrower, older table)."""

    columns: tuple[str, ...]
    widths: dict[str, int]
    batch_ids: bool = True
    """Whether the ``<table>_batches`` table exists (idempotent retries); see ``sql_batches``."""

    @property
    def is_legacy(self) -> bool:
        return any(c.name not in self.columns for c in COLUMNS if not c.is_legacy)


def reflect(inspector: sa.Inspector, table: sa.Table, batch_ids: bool = True) -> TableState:
    """Which of ``table``'s columns the database has, and the widths it keeps (the narrower of ours and its)."""
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
    return TableState(tuple(columns), widths, batch_ids)


def upgrade(engine: sa.Engine, table: sa.Table, batches: sa.Table, state: TableState) -> list[str]:
    """Bring ``table`` (as ``state`` found it) up to this layout; see ``SQLStorage.upgrade_table``."""
    dialect = engine.dialect
    quote = dialect.identifier_preparer.format_table(table)
    changes: list[str] = []
    with engine.begin() as conn:
        for column in table.columns:
            if column.name in state.columns:
                continue
            ddl = sa.schema.CreateColumn(column).compile(dialect=dialect)
            conn.exec_driver_sql(f"ALTER TABLE {quote} ADD COLUMN {ddl}")
            changes.append(f"added column {column.name}")
        if dialect.name in ("postgresql", "mysql", "mariadb"):
            for name, width in state.widths.items():
                if width >= COLUMN_WIDTHS.get(name, 0):
                    continue
                column = table.c[name]
                kind = column.type.compile(dialect=dialect)
                col = dialect.identifier_preparer.quote(name)
                if dialect.name == "postgresql":
                    conn.exec_driver_sql(f"ALTER TABLE {quote} ALTER COLUMN {col} TYPE {kind}")
                else:
                    conn.exec_driver_sql(f"ALTER TABLE {quote} MODIFY {col} {kind} NULL")
                changes.append(f"widened {name} to {kind}")
    existing_indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes(table.name, schema=table.schema)}
    if dialect.name in ("mysql", "mariadb"):  # reflected from SHOW CREATE TABLE with backticks still doubled
        existing_indexes = {name.replace("``", "`") for name in existing_indexes if name}
    for index in table.indexes:
        if index.name not in existing_indexes:
            index.create(engine)
            changes.append(f"created index {index.name}")
    # Indexes earlier versions created and that now only slow down the writer (see INDEXED_FILTERS).
    scratch = table.to_metadata(sa.MetaData())  # an Index on table would join its definition
    for column in DROPPED_INDEXES:
        name = index_name(table.name, column)
        if name in existing_indexes:
            sa.Index(name, scratch.c[column], scratch.c.datetime).drop(engine)
            changes.append(f"dropped index {name}")
    if not state.batch_ids:
        batches.create(engine, checkfirst=True)
        changes.append(f"created table {batches.name}")
    return changes
