"""The record's fields and the usage row's columns: the one list the record type, the table, the row
builder, the readers and the exports derive from.

``RECORD_FIELDS`` are the fields of :class:`~flask_usage_otel.record.UsageRecord`, in order.

Each :class:`Column` says what the column holds (``kind``), how many characters it keeps
(``width``, text and JSON only), whether Flask-Track-Usage 2.0's ``flask_usage`` table had it
(and how wide it was there), which :class:`~flask_usage_otel.record.UsageRecord` field it is
written from, and where it goes in ``read_usage``'s dicts and the CSV export. ``COLUMNS`` is in
table order: Flask-Track-Usage's columns first, as it laid them out, then the new ones.

Adding a column is one entry here (plus, for a new record field, one in ``RECORD_FIELDS`` and the
code that computes its value). This module imports nothing from the package, so every other module
can import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class RecordField:
    """One field of a ``UsageRecord``: what every consumer of a request (a storage, an export,
    a log record, a summary) receives."""

    name: str
    type: Any
    doc: str = ""
    optional: bool = False
    """Defaults to None when a ``UsageRecord`` is made without it."""
    stored: bool = True
    """Whether the usage table keeps it (in a column of its own, or within ``url``). A field that is
    not stored reaches every storage's ``store`` and ``as_dict``, never a SQL row or the CSV export."""


RECORD_FIELDS: tuple[RecordField, ...] = (
    RecordField("timestamp", float, "When the request started, seconds since the epoch (UTC)."),
    RecordField("speed", float, "Seconds from the environ reaching ``app.wsgi_app`` to the end of the response body."),
    RecordField("method", str, "The HTTP method as sent (labels normalise unknown methods to ``_OTHER``)."),
    RecordField("scheme", str),
    RecordField("host", str),
    RecordField("script_root", str),
    RecordField("path", str),
    RecordField("query_string", str),
    RecordField("route", str, "The URL rule template (``/items/<int:item_id>``), or ``UNMATCHED_ROUTE``."),
    RecordField("endpoint", str | None),
    RecordField("blueprint", str | None),
    RecordField("view_args", Mapping[str, Any]),
    RecordField("status", int, "The status the client received."),
    RecordField("content_length", int | None, "Size of the request body, from ``Content-Length``."),
    RecordField("response_size", int | None, "Bytes of response body sent."),
    RecordField("remote_addr", str | None),
    RecordField("xforwardedfor", str | None),
    RecordField("user_agent", str | None, "The raw ``User-Agent`` header; the parsed parts are ``ua``."),
    RecordField("accept_language", str | None),
    RecordField("authorization", bool, "Whether an ``Authorization`` header was present (never the header)."),
    RecordField("username", str | None),
    RecordField("server_name", str),
    RecordField("protocol", str),
    RecordField("track_var", Mapping[str, Any]),
    RecordField("exception", str | None, "Class name of an exception nothing handled.", optional=True),
    RecordField("trace_id", str | None, optional=True),
    RecordField("span_id", str | None, optional=True),
    RecordField("ip_info", Mapping[str, Any] | None, optional=True),
    RecordField(
        "headers",
        Mapping[str, list[str]] | None,
        "The headers ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` name, as the span's attributes "
        "(``http.request.header.x-request-id`` -> ``[value]``, sanitised), when ``TRACK_USAGE_OTEL_LOGS_HEADERS`` "
        "asks for them on log records; else None. No column: headers are for log records only.",
        optional=True,
        stored=False,
    ),
)
"""Every field of a ``UsageRecord``, in order; names follow Flask-Track-Usage's where it had one."""

RECORD_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in RECORD_FIELDS)

UNSTORED_FIELDS: tuple[str, ...] = tuple(f.name for f in RECORD_FIELDS if not f.stored)
"""Record fields no column is written from (``tests/test_columns.py`` holds every column to this)."""


class Kind(Enum):
    """What a column holds, and so its SQL type and how a value is written and read back."""

    ID = "id"
    """The row's key: BIGINT (INTEGER on SQLite, so it is the rowid), assigned by the database."""
    TEXT = "text"
    """VARCHAR(width); longer values are cut to the width, NUL characters removed."""
    JSON = "json"
    """A mapping as compact JSON in TEXT, at most ``width`` characters; decoded by ``read_usage``."""
    INTEGER = "integer"
    """INTEGER (32-bit); a value out of range is stored as NULL."""
    BIGINT = "bigint"
    """BIGINT (64-bit); a value out of range is stored as NULL."""
    FLOAT = "float"
    """DOUBLE PRECISION."""
    BOOLEAN = "boolean"
    DATETIME = "datetime"
    """Naive UTC with microseconds (as Flask-Track-Usage stored it); read back timezone-aware."""


INTEGER_LIMITS: dict[Kind, int] = {Kind.INTEGER: 2**31 - 1, Kind.BIGINT: 2**63 - 1}
"""Largest value per integer kind."""


