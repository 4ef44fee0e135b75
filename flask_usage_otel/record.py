"""The two immutable shapes of a finished request, and how one becomes the other.

- :class:`CapturedRequest`: the request as plain data, made once on the request thread when
  it finishes (``capture.capture``); what the background writer queues.
- :class:`UsageRecord`: the request's facts as every consumer receives them (storages,
  exports, log records, summaries), built from a captured request by :func:`build_record`,
  usually on the writer's thread; its fields are ``columns.RECORD_FIELDS``.

Also the HTTP method normalisation every exporter labels with.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl

from .columns import RECORD_FIELD_NAMES, RECORD_FIELDS
from .privacy import REDACTED, redact_secrets, scrub_span_attributes
from .request_text import first_language, full_url
from .useragent import UserAgentInfo, parse_user_agent

if TYPE_CHECKING:
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


_RecordFields = namedtuple(
    "_RecordFields",
    RECORD_FIELD_NAMES,
    defaults=(None,) * sum(f.optional for f in RECORD_FIELDS),
)


class UsageRecord(_RecordFields):
    """One request as the tracking saw it: what every storage, export, log record and summary receives.

    Immutable; its fields are ``columns.RECORD_FIELDS`` (names follow Flask-Track-Usage's where it
    had one: ``url``, ``speed``, ``view_args``, ``track_var``, ...), in that order. The derived
    values (``url``, ``url_args``, ``ua``, ``language``, ``date``) are computed on demand.
    """

    __slots__ = ()
    __annotations__ = {f.name: f.type for f in RECORD_FIELDS}

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
    def synthetic_type(self) -> str | None:
        """``bot`` (a crawler) or ``test`` (a probe or health check), from the ``User-Agent``; None for the rest."""
        return parse_user_agent(self.user_agent).synthetic

    @property
    def language(self) -> str | None:
        """The client's preferred language: the first tag of ``Accept-Language``."""
        return first_language(self.accept_language)

    def as_dict(self) -> dict[str, Any]:
        """The record's fields plus its derived values, JSON-friendly except ``date``."""
        data = self._asdict()
        ua = self.ua
        data.update(
            date=self.date,
            url=self.url,
            url_args=self.url_args,
            language=self.language,
            ua_browser=ua.browser,
            ua_platform=ua.platform,
            ua_version=ua.version,
            synthetic_type=ua.synthetic,
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
"""The WSGI environ values a record is made of, in ``CapturedRequest.environ``.

``HTTP_AUTHORIZATION`` is deliberately not among them: only its presence is kept.
"""


class CapturedRequest(NamedTuple):
    """One finished request as plain, immutable data: what the background writer queues.

    The environ values are raw WSGI strings (latin-1 decoded bytes), exactly as the server gave them.
    """

    timestamp: float
    speed: float
    method: str
    route: str
    endpoint: str | None
    blueprint: str | None
    status: int
    response_size: int | None
    username: str | None
    track_var: dict[str, Any] | None
    view_args: dict[str, Any] | None
    exception: str | None
    trace_id: str | None
    span_id: str | None
    authorization: bool
    secrets: tuple[tuple[str, str], ...]
    """(name, value) of the secret URL variables (``TRACK_USAGE_REDACT_VIEW_ARGS``), redacted in the record."""
    size: int
    """Bytes this value holds, measured from its contents: what the writer's byte bound counts."""
    environ: tuple[str | None, ...]
    """The raw WSGI environ values of ``ENVIRON_KEYS``, in that order (one field: copying them out of
    the environ is one C call, and so is carrying them)."""
    headers: dict[str, list[str]] | None
    """The captured header attributes (``TRACK_USAGE_OTEL_LOGS_HEADERS``), sanitised but not yet
    anonymised; None when none are asked for."""


def build_record(context: RecordContext, captured: CapturedRequest) -> UsageRecord:
    """The record of a captured request, decoded, anonymised and redacted.

    Runs wherever the record is first needed: on the background writer's thread for queued
    requests, so decoding, anonymisation and GeoIP lookups cost the request nothing.
    """
    (
        timestamp,
        speed,
        method,
        route,
        endpoint,
        blueprint,
        status,
        response_size,
        username,
        track_var,
        view_args,
        exception,
        trace_id,
        span_id,
        authorization,
        secrets,
        _size,
        environ,
        headers,
    ) = captured
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
    ) = environ
    if headers and context.anonymizer is not None:
        # As on the span: forwarding headers, and any naming the client's raw address (the raw values here).
        headers = _anonymized_headers(headers, context.anonymizer, remote_addr, xforwardedfor)
    if not "".join(filter(None, environ)).isascii():
        # The client's text, decoded from WSGI's latin-1 as the UTF-8 it sent (only when one is not ASCII).
        http_host, script_name, path_info, query_string, xforwardedfor, user_agent, accept_language = map(
            _wsgi_text, (http_host, script_name, path_info, query_string, xforwardedfor, user_agent, accept_language)
        )
    # Locate first, then anonymize: the country is right, and the address is not kept.
    ip_info = context.geoip.lookup(remote_addr) if context.geoip is not None else None
    if context.anonymizer is not None:
        remote_addr = context.anonymizer.address(remote_addr)
        xforwardedfor = context.anonymizer.chain(xforwardedfor)
    scheme = scheme or "http"
    query_string = query_string or ""
    if query_string and context.redactor is not None:
        # Before anything derives from it: url, url_args and every row, export and callable storage.
        query_string = context.redactor.query(query_string)
    # As werkzeug's Request.path: decoded, exactly one leading slash.
    path = "/" + (path_info or "").lstrip("/")
    view_args = view_args or {}
    if secrets:  # before the url and every export derive from them
        path, view_args = _without_secrets(secrets, path, view_args)
    return _new_record(
        UsageRecord,
        (
            timestamp,
            speed,
            method,
            scheme,
            http_host or _server_host(scheme, server_name, server_port),
            script_name or "",
            path,
            query_string,
            route,
            endpoint,
            blueprint,
            view_args,
            status,
            None if content_length is None else _content_length(content_length),
            response_size,
            remote_addr,
            xforwardedfor,
            user_agent,
            accept_language,
            authorization,
            username,
            context.server_name,
            protocol or "",
            track_var or {},
            exception,
            trace_id,
            span_id,
            ip_info,
            headers,
        ),
    )


_new_record = tuple.__new__  # the record from a ready tuple of its fields, in one C call


def _anonymized_headers(
    headers: dict[str, list[str]], anonymizer: Anonymizer, remote_addr: str | None, xforwardedfor: str | None
) -> dict[str, list[str]]:
    """The header attributes with client addresses anonymised exactly as the span's are (``otel/extras.py``)."""
    raw = {"REMOTE_ADDR": remote_addr, "HTTP_X_FORWARDED_FOR": xforwardedfor}
    fixes = scrub_span_attributes(headers, raw, anonymizer, None)
    return {**headers, **fixes} if fixes else headers


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


def _wsgi_text(value: str | None) -> str | None:
    """A WSGI environ string (bytes decoded as latin-1) as the UTF-8 text the client sent."""
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # not a real WSGI string; keep it as it is
        return value
