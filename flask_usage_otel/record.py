"""``UsageRecord``: the facts of one tracked request, built once and shared by every sink.

Also what it is built from: ``RequestState``, the raw values the request thread keeps
for one request in flight, and the HTTP method normalisation every exporter labels with.

The request thread stores raw values only (strings straight from the WSGI
environ, numbers from one clock read); everything derived (the full URL, parsed
query arguments, the parsed user agent, the datetime) is a property computed on
demand, usually by the storage writer on its own thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from itertools import repeat
from operator import attrgetter, call
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from .privacy import REDACTED, redact_secrets
from .request_text import first_language, full_url
from .useragent import UserAgentInfo, parse_user_agent

if TYPE_CHECKING:
    from flask import Request

    from .geoip import GeoIP
    from .privacy import Anonymizer, QueryRedactor

UNMATCHED_ROUTE = "<unmatched>"
"""The ``route`` label and field of requests that matched no URL rule (404, 405, redirects)."""

OTHER = "_OTHER"
"""The label value for HTTP methods outside the standard set and exception classes past the limit."""

STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"})


def method_label(method: str) -> str:
    """The ``method`` label: the method itself when standard, else ``_OTHER``."""
    return method if method in STANDARD_METHODS else OTHER


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request as the tracking saw it.

    Field names follow Flask-Track-Usage's where it had one (``url``, ``speed``,
    ``view_args``, ``track_var``, ...).
    """

    timestamp: float
    """When the request started, seconds since the epoch (UTC)."""
    speed: float
    """Seconds from the environ reaching ``app.wsgi_app`` to the end of the response body (monotonic clock)."""
    method: str
    """The HTTP method, upper case, as sent (metric labels normalise unknown methods to ``_OTHER``)."""
    scheme: str
    host: str
    script_root: str
    path: str
    query_string: str
    route: str
    """The URL rule template (``/items/<int:item_id>``), or ``UNMATCHED_ROUTE``."""
    endpoint: str | None
    blueprint: str | None
    view_args: Mapping[str, Any]
    status: int
    content_length: int | None
    """Size of the request body, from ``Content-Length``."""
    response_size: int | None
    """Size of the response body when known before it is sent."""
    remote_addr: str | None
    xforwardedfor: str | None
    user_agent: str | None
    """The raw ``User-Agent`` header; parsed parts are in ``ua``."""
    accept_language: str | None
    authorization: bool
    """Whether an ``Authorization`` header was present; the header itself is never kept."""
    username: str | None
    server_name: str
    protocol: str
    track_var: Mapping[str, Any]
    exception: str | None = None
    """Class name of an exception the view raised and nothing handled."""
    trace_id: str | None = None
    span_id: str | None = None
    ip_info: Mapping[str, Any] | None = None

    @property
    def date(self) -> datetime:
        """When the request started, as a timezone-aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp, timezone.utc)

    @property
    def url(self) -> str:
        """The full URL, equal to Werkzeug's ``request.url``: an IRI (non-ASCII text kept as such),
        the host lower-cased and without the scheme's default port (Flask-Track-Usage stored this)."""
        return full_url(self.scheme, self.host, self.script_root, self.path, self.query_string)

    @property
    def url_args(self) -> dict[str, str]:
        """The query arguments (the first value of each), as ``request.args`` gives them."""
        args: dict[str, str] = {}
        for key, value in parse_qsl(self.query_string, keep_blank_values=True, errors="replace"):
            args.setdefault(key, value)
        return args

    @property
    def ua(self) -> UserAgentInfo:
        """The user agent parsed into browser, platform and version (best effort)."""
        return parse_user_agent(self.user_agent)

    @property
    def language(self) -> str | None:
        """The client's preferred language: the first tag of ``Accept-Language``."""
        return first_language(self.accept_language)

    def as_dict(self) -> dict[str, Any]:
        """The record's fields plus its derived values, JSON-friendly except ``date``."""
        data = asdict(self)
        ua = self.ua
        data.update(
            date=self.date,
            url=self.url,
            url_args=self.url_args,
            language=self.language,
            ua_browser=ua.browser,
            ua_platform=ua.platform,
            ua_version=ua.version,
        )
        return data


@dataclass(frozen=True, slots=True)
class RecordContext:
    """What every record of one app shares: its name, the address policies and the query redaction."""

    server_name: str
    anonymizer: Anonymizer | None = None
    geoip: GeoIP | None = None
    redactor: QueryRedactor | None = None