@dataclass(frozen=True)
class Column:
    """One column of the usage table."""

    name: str
    kind: Kind
    width: int | None = None
    """Most characters kept (TEXT and JSON); None for the other kinds."""
    legacy_width: int | None = None
    """Set when Flask-Track-Usage 2.0's table had this column: its VARCHAR width (0 for a non-text column)."""
    record_field: str | None = None
    """The ``UsageRecord`` field the value comes from (None for ``id``, which the database assigns); some
    columns are computed from it (``url``, the parsed user agent, the first ``Accept-Language``)."""
    read_key: str | None = None
    """The key in ``read_usage``'s dicts (default: the name); ``ua_*`` go under ``user_agent``."""
    export_rank: int = 0
    """Position in ``flask usage export --format csv`` (its columns are sorted by it)."""

    @property
    def is_legacy(self) -> bool:
        """Whether Flask-Track-Usage 2.0's ``flask_usage`` table has this column."""
        return self.legacy_width is not None

    @property
    def key(self) -> str:
        """The key of the value in ``read_usage``'s dicts (a ``user_agent`` sub-key for ``ua_*``)."""
        return self.read_key or self.name


# JSON columns hold at most 16,000 characters: a MariaDB TEXT holds 65,535 bytes, four per utf8mb4 character.
_JSON_WIDTH = 16_000

COLUMNS: tuple[Column, ...] = (
    # Flask-Track-Usage 2.0's columns, in its order, with its widths.
    Column("id", Kind.ID, legacy_width=0, export_rank=0),
    Column("url", Kind.TEXT, 4096, 128, "url", export_rank=3),
    Column("ua_browser", Kind.TEXT, 64, 16, "user_agent", "browser", export_rank=17),
    Column("ua_language", Kind.TEXT, 64, 16, "accept_language", "language", export_rank=18),
    Column("ua_platform", Kind.TEXT, 64, 16, "user_agent", "platform", export_rank=19),
    Column("ua_version", Kind.TEXT, 64, 16, "user_agent", "version", export_rank=20),
    Column("blueprint", Kind.TEXT, 255, 16, "blueprint", export_rank=7),
    Column("view_args", Kind.JSON, _JSON_WIDTH, 64, "view_args", export_rank=8),
    Column("status", Kind.INTEGER, None, 0, "status", export_rank=9),
    Column("remote_addr", Kind.TEXT, 64, 24, "remote_addr", export_rank=13),
    Column("xforwardedfor", Kind.TEXT, 1024, 24, "xforwardedfor", export_rank=14),
    Column("authorization", Kind.BOOLEAN, None, 0, "authorization", export_rank=15),
    Column("ip_info", Kind.JSON, _JSON_WIDTH, 1024, "ip_info", export_rank=27),
    Column("path", Kind.TEXT, 2048, 32, "path", export_rank=4),
    Column("speed", Kind.FLOAT, None, 0, "speed", export_rank=10),
    Column("datetime", Kind.DATETIME, None, 0, "timestamp", "date", export_rank=1),
    Column("username", Kind.TEXT, 255, 128, "username", export_rank=16),
    Column("track_var", Kind.JSON, _JSON_WIDTH, 128, "track_var", export_rank=28),
    # New in flask-usage-otel.
    Column("method", Kind.TEXT, 16, None, "method", export_rank=2),
    Column("route", Kind.TEXT, 512, None, "route", export_rank=5),
    Column("endpoint", Kind.TEXT, 255, None, "endpoint", export_rank=6),
    Column("user_agent_raw", Kind.TEXT, 1024, None, "user_agent", export_rank=21),
    Column("content_length", Kind.BIGINT, None, None, "content_length", export_rank=11),
    Column("response_size", Kind.BIGINT, None, None, "response_size", export_rank=12),
    Column("server_name", Kind.TEXT, 255, None, "server_name", export_rank=22),
    Column("protocol", Kind.TEXT, 16, None, "protocol", export_rank=23),
    Column("exception", Kind.TEXT, 255, None, "exception", export_rank=24),
    Column("trace_id", Kind.TEXT, 32, None, "trace_id", export_rank=25),
    Column("span_id", Kind.TEXT, 16, None, "span_id", export_rank=26),
    Column("synthetic_type", Kind.TEXT, 8, None, "user_agent", export_rank=29),
)
"""Every column of the usage table, in table order."""

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}

COLUMN_WIDTHS: dict[str, int] = {c.name: c.width for c in COLUMNS if c.width is not None}
"""Most characters kept per text and JSON column; longer values are cut."""

LEGACY_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.is_legacy)
"""The columns of Flask-Track-Usage 2.0's ``flask_usage`` table, in its order."""

LEGACY_WIDTHS: dict[str, int] = {c.name: c.legacy_width for c in COLUMNS if c.legacy_width}
"""Flask-Track-Usage 2.0's VARCHAR widths (its table cut nothing on SQLite, and refused longer values elsewhere)."""

TEXT_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.kind is Kind.TEXT)
JSON_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.kind is Kind.JSON)
PLAIN_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.kind not in (Kind.ID, Kind.TEXT, Kind.JSON))
"""Columns written as they are (numbers, a boolean, the timestamp)."""

COLUMN_LIMITS: dict[str, int] = {c.name: INTEGER_LIMITS[c.kind] for c in COLUMNS if c.kind in INTEGER_LIMITS}
"""Largest value per integer column; a value outside the column's range is stored as NULL."""

USER_AGENT_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.name.startswith("ua_"))
"""Columns read back as one nested ``user_agent`` dict, keyed by ``Column.key``."""

EXPORT_COLUMNS: tuple[str, ...] = tuple(
    ("date" if c.kind is Kind.DATETIME else c.name) for c in sorted(COLUMNS, key=lambda c: c.export_rank)
)
"""Columns of ``flask usage export --format csv``: the nested user agent flattened, the timestamp as ``date``."""
