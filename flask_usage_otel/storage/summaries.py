"""Summary tables (Flask-Track-Usage's ``sumUrl``, ``sumRemote``, ...): hits and bytes per hour, day and month.

One table per hook and period, named as Flask-Track-Usage named them
(``{table}_{url|remote|useragent|language|server}_{hourly|daily|monthly}``), with the
columns ``date``, the key, ``hits`` and ``transfer``. Flask-Track-Usage keyed them on
``date`` alone, so a period held one row whatever the URL; here the key is
``(date, key value)``.

:class:`Summaries` is a batch hook of ``SQLStorage``: it is called with each batch
inside the transaction that inserts the batch's raw rows, adds the batch up in
memory, and sends one upsert statement per table with all its keys (SQLite and
PostgreSQL ``ON CONFLICT DO UPDATE``, MariaDB/MySQL ``ON DUPLICATE KEY UPDATE``). A batch that fails rolls its
counts back with its rows, so a retried batch is counted once.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..summarization import SummaryHook
from .sql_rows import clean_text

if TYPE_CHECKING:
    from ..record import UsageRecord

logger = logging.getLogger("flask_usage_otel.storage")

PERIODS: tuple[str, ...] = ("hourly", "daily", "monthly")
KEY_WIDTH = 255
"""Most characters of a key value kept (a longer URL or User-Agent is cut): the key is part of the
primary key, and MariaDB indexes at most 3072 bytes (768 utf8mb4 characters)."""
_EPOCH = datetime(1970, 1, 1)
_PERIOD_ALIASES = {"hour": "hourly", "day": "daily", "month": "monthly"}


def hook_class(hook: Any) -> type[SummaryHook]:
    """The summary hook class of ``hook`` (a class, an instance, or a name like ``"sumUrl"`` or ``"url"``).

    :raises TypeError: ``hook`` is not a summary hook.
    """
    from ..summarization import ALL_HOOKS

    if isinstance(hook, str):
        for cls in ALL_HOOKS:
            if hook in (cls.__name__, cls.summary_name):
                return cls
        raise TypeError(f"unknown summary hook {hook!r}; hooks are {', '.join(c.__name__ for c in ALL_HOOKS)}")
    cls = hook if inspect.isclass(hook) else type(hook)
    if not issubclass(cls, SummaryHook) or not cls.summary_name:
        raise TypeError(
            f"SQLStorage hooks must be summary hooks (sumUrl, sumRemote, sumUserAgent, sumLanguage, sumServer "
            f"from flask_usage_otel.summarization), got {hook!r}"
        )
    return cls


def summary_table(name: str, key: str, metadata: sa.MetaData, schema: str | None = None) -> sa.Table:
    """One summary table: ``(date, key)`` primary key, ``hits`` and ``transfer`` counts."""
    return sa.Table(
        name,
        metadata,
        sa.Column("date", sa.DateTime(), primary_key=True),
        sa.Column(key, sa.String(KEY_WIDTH), primary_key=True),
        sa.Column("hits", sa.BigInteger(), nullable=False),
        sa.Column("transfer", sa.BigInteger(), nullable=False),
        schema=schema,
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def _key_text(value: str | None) -> str:
    """A key as stored: "" for none, cut to ``KEY_WIDTH``, no NUL (the common case costs two C calls)."""
    if value is None:
        return ""
    if len(value) <= KEY_WIDTH and value.isascii() and "\x00" not in value:
        return value
    return clean_text(value, KEY_WIDTH) or ""


def _day_start(moment: datetime) -> datetime:
    return moment.replace(hour=0)


def _month_start(moment: datetime) -> datetime:
    return moment.replace(day=1)


def _roll_up(
    counts: dict[tuple[datetime, str], list[int]], start_of: Callable[[datetime], datetime]
) -> dict[tuple[datetime, str], list[int]]:
    """Counts per (longer period, key) from counts per (shorter period, key)."""
    rolled: dict[tuple[datetime, str], list[int]] = {}
    for (start, key), (hits, transfer) in counts.items():
        slot = (start_of(start), key)
        total = rolled.get(slot)
        if total is None:
            rolled[slot] = [hits, transfer]
        else:
            total[0] += hits
            total[1] += transfer
    return rolled


def period_starts(timestamp: float) -> tuple[datetime, datetime, datetime]:
    """The starts (naive UTC) of the hour, day and month of a UNIX timestamp."""
    moment = _EPOCH + timedelta(seconds=timestamp)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0), day, day.replace(day=1)


class Summaries:
    """The summary tables of one usage table, kept up to date batch by batch.

    :param usage_table: the raw usage table; summary table names start with its name.
    :param hooks: summary hooks (classes, instances or names), each at most once.
    """

    def __init__(self, usage_table: sa.Table, hooks: Sequence[Any]) -> None:
        classes: list[type[SummaryHook]] = []
        for hook in hooks:
            cls = hook_class(hook)
            if cls not in classes:
                classes.append(cls)
        self.hooks = tuple(classes)
        metadata = usage_table.metadata
        schema = usage_table.schema
        self.tables: dict[str, sa.Table] = {}
        """Flask-Track-Usage's ``sum_tables``: ``"url_daily"`` -> the table."""
        for cls in self.hooks:
            for period in PERIODS:
                name = f"{usage_table.name}_{cls.summary_name}_{period}"
                full = f"{schema}.{name}" if schema else name
                table = metadata.tables.get(full)
                if table is None:
                    table = summary_table(name, cls.summary_name, metadata, schema)
                self.tables[f"{cls.summary_name}_{period}"] = table
        self._ready = False
        self._lock = threading.Lock()
        self._skipped: set[str] = set()  # tables still in Flask-Track-Usage's one-row-per-period form
        self._statements: dict[str, sa.Executable] = {}

    # -- tables ----------------------------------------------------------------------------

    def prepare(self, engine: sa.Engine) -> None:
        """Create missing tables and find old ones (once; outside any batch's transaction:
        MariaDB commits on DDL)."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            inspector = sa.inspect(engine)
            skipped: set[str] = set()
            for base, table in self.tables.items():
                if not inspector.has_table(table.name, schema=table.schema):
                    _create(table, engine)
                elif _primary_key(inspector, table) != ["date", base.rpartition("_")[0]]:
                    skipped.add(base)
            if skipped:
                logger.error(
                    "flask-usage-otel summary tables %s have Flask-Track-Usage's one-row-per-period key and are "
                    "not updated; run `flask usage upgrade-table` to set them aside and start per-key tables",
                    ", ".join(sorted(self.tables[b].name for b in skipped)),
                )
            self._skipped = skipped
            self._ready = True

    def upgrade(self, engine: sa.Engine) -> list[str]:
        """Rename tables with Flask-Track-Usage's date-only key to ``<name>_ftu_old`` and create
        per-key tables in their place; returns what was changed."""
        changes: list[str] = []
        inspector = sa.inspect(engine)
        preparer = engine.dialect.identifier_preparer
        for base, table in self.tables.items():
            if not inspector.has_table(table.name, schema=table.schema):
                _create(table, engine)
                changes.append(f"created table {table.name}")
                continue
            if _primary_key(inspector, table) == ["date", base.rpartition("_")[0]]:
                continue
            old = f"{table.name}_ftu_old"
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {preparer.format_table(table)} RENAME TO {preparer.quote(old)}"))
            _create(table, engine)
            changes.append(f"renamed {table.name} (one row per period) to {old} and created {table.name}")
        with self._lock:
            self._ready = False
        return changes

    # -- the batch hook --------------------------------------------------------------------

    def __call__(self, conn: sa.Connection, records: Sequence[UsageRecord]) -> None:
        """Add a batch to every summary table, on the batch's connection and transaction."""
        # Hours first (one pass over the records per hook), then days and months from the
        # hours: the per-record work is one dict update, not three.
        hours: dict[int, datetime] = {}
        for cls in self.hooks:
            key_of = cls.key
            hourly: dict[tuple[datetime, str], list[int]] = {}
            for record in records:
                hour_number = int(record.timestamp // 3600)
                hour = hours.get(hour_number)
                if hour is None:
                    hour = hours[hour_number] = _EPOCH + timedelta(hours=hour_number)
                key = _key_text(key_of(record))
                hit = hourly.get((hour, key))
                if hit is None:
                    hourly[(hour, key)] = [1, record.response_size or 0]
                else:
                    hit[0] += 1
                    hit[1] += record.response_size or 0
            daily = _roll_up(hourly, _day_start)
            monthly = _roll_up(daily, _month_start)
            for period, counts in zip(PERIODS, (hourly, daily, monthly), strict=True):
                self._upsert(conn, f"{cls.summary_name}_{period}", counts)

    def _upsert(self, conn: sa.Connection, base: str, counts: dict[tuple[datetime, str], list[int]]) -> None:
        if base in self._skipped or not counts:
            return
        key_column = base.rpartition("_")[0]
        # Sorted, so concurrent writers (gunicorn workers) lock rows in one order and never deadlock.
        rows = [
            {"date": start, key_column: key, "hits": hits, "transfer": transfer}
            for (start, key), (hits, transfer) in sorted(counts.items())
        ]
        statement = self._statements.get(base)
        if statement is None:
            statement = self._statements[base] = _upsert(conn.dialect.name, self.tables[base])
        # One statement, sent with the driver's executemany: SQLAlchemy compiles it once
        # (a multi-row VALUES would be compiled anew for every batch, which costs more than the rows).
        conn.execute(statement, rows)

    # -- erasure ---------------------------------------------------------------------------

    def forget_keys(
        self,
        engine: sa.Engine,
        hook: Any,
        condition: Callable[[sa.Column[Any]], sa.ColumnElement[bool]],
    ) -> int:
        """Delete the rows of ``hook``'s tables (every period) whose key meets ``condition``; returns how many."""
        cls = hook_class(hook)
        if cls not in self.hooks:
            return 0
        self.prepare(engine)  # which tables are still in Flask-Track-Usage's form, not written here
        deleted = 0
        with engine.begin() as conn:
            for period in PERIODS:
                base = f"{cls.summary_name}_{period}"
                if base not in self._skipped:
                    table = self.tables[base]
                    deleted += conn.execute(sa.delete(table).where(condition(table.c[cls.summary_name]))).rowcount
        return deleted

    # -- reading ---------------------------------------------------------------------------

    def read(
        self,
        engine: sa.Engine,
        hook: Any,
        period: str = "daily",
        start_date: datetime | date | None = None,
        end_date: datetime | date | None = None,
        limit: int = 500,
        page: int = 1,
        target: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of one summary table, newest period first, then most hits first."""
        cls = hook_class(hook)
        period = _PERIOD_ALIASES.get(period, period)
        if period not in PERIODS:
            raise ValueError(f"period must be one of {', '.join(PERIODS)}, got {period!r}")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit must be an integer of at least 1, got {limit!r}")
        if not isinstance(page, int) or isinstance(page, bool) or page < 1:
            raise ValueError(f"page must be an integer of at least 1, got {page!r}")
        table = self.tables.get(f"{cls.summary_name}_{period}")
        if table is None:
            raise ValueError(f"{cls.__name__} is not among this storage's hooks")
        key = table.c[cls.summary_name]
        query = sa.select(table.c.date, key, table.c.hits, table.c.transfer)
        if start_date is not None:
            query = query.where(table.c.date >= _naive_utc(start_date))
        if end_date is not None:
            query = query.where(table.c.date <= _naive_utc(end_date))
        if target is not None:
            query = query.where(key == clean_text(target, KEY_WIDTH))
        query = query.order_by(table.c.date.desc(), table.c.hits.desc(), key).limit(limit).offset((page - 1) * limit)
        with engine.connect() as conn:
            return [
                {"date": row[0], cls.summary_name: row[1], "hits": int(row[2]), "transfer": int(row[3])}
                for row in conn.execute(query)
            ]


def _upsert(dialect: str, table: sa.Table) -> sa.Executable:
    """An INSERT that adds ``hits`` and ``transfer`` to the row of the same key when there is one."""
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        statement = mysql_insert(table)
        return statement.on_duplicate_key_update(
            hits=table.c.hits + statement.inserted.hits, transfer=table.c.transfer + statement.inserted.transfer
        )
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(table)
        return pg.on_conflict_do_update(
            index_elements=list(table.primary_key.columns),
            set_={"hits": table.c.hits + pg.excluded.hits, "transfer": table.c.transfer + pg.excluded.transfer},
        )
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(table)
        return lite.on_conflict_do_update(
            index_elements=list(table.primary_key.columns),
            set_={"hits": table.c.hits + lite.excluded.hits, "transfer": table.c.transfer + lite.excluded.transfer},
        )
    raise NotImplementedError(f"summary hooks support SQLite, PostgreSQL and MariaDB/MySQL, not {dialect}")


def _create(table: sa.Table, engine: sa.Engine) -> None:
    try:
        table.create(engine, checkfirst=True)
    except sa.exc.SQLAlchemyError:
        # Another process may have created it between the check and the CREATE.
        if not sa.inspect(engine).has_table(table.name, schema=table.schema):
            raise


def _primary_key(inspector: sa.Inspector, table: sa.Table) -> list[str]:
    return list(inspector.get_pk_constraint(table.name, schema=table.schema).get("constrained_columns") or [])


def _naive_utc(value: datetime | date) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is None else value.astimezone(timezone.utc).replace(tzinfo=None)
    return datetime(value.year, value.month, value.day)
