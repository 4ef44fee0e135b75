"""``RowBuilder``: a record's values as the parameter tuple of one INSERT (or COPY) row.

This runs on the storage writer's thread for every row, and that thread shares the
interpreter lock with the request threads, so each microsecond here is one less for
requests. The builder compiles, once per table layout, one plain Python function that
reads the record's values tuple (``record.RecordValues``) by index and returns the row:

- text is checked once for the whole row (ASCII, no NUL) with C-level string methods;
  then each value is only compared with its column's width, and copied or cut only
  when it must be; a row with other text cleans each value (:func:`clean_text`);
- JSON columns are encoded by :func:`json_text`, integer columns out of their range
  become NULL, and the driver-specific conversions (bind processors) are applied;
- with ``datetime_text``, the timestamp goes as ISO text made from the float seconds
  with a per-second cache (:func:`timestamp_text`), instead of a ``datetime`` built
  and formatted per row.

The function's source is kept as ``RowBuilder.source``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .. import columns as column_defs
from ..record import FIELD_INDEX, UNMATCHED_ROUTE, values_of_record
from ..useragent import LONGEST_NAME, parse_user_agent
from .sql_text import EPOCH, clean_text, json_text, language, values_url

if TYPE_CHECKING:
    from ..record import RecordValues, UsageRecord

# Text columns whose values can never be longer than this: a width at least as wide needs no check.
_LONGEST: dict[str, int] = {
    "ua_browser": LONGEST_NAME,  # names from useragent's fixed lists
    "ua_platform": LONGEST_NAME,
    "ua_language": 35,  # first_language refuses longer tags
    "trace_id": 32,  # hex, as formatted by the OTel sink
    "span_id": 16,
}


def _field(name: str) -> str:
    return f"v[{FIELD_INDEX[name]}]"


# How a column's value is computed from the record's values ``v``, where it is not simply the
# value of its ``record_field``. ``ua`` is the parsed User-Agent header.
_COMPUTED: dict[str, str] = {
    "url": f"values_url({', '.join(map(_field, ('scheme', 'host', 'script_root', 'path', 'query_string')))})",
    "ua_browser": "ua.browser",
    "ua_language": f"language({_field('accept_language')})",
    "ua_platform": "ua.platform",
    "ua_version": "ua.version",
    # Naive UTC, as Flask-Track-Usage stored it; the same value as
    # datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None) (both round half to even) in half the time.
    "datetime": f"EPOCH + timedelta(seconds={_field('timestamp')})",
}


def _expression(name: str) -> str:
    if name in _COMPUTED:
        return _COMPUTED[name]
    return _field(column_defs.BY_NAME[name].record_field)  # type: ignore[arg-type]


class RowBuilder:
    """Turns records into parameter tuples for the columns a table really has, in ``columns`` order.

    :param columns: the table's columns (others, such as ``id`` or a user's own, are left out).
    :param widths: most characters per text and JSON column (narrower on an old table).
    :param processors: per column, a function converting the value to what the driver takes
        (SQLAlchemy's bind processors, e.g. booleans as integers); None leaves values as they are.
    :param datetime_text: write ``datetime`` as ISO text (``2024-03-10 12:30:15.250000``) rather
        than a ``datetime`` (for drivers that send text anyway: SQLite, PostgreSQL's COPY,
        MySQL's); a processor given for ``datetime`` is then not used.
    """

    def __init__(
        self,
        columns: Sequence[str],
        widths: Mapping[str, int],
        processors: Mapping[str, Callable[[Any], Any]] | None = None,
        *,
        datetime_text: bool = False,
    ) -> None:
        present = set(columns)
        text = [c for c in column_defs.TEXT_COLUMNS if c in present]
        json_columns = [c for c in column_defs.JSON_COLUMNS if c in present]
        plain = [c for c in column_defs.PLAIN_COLUMNS if c in present]
        self.columns: tuple[str, ...] = (*text, *json_columns, *plain)
        processors = dict(processors or {})
        if datetime_text:
            processors.pop("datetime", None)
        namespace: dict[str, Any] = {
            "values_url": values_url,
            "language": language,
            "parse_user_agent": parse_user_agent,
            "clean_text": clean_text,
            "json_text": json_text,
            "timestamp_text": timestamp_text,
            "EPOCH": EPOCH,
            "timedelta": timedelta,
        }
        lines = ["def row(v):"]
        if any(c.startswith("ua_") and c != "ua_language" for c in text):
            lines.append(f"    ua = parse_user_agent({_field('user_agent')})  # cached: one parse per distinct header")
        names = [f"t{i}" for i in range(len(text))]
        lines += [f"    {name} = {_expression(column)}" for name, column in zip(names, text, strict=True)]
        out: list[str] = []
        if text:
            lines.append(f"    try:\n        joined = ''.join(filter(None, ({', '.join(names)},)))")
            lines.append("        plain_text = joined.isascii() and '\\x00' not in joined")
            # A value that is not text (a username given as a number): clean each one.
            lines.append("    except TypeError:\n        plain_text = False")
            lines.append("    if not plain_text:")
            for name, column in zip(names, text, strict=True):
                lines.append(f"        {name} = clean_text({name}, {widths[column]})")
            for name, column in zip(names, text, strict=True):
                width = widths[column]
                if _LONGEST.get(column, width + 1) <= width:
                    out.append(name)
                else:
                    out.append(f"({name} if {name} is None or len({name}) <= {width} else {name}[:{width}])")
        # None and {} (most requests' ip_info, track_var, view_args) without a call.
        out += [
            f"(None if (x := {_expression(c)}) is None else '{{}}' if x == {{}} else json_text(x, {widths[c]}))"
            for c in json_columns
        ]
        if "view_args" in json_columns and "route" not in present:
            # A Flask-Track-Usage table not yet upgraded: it stored request.view_args, JSON null when no
            # URL rule matched, and without a route column only this tells those rows (404, 405) apart.
            at = len(text) + json_columns.index("view_args")
            out[at] = f"('null' if {_field('route')} == {UNMATCHED_ROUTE!r} else {out[at]})"
        for column in plain:
            value = (
                f"timestamp_text({_field('timestamp')})"
                if column == "datetime" and datetime_text
                else _expression(column)
            )
            if column in column_defs.COLUMN_LIMITS:
                # A hostile Content-Length must not fail the INSERT: out-of-range integers become NULL.
                limit = column_defs.COLUMN_LIMITS[column]
                value = f"(x if (x := {value}) is None or {-limit - 1} <= x <= {limit} else None)"
            process = processors.get(column)
            if process is not None:
                namespace[f"process_{column}"] = process
                value = f"process_{column}({value})"
            out.append(value)
        lines.append(f"    return ({', '.join(out)},)")
        self.source = "\n".join(lines)
        exec(self.source, namespace)  # the source is built above from the fixed column list only
        self._row: Callable[[RecordValues], tuple[Any, ...]] = namespace["row"]

    def rows(self, records: Sequence[UsageRecord | RecordValues]) -> list[tuple[Any, ...]]:
        """One parameter tuple per record (or record's values)."""
        row = self._row
        return [row(r if type(r) is tuple else values_of_record(r)) for r in records]  # type: ignore[arg-type]

    def row(self, record: UsageRecord | RecordValues) -> tuple[Any, ...]:
        """The parameter tuple of one record, or of a record's values (what the storage writer queues)."""
        return self._row(record if type(record) is tuple else values_of_record(record))  # type: ignore[arg-type]


_SECONDS: dict[int, str] = {}
_MAX_SECONDS = 64  # rows of a batch share a few seconds; a bounded cache of their text


def timestamp_text(timestamp: float) -> str:
    """``(EPOCH + timedelta(seconds=timestamp)).isoformat(" ", "microseconds")``, without making either.

    ``timedelta`` takes the float's exact fractional part (``modf``) in microseconds and rounds
    it half to even, as ``round`` does; the date and time of the whole second are cached.
    """
    if not timestamp >= 0:  # before 1970, or NaN: the exact path
        return (EPOCH + timedelta(seconds=timestamp)).isoformat(" ", "microseconds")
    fraction, whole = math.modf(timestamp)
    second = int(whole)
    micro = round(fraction * 1e6)
    if micro == 1_000_000:
        second, micro = second + 1, 0
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) >= _MAX_SECONDS:
            _SECONDS.clear()
        text = _SECONDS[second] = (EPOCH + timedelta(seconds=second)).isoformat(" ")
    return f"{text}.{str(1_000_000 + micro)[1:]}"  # zero-padded to six digits, cheaper than :06d