ENVIRON_KEYS = (
    "wsgi.url_scheme",
    "HTTP_HOST",
    "SERVER_NAME",
    "SERVER_PORT",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "CONTENT_LENGTH",
    "REMOTE_ADDR",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_USER_AGENT",
    "HTTP_ACCEPT_LANGUAGE",
    "SERVER_PROTOCOL",
)
"""The WSGI environ values a record is made of, copied raw on the request thread (``RequestState.capture``).

``HTTP_AUTHORIZATION`` is deliberately not among them: only its presence is kept.
"""


class RequestState:
    """What the tracking knows about one tracked request while it is in flight.

    Mutable and private to one request; sinks may keep their own per-request
    objects in the slots reserved for them (``span``, ``context_token``).
    Everything is a raw value so that building it costs next to nothing; the
    full ``record`` is derived from it only when a sink asks.

    ``request`` is the request being served until the request finishes, then None.
    ``error`` is the exception nothing handled (the view's, a hook's, or one that
    escaped the app), until the request finishes.
    """

    __slots__ = (
        "_record",
        "authorization",
        "blueprint",
        "context",
        "context_token",
        "endpoint",
        "environ_values",
        "error",
        "exception",
        "method",
        "method_label",
        "queued_bytes",
        "request",
        "response_size",
        "route",
        "sampled",
        "secrets",
        "span",
        "span_id",
        "speed",
        "start",
        "status",
        "timestamp",
        "trace_id",
        "track_var",
        "username",
        "view_args",
    )

    def __init__(
        self,
        request: Request,
        start: float,
        timestamp: float,
        method: str,
        method_label: str,
        endpoint: str | None,
        route: str,
        blueprint: str | None,
        context: RecordContext,
    ) -> None:
        self.request = request
        self.start = start
        self.timestamp = timestamp
        self.method = method
        self.method_label = method_label
        self.endpoint = endpoint
        self.route = route
        self.blueprint = blueprint
        self.status: int | None = None
        self.response_size: int | None = None
        self.username: str | None = None
        self.track_var: dict[str, Any] | None = None
        self.exception: str | None = None
        self.error: BaseException | None = None
        self.span: Any = None
        self.context_token: Any = None
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.sampled = False
        self.context = context
        self.speed = 0.0
        self._record: UsageRecord | None = None
        self.environ_values: tuple[str | None, ...] | None = None
        self.authorization = False
        self.view_args: dict[str, Any] | None = None
        self.queued_bytes = 0
        # Secret URL variables (TRACK_USAGE_REDACT_VIEW_ARGS) as (name, value), read when admitted.
        self.secrets: tuple[tuple[str, str], ...] = ()

    def capture(self) -> None:
        """Copy the raw request values a record needs, so the request itself can be let go.

        About half a microsecond of dict lookups on the request thread; everything
        derived from them is left to whoever builds the record.
        """
        if self.environ_values is None:
            req = self.request
            environ = req.environ
            self.environ_values = tuple(map(environ.get, ENVIRON_KEYS))
            self.authorization = "HTTP_AUTHORIZATION" in environ
            self.view_args = req.view_args

    @property
    def record(self) -> UsageRecord:
        """The request's ``UsageRecord``, built on first use (after ``finish`` began), on any thread."""
        if self._record is None:
            self._record = record_from_state(self)
        return self._record


RecordValues = tuple[Any, ...]
"""A record's field values in ``UsageRecord`` field order (``FIELD_INDEX``).

The storage writer builds its rows from these, so a queued request never has to become a
``UsageRecord`` unless something needs one (a summary hook, a Flask-Track-Usage storage).
"""


def record_from_state(state: RequestState) -> UsageRecord:
    """Build the record of a finished request from its captured state (see :func:`record_values`)."""
    return _new_record(record_values(state))


