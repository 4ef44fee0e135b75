"""Reading the usage table: ``get_usage`` (Flask-Track-Usage's rows), ``read_usage`` and ``iter_usage``
(decoded rows), ``get_summary`` (GROUP BY in the database), ``get_sum`` and ``explain_usage``.

The rows are decoded as ``columns.COLUMNS`` says: JSON columns parsed, the timestamp
timezone-aware UTC (as ``date``), the parsed user agent nested under ``user_agent``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..columns import COLUMNS, USER_AGENT_COLUMNS, Kind
from ..ftu_names import warn_legacy_name
from .base import SUMMARY_BY, SUMMARY_PERIODS
from .legacy_rows import legacy_usage_dict
from .queries import as_utc, aware, check_positive_int, filter_values, json_value, naive_utc, period_expression

if TYPE_CHECKING:
    from .summaries import Summaries
    from .table import TableState

FILTER_COLUMNS: tuple[str, ...] = ("endpoint", "route", "blueprint", "status", "method", "username")
"""Columns ``get_usage`` filters on."""


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


class UsageReading:
    """The reading half of :class:`~flask_usage_otel.storage.sql.SQLStorage` (which provides what is declared here)."""

    table: sa.Table
    summaries: Summaries | None

    if TYPE_CHECKING:

        @property
        def engine(self) -> sa.Engine: ...

        def _table_state(self) -> TableState: ...

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

    def _get_usage(
        self,
        start_date: datetime | date | None = None,
        end_date: datetime | date | None = None,
        limit: int = 500,
        page: int = 1,
    ) -> list[dict[str, Any]]:
        """Flask-Track-Usage's ``SQLStorage._get_usage``, which its ``get_usage`` called: :meth:`get_usage`
        (deprecated)."""
        warn_legacy_name("SQLStorage._get_usage", "SQLStorage.get_usage (or read_usage, decoded)")
        return self.get_usage(start_date, end_date, limit, page)

    def _get_raw(
        self,
        start_date: datetime | date | None = None,
        end_date: datetime | date | None = None,
        limit: int = 500,
        page: int = 1,
    ) -> list[sa.Row[Any]]:
        """Flask-Track-Usage's ``SQLStorage._get_raw`` (deprecated): the rows as the database holds them,
        newest first, each a tuple of the table's columns in their order (``row[1]`` is ``url``, ``row[15]``
        ``datetime``, as there); the range and pages as :meth:`get_usage`."""
        warn_legacy_name("SQLStorage._get_raw", "SQLStorage.read_usage")
        query = self._usage_query(start_date, end_date, limit, page, {})
        with self.engine.connect() as conn:
            return list(conn.execute(query).all())

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
            return [usage_dict(row._mapping) for row in conn.execute(query)]

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
        check_positive_int("limit", limit)
        check_positive_int("page", page)
        unknown = set(filters) - set(FILTER_COLUMNS)
        if unknown:  # as Python says it for read_usage's own keywords
            raise TypeError(
                f"got an unexpected keyword argument {min(unknown)!r} (the filters are {', '.join(FILTER_COLUMNS)})"
            )
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
        check_positive_int("chunk_size", chunk_size)
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
                rows = [usage_dict(row._mapping) for row in conn.execute(query)]
            yield from rows
            if len(rows) < chunk_size:
                return
            last = (naive_utc(rows[-1]["date"]), rows[-1]["id"])

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
                period_expression(self.engine.dialect.name, period, table.c.datetime).label("period"),
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
                    "period": aware(row.period),
                    by: row.key,
                    "hits": int(row.hits),
                    "request_bytes": int(row.request_bytes or 0),
                    "response_bytes": int(row.response_bytes or 0),
                    "avg_speed": None if row.avg_speed is None else float(row.avg_speed),
                }
                for row in conn.execute(query)
            ]

    def _where(
        self,
        start_date: datetime | date | None,
        end_date: datetime | date | None,
        filters: Mapping[str, Any],
    ) -> list[sa.ColumnElement[bool]]:
        start = as_utc("start_date", start_date)
        end = as_utc("end_date", end_date)
        if start is not None and end is not None and end < start:
            raise ValueError(f"end_date ({end.isoformat()}) is before start_date ({start.isoformat()})")
        table = self.table
        where: list[sa.ColumnElement[bool]] = []
        if start is not None:
            where.append(table.c.datetime >= naive_utc(start))
        if end is not None:
            where.append(table.c.datetime <= naive_utc(end))
        state = self._table_state() if any(v is not None for v in filters.values()) else None
        for name, value in filters.items():
            if value is None:
                continue
            assert state is not None
            if name not in state.columns:
                raise ValueError(
                    f"cannot filter on {name!r}: the table has no such column; run `flask usage upgrade-table`"
                )
            values = filter_values(name, value)
            column = table.c[name]
            where.append(column == values[0] if len(values) == 1 else column.in_(values))
        return where


def _as_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


_DECODERS: dict[Kind, Callable[[Any], Any]] = {Kind.JSON: json_value, Kind.BOOLEAN: _as_bool, Kind.DATETIME: aware}
# (column, key, decoder, nested under "user_agent"), worked out once.
_READ_PLAN = tuple((c.name, c.key, _DECODERS.get(c.kind), c.name in USER_AGENT_COLUMNS) for c in COLUMNS)


def usage_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """One row as ``read_usage`` gives it: every column decoded, absent ones (an older table) None."""
    get = row.get
    result: dict[str, Any] = {}
    for name, key, decode, nested in _READ_PLAN:
        value = get(name)
        if decode is not None:
            value = decode(value)
        if nested:
            result.setdefault("user_agent", {})[key] = value
        else:
            result[key] = value
    return result
