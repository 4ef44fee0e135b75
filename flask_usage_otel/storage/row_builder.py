"""``RowBuilder``: a record as the parameter tuple of one INSERT (or COPY) row.

This runs on the storage writer's thread for every row, and that thread shares the
interpreter lock with the request threads, so each microsecond here is one less for
requests. What keeps it cheap without generated code:

- a record is a tuple: the values a column takes as they are come out in one
  ``itemgetter`` call per kind of column (text, JSON, plain);
- text is checked once for the whole row (ASCII, no NUL) with C-level string methods;
  then each value is only compared with its column's width, and copied or cut only
  when it must be; a row with other text cleans each value (:func:`clean_text`);
- JSON columns' None and ``{}`` (most requests' ``ip_info``, ``track_var``, ``view_args``)
  need no encoder call; integer columns out of their range become NULL;
- a column that needs converting (the timestamp, a driver's bind processor, an integer
  range) has one function, and only those columns are touched;
- with ``datetime_text``, the timestamp goes as ISO text made from the float seconds
  with a per-second cache (:func:`timestamp_text`), instead of a ``datetime`` built
  and formatted per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from ..columns import (
    BY_NAME,
    COLUMN_LIMITS,
    COLUMN_WIDTHS,
    JSON_COLUMNS,
    PLAIN_COLUMNS,
    RECORD_FIELD_NAMES,
    TEXT_COLUMNS,
)
from ..record import UNMATCHED_ROUTE
from ..useragent import LONGEST_NAME, parse_user_agent
from .current_row import CURRENT_ROW_COLUMNS, current_row
from .sql_text import EPOCH, clean_text, json_text, language, values_url

if TYPE_CHECKING:
    from ..record import UsageRecord

# Text columns whose values can never be longer than this: a width at least as wide needs no check.
_LONGEST: dict[str, int] = {
    "ua_browser": LONGEST_NAME,  # names from useragent's fixed lists
    "ua_platform": LONGEST_NAME,
    "ua_language": 35,  # first_language refuses longer tags
    "synthetic_type": 4,  # "bot" or "test"
    "trace_id": 32,  # hex, as formatted by the OTel sink
    "span_id": 16,
}

DERIVED_TEXT: tuple[str, ...] = ("url", "ua_browser", "ua_platform", "ua_version", "ua_language", "synthetic_type")
"""Text columns computed from the record rather than copied from one of its fields (:func:`derived_text`)."""


def derived_text(record: UsageRecord) -> tuple[str | None, ...]:
    """The values of ``DERIVED_TEXT``, in that order."""
    ua = parse_user_agent(record.user_agent)  # cached: one parse per distinct header
    return (
        values_url(record.scheme, record.host, record.script_root, record.path, record.query_string),
        ua.browser,
        ua.platform,
        ua.version,
        language(record.accept_language),
        ua.synthetic,
    )


Getter = Callable[[Any], tuple[Any, ...]]


def _getter(indexes: Sequence[int]) -> Getter:
    """The values at ``indexes`` of a tuple, always as a tuple (``itemgetter`` of one index is not)."""
    if not indexes:
        return lambda values: ()
    if len(indexes) == 1:
        index = indexes[0]
        return lambda values: (values[index],)
    return itemgetter(*indexes)


def _field_index(name: str) -> int:
    return RECORD_FIELD_NAMES.index(name)


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
        copied_text = [c for c in TEXT_COLUMNS if c in present and c not in DERIVED_TEXT]
        derived = [c for c in DERIVED_TEXT if c in present]
        json_columns = [c for c in JSON_COLUMNS if c in present]
        plain = [c for c in PLAIN_COLUMNS if c in present]
        self.columns: tuple[str, ...] = (*copied_text, *derived, *json_columns, *plain)
        self._copied_text = _getter([_field_index(BY_NAME[c].record_field) for c in copied_text])  # type: ignore[arg-type]
        self._derived: Getter | None = None
        if derived:
            pick = _getter([DERIVED_TEXT.index(c) for c in derived])
            self._derived = derived_text if derived == list(DERIVED_TEXT) else lambda r: pick(derived_text(r))
        self._text_widths = tuple(widths[c] for c in (*copied_text, *derived))
        # The columns a value could be too long for, narrowest first: a row whose longest value
        # fits a column's width needs no look at that column or any wider one.
        self._by_width = tuple(
            sorted(
                (
                    (i, w)
                    for i, (c, w) in enumerate(zip((*copied_text, *derived), self._text_widths, strict=True))
                    if _LONGEST.get(c, w + 1) > w
                ),
                key=lambda item: item[1],
            )
        )
        self._json = _getter([_field_index(BY_NAME[c].record_field) for c in json_columns])  # type: ignore[arg-type]
        self._json_widths = tuple(widths[c] for c in json_columns)
        # A Flask-Track-Usage table not yet upgraded stored request.view_args: JSON null when no URL rule
        # matched, and without a route column only that tells those rows (404, 405) apart.
        self._null_view_args_at: int | None = None
        if "view_args" in json_columns and "route" not in present:
            self._null_view_args_at = json_columns.index("view_args")
        self._plain = _getter([_field_index(BY_NAME[c].record_field) for c in plain])  # type: ignore[arg-type]
        # Integer columns: a value out of the column's range (a hostile Content-Length) becomes NULL.
        self._ranges = tuple(
            (i, -COLUMN_LIMITS[c] - 1, COLUMN_LIMITS[c]) for i, c in enumerate(plain) if c in COLUMN_LIMITS
        )
        conversions = [(i, _conversion(c, processors or {}, datetime_text)) for i, c in enumerate(plain)]
        self._conversions = tuple((i, convert) for i, convert in conversions if convert is not None)

        # A table with this release's layout (every table it creates) gets the row written out column
        # by column; any other (an old table, narrower widths, a driver's own conversions) the loops below.
        self._current: tuple[Callable[[float], Any], Callable[[Any], Any] | None] | None = None
        processors = dict(processors or {})
        if (
            self.columns == CURRENT_ROW_COLUMNS
            and all(widths[c] == COLUMN_WIDTHS[c] for c in (*copied_text, *derived, *json_columns))
            and set(processors) <= {"authorization", "datetime"}
        ):
            datetime_process = processors.get("datetime")
            if datetime_text:
                make_timestamp: Callable[[float], Any] = timestamp_text
            elif datetime_process is None:
                make_timestamp = _naive_utc
            else:
                make_timestamp = lambda seconds: datetime_process(_naive_utc(seconds))  # noqa: E731
            self._current = (make_timestamp, processors.get("authorization"))

    def rows(self, records: Sequence[UsageRecord]) -> list[tuple[Any, ...]]:
        """One parameter tuple per record."""
        if self._current is not None:
            timestamp, authorization = self._current
            return [current_row(record, timestamp, authorization) for record in records]
        return list(map(self._general_row, records))

    def row(self, record: UsageRecord) -> tuple[Any, ...]:
        """The parameter tuple of one record."""
        if self._current is not None:
            return current_row(record, *self._current)
        return self._general_row(record)

    def _general_row(self, record: UsageRecord) -> tuple[Any, ...]:
        texts = self._copied_text(record)
        if self._derived is not None:
            texts += self._derived(record)
        try:
            joined = "".join(map(_NONE_AS_EMPTY, texts, texts))  # a falsy value that is not text raises too
            plain_text = joined.isascii() and "\x00" not in joined
        except TypeError:  # a value that is not text (a username given as a number): clean each one
            plain_text = False
        if not plain_text:
            texts = tuple(map(clean_text, texts, self._text_widths))
        elif self._by_width:
            longest = max(map(len, filter(None, texts)), default=0)
            for index, width in self._by_width:
                if width >= longest:
                    break  # this column and every wider one hold the longest value
                text = texts[index]
                if text is not None and len(text) > width:
                    texts = tuple(map(_cut, texts, self._text_widths))
                    break
        # Most requests' ip_info, track_var and view_args are None or {}: no encoder call for them.
        documents = []
        for value, width in zip(self._json(record), self._json_widths):  # noqa: B905 - built together
            documents.append(None if value is None else "{}" if value == {} else json_text(value, width))
        if self._null_view_args_at is not None and record.route == UNMATCHED_ROUTE:
            documents[self._null_view_args_at] = "null"
        values = self._plain(record)
        if self._conversions or self._ranges:
            converted = list(values)
            for index, low, high in self._ranges:
                value = converted[index]
                if value is not None and not low <= value <= high:
                    converted[index] = None
            for index, convert in self._conversions:
                converted[index] = convert(converted[index])
            values = tuple(converted)
        return (*texts, *documents, *values)


_NONE_AS_EMPTY = {None: ""}.get  # (value, value): "" for None, else the value itself


def _cut(text: str | None, width: int) -> str | None:
    return text if text is None or len(text) <= width else text[:width]


def _conversion(column: str, processors: Mapping[str, Callable[[Any], Any]], datetime_text: bool) -> Any:
    """What turns a plain column's record value into its parameter; None when it goes as it is."""
    steps: list[Callable[[Any], Any]] = []
    if column == "datetime":
        # Naive UTC, as Flask-Track-Usage stored it. EPOCH + timedelta gives the same value as
        # datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None) (both round half to even) in half the time.
        steps.append(timestamp_text if datetime_text else _naive_utc)
    process = processors.get(column)
    if process is not None and not (column == "datetime" and datetime_text):
        steps.append(process)
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]
    return lambda value: _apply(steps, value)


def _apply(steps: list[Callable[[Any], Any]], value: Any) -> Any:
    for step in steps:
        value = step(value)
    return value


def _naive_utc(timestamp: float) -> Any:
    return EPOCH + timedelta(seconds=timestamp)


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