def record_values(state: RequestState) -> RecordValues:
    """The field values of a finished request's record, decoded, anonymized and redacted.

    Runs wherever the record is first needed: on the storage writer's thread for
    queued rows, so decoding, anonymization and GeoIP lookups cost the request nothing.
    """
    values = state.environ_values
    if values is None:
        state.capture()
        values = state.environ_values
    if not "".join(filter(None, values)).isascii():  # type: ignore[arg-type]
        values = _decoded(values)  # type: ignore[arg-type]
    (
        scheme,
        http_host,
        server_name,
        server_port,
        script_name,
        path_info,
        query_string,
        content_length,
        remote_addr,
        xforwardedfor,
        user_agent,
        accept_language,
        protocol,
    ) = values  # type: ignore[misc]
    context = state.context
    # Locate first, then anonymize: the country is right, and the address is not kept.
    ip_info = context.geoip.lookup(remote_addr) if context.geoip is not None else None
    if context.anonymizer is not None:
        remote_addr = context.anonymizer.address(remote_addr)
        xforwardedfor = context.anonymizer.chain(xforwardedfor)
    scheme = scheme or "http"
    query_string = query_string or ""
    if context.redactor is not None:
        # Before anything derives from it: url, url_args and every row, export and callable storage.
        query_string = context.redactor.query(query_string)
    # As werkzeug's Request.path: decoded, exactly one leading slash.
    path = "/" + (path_info or "").lstrip("/")
    view_args = state.view_args or {}
    if state.secrets:  # before the url and every export derive from them
        path, view_args = _without_secrets(state.secrets, path, view_args)
    # In field order (tests/test_extension.py checks every field).
    return (
        state.timestamp,
        state.speed,
        state.method,
        scheme,
        http_host or _server_host(scheme, server_name, server_port),
        script_name or "",
        path,
        query_string,
        state.route,
        state.endpoint,
        state.blueprint,
        view_args,
        state.status or 500,
        _content_length(content_length),
        state.response_size,
        remote_addr,
        xforwardedfor,
        user_agent,
        accept_language,
        state.authorization,
        state.username,
        context.server_name,
        protocol or "",
        state.track_var or {},
        state.exception,
        state.trace_id,
        state.span_id,
        ip_info,
    )


FIELD_NAMES: tuple[str, ...] = tuple(field.name for field in fields(UsageRecord))
FIELD_INDEX: dict[str, int] = {name: index for index, name in enumerate(FIELD_NAMES)}
"""Where each ``UsageRecord`` field sits in a :data:`RecordValues` tuple."""

values_of_record: Callable[[UsageRecord], RecordValues] = attrgetter(*FIELD_NAMES)
"""A record's :data:`RecordValues` (one C call)."""


def as_record(item: UsageRecord | RecordValues) -> UsageRecord:
    """``item`` as a ``UsageRecord``: itself, or the record of its values."""
    return _new_record(item) if type(item) is tuple else item  # type: ignore[arg-type,return-value]


# Each field's slot descriptor's __set__, bound once: called with (record, value).
_SLOT_SETTERS = tuple(UsageRecord.__dict__[field.name].__set__ for field in fields(UsageRecord))


def _new_record(values: tuple[Any, ...]) -> UsageRecord:
    """A ``UsageRecord`` of ``values`` (every field, in order), equal to ``UsageRecord(*values)``.

    The frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, a
    Python-level call per field that made up a fifth of the writer's work per row; the slots'
    own descriptors, called from C by ``map``, store the same values without them.
    """
    record = object.__new__(UsageRecord)
    any(map(call, _SLOT_SETTERS, repeat(record), values))  # each call returns None: all run
    return record


def _without_secrets(
    secrets: tuple[tuple[str, str], ...], path: str, view_args: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The path and view arguments with the values of secret URL variables replaced by ``REDACTED``."""
    names = {name for name, _ in secrets}
    redacted = {key: REDACTED if key in names else value for key, value in view_args.items()}
    return redact_secrets(path, secrets), redacted


def _content_length(value: str | None) -> int | None:
    """``Content-Length`` as a number; None when absent or not plain ASCII digits (``"²".isdigit()`` is true)."""
    return int(value) if value and value.isascii() and value.isdigit() else None


def _server_host(scheme: str, name: str | None, port: str | None) -> str:
    default_port = "443" if scheme == "https" else "80"
    return (name or "") if not port or port == default_port else f"{name or ''}:{port}"


# The environ values (``ENVIRON_KEYS`` order) that hold text the client sent, decoded from WSGI's latin-1.
_CLIENT_TEXT = frozenset(
    (
        "HTTP_HOST",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "HTTP_X_FORWARDED_FOR",
        "HTTP_USER_AGENT",
        "HTTP_ACCEPT_LANGUAGE",
    )
)
_DECODED = tuple(key in _CLIENT_TEXT for key in ENVIRON_KEYS)


def _decoded(values: tuple[str | None, ...]) -> tuple[str | None, ...]:
    """The environ values with the client's text decoded as UTF-8 (only needed when one is not ASCII)."""
    return tuple(_wsgi_text(value) if decode else value for value, decode in zip(values, _DECODED, strict=True))


def _wsgi_text(value: str | None) -> str | None:
    """A WSGI environ string (bytes decoded as latin-1) as the UTF-8 text the client sent."""
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # not a real WSGI string; keep it as it is
        return value
