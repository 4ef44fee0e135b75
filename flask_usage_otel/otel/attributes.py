"""The attributes of spans, OTel metrics and log records: one builder, on the semantic conventions.

Every attribute name comes from ``opentelemetry-semconv`` (installed with the SDK): its stable
modules, and its incubating ones for the few names the conventions still call experimental.
Every value comes from one function here, so a request's span, its ``http.server.*``
measurements and its ``flask_usage.request`` log record agree on every attribute they share
(``tests/otel/test_attributes_agree.py`` sends the same requests through all three).

Spans and metrics build from the request (the span's route and connection attributes are
cached per route and per (Host, scheme, protocol) by the sink); log records from the
finished ``UsageRecord``. Both go through :func:`endpoint_attributes`,
:func:`connection_attributes`, :func:`add_request_attributes` and :func:`error_type`.

This module imports ``opentelemetry.semconv``, so only code that runs with OpenTelemetry in
use imports it: the sink module (itself loaded when a sink is created) and the log record
builder. ``import flask_usage_otel.otel`` does not.
"""

from __future__ import annotations

import json
import traceback
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from opentelemetry.semconv.attributes.client_attributes import CLIENT_ADDRESS
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_METHOD_ORIGINAL,
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE,
)
from opentelemetry.semconv.attributes.network_attributes import NETWORK_PROTOCOL_VERSION
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_FULL, URL_PATH, URL_QUERY, URL_SCHEME
from opentelemetry.semconv.attributes.user_agent_attributes import USER_AGENT_ORIGINAL
from werkzeug.urls import iri_to_uri

from ..internals import incubating_name
from ..privacy import scrub_span_attributes
from ..record import OTHER, STANDARD_METHODS
from ..request_text import first_language

if TYPE_CHECKING:
    from ..capture import RequestState
    from ..record import UsageRecord

# Not stable in the conventions yet: from semconv's incubating modules, checked in internals.py.
ENDUSER_ID = incubating_name("ENDUSER_ID")
HTTP_REQUEST_BODY_SIZE = incubating_name("HTTP_REQUEST_BODY_SIZE")
HTTP_RESPONSE_BODY_SIZE = incubating_name("HTTP_RESPONSE_BODY_SIZE")
USER_AGENT_NAME = incubating_name("USER_AGENT_NAME")
USER_AGENT_SYNTHETIC_TYPE = incubating_name("USER_AGENT_SYNTHETIC_TYPE")
USER_AGENT_VERSION = incubating_name("USER_AGENT_VERSION")

# -- names the conventions do not give (in the lowest opentelemetry-semconv the SDK floor installs) --

USER_AGENT_OS_NAME = "user_agent.os.name"
"""Incubating in the conventions, but absent from the opentelemetry-semconv of SDK 1.25 to 1.27."""
FLASK_ENDPOINT = "flask.endpoint"
FLASK_BLUEPRINT = "flask.blueprint"
"""Flask's own: the conventions have no framework attributes."""
FLASK_USAGE = "flask_usage."
"""The prefix of the log record's fields that no convention names."""
SERVER_EXCEPTION_EVENT = "http.server.request.exception"
"""The conventions' HTTP server exception event (development status, so absent from opentelemetry-semconv)."""
TIME_TO_FIRST_BYTE = "flask_usage.server.time_to_first_byte"
"""Seconds to the first byte of the response body. The conventions define no such metric, and a
name of theirs (``http.server.*``) is theirs to define: ours carries our prefix."""

# -- values -------------------------------------------------------------------------------

NETWORK_PROTOCOL_VERSIONS = {"HTTP/1.0": "1.0", "HTTP/1.1": "1.1", "HTTP/2": "2", "HTTP/2.0": "2", "HTTP/3": "3"}
"""``SERVER_PROTOCOL`` -> ``network.protocol.version``. Anything else is ``_OTHER``: servers
pass the client's spelling through (Werkzeug accepts any ``HTTP/1.x``), and an attribute
with unbounded values would make one metric series per spelling."""
SCHEMES = {"http": "http", "https": "https"}
DEFAULT_PORTS = {"http": 80, "https": 443}


def protocol_version(protocol: str | None) -> str | None:
    """``network.protocol.version``: ``"1.1"`` for ``"HTTP/1.1"``, ``"2"`` for ``"HTTP/2.0"``,
    ``_OTHER`` for a spelling we do not know, None when the server gave none."""
    if not protocol:
        return None
    return NETWORK_PROTOCOL_VERSIONS.get(protocol, OTHER)


def url_scheme(scheme: str | None) -> str:
    """``url.scheme``: ``http`` or ``https``, else ``_OTHER`` (a proxy header can make ``wsgi.url_scheme`` anything)."""
    return SCHEMES.get(scheme or "http", OTHER)


def error_type(exception: str | None, status: int) -> str | None:
    """``error.type``: the class name of the exception nothing handled, else the status code of a 5xx."""
    return exception or (str(status) if status >= 500 else None)


def split_host(
    host: str | None, scheme: str, server_name: str | None = None, server_port: str | None = None
) -> tuple[str | None, int | None]:
    """``server.address`` and ``server.port`` from the Host header, else the WSGI server's name and port."""
    if not host:
        port = int(server_port) if server_port and server_port.isdigit() else None
        return server_name or None, port
    if host.startswith("["):  # [IPv6]:port
        address, _, rest = host[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        address, _, port_text = host.rpartition(":") if ":" in host else (host, "", "")
    if port_text.isdigit():
        return address, int(port_text)
    return address, DEFAULT_PORTS.get(scheme)


def environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


# -- the attributes every request of one kind shares ------------------------------------------


def endpoint_attributes(label: str, endpoint: str | None, route: str, blueprint: str | None) -> dict[str, Any]:
    """``http.request.method`` (``label``: the method, or ``_OTHER``), and the matched rule's
    ``http.route``, ``flask.endpoint`` and ``flask.blueprint``."""
    attributes: dict[str, Any] = {HTTP_REQUEST_METHOD: label}
    if endpoint is None:
        # No URL rule matched (404, 405, redirect): never the raw path, which is unbounded.
        return attributes
    attributes[HTTP_ROUTE] = route
    attributes[FLASK_ENDPOINT] = endpoint
    if blueprint is not None:
        attributes[FLASK_BLUEPRINT] = blueprint
    return attributes


def connection_attributes(
    host: str | None,
    scheme: str | None,
    protocol: str | None,
    server_name: str | None = None,
    server_port: str | None = None,
) -> dict[str, Any]:
    """``url.scheme``, ``server.address``, ``server.port`` and ``network.protocol.version``.

    A function of the Host header, ``wsgi.url_scheme`` and ``SERVER_PROTOCOL`` (and, with no
    Host header, of ``SERVER_NAME`` and ``SERVER_PORT``).
    """
    normalised = url_scheme(scheme)
    attributes: dict[str, Any] = {URL_SCHEME: normalised}
    address, port = split_host(host, normalised, server_name, server_port)
    if address is not None:
        attributes[SERVER_ADDRESS] = address
        if port is not None:
            attributes[SERVER_PORT] = port
    version = protocol_version(protocol)
    if version is not None:
        attributes[NETWORK_PROTOCOL_VERSION] = version
    return attributes


class EndpointSpan:
    """A span name and the attributes every request of one kind shares: computed once.

    Per (method, endpoint, route), and per that and the request's (Host, scheme, protocol).
    """

    __slots__ = ("attributes", "name")

    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        self.name = name
        self.attributes = attributes


def endpoint_span(state: RequestState) -> EndpointSpan:
    label = state.method_label
    name_method = "HTTP" if label == OTHER else label
    attributes = endpoint_attributes(label, state.endpoint, state.route, state.blueprint)
    return EndpointSpan(name_method if state.endpoint is None else f"{name_method} {state.route}", attributes)


# -- each request's own ---------------------------------------------------------------------------


def add_request_attributes(
    attributes: dict[str, Any],
    method: str,
    label: str,
    path: str,
    query: str | None,
    client: str | None,
    agent: str | None,
    synthetic: str | None,
) -> dict[str, Any]:
    """Add the request's ``url.path``, ``url.query``, ``http.request.method_original``,
    ``client.address``, ``user_agent.original`` and ``user_agent.synthetic.type`` to
    ``attributes`` (values already redacted and anonymized), and return it.

    ``method`` is the method as the client sent it: when it differs from ``label`` (``_OTHER``, or
    ``get`` sent for ``GET``: Flask treats methods case-insensitively), the conventions require
    it as ``http.request.method_original``.
    """
    attributes[URL_PATH] = path
    if query:
        attributes[URL_QUERY] = query
    if method != label:
        attributes[HTTP_REQUEST_METHOD_ORIGINAL] = method
    if client:
        attributes[CLIENT_ADDRESS] = client
    if agent:
        attributes[USER_AGENT_ORIGINAL] = agent
        if synthetic is not None:
            attributes[USER_AGENT_SYNTHETIC_TYPE] = synthetic
    return attributes


def duration_attributes(
    label: str, route: str | None, scheme: str, status: int, error: str | None, protocol: str | None
) -> dict[str, Any]:
    """The ``http.server.request.duration`` attributes the conventions require or recommend
    (``server.*`` are opt-in: one series per Host a client sends would be unbounded)."""
    attributes: dict[str, Any] = {HTTP_REQUEST_METHOD: label, URL_SCHEME: scheme, HTTP_RESPONSE_STATUS_CODE: status}
    if route is not None:
        attributes[HTTP_ROUTE] = route
    if error is not None:
        attributes[ERROR_TYPE] = error
    version = protocol_version(protocol)
    if version is not None:
        attributes[NETWORK_PROTOCOL_VERSION] = version
    return attributes


def active_attributes(label: str, scheme: str) -> dict[str, str]:
    """The ``http.server.active_requests`` attributes: method and scheme, known at the start."""
    return {HTTP_REQUEST_METHOD: label, URL_SCHEME: scheme}


def scrub_foreign(state: RequestState, span: Any, environ: dict[str, Any], attributes: dict[str, Any]) -> None:
    """Add to ``attributes`` the anonymized or redacted values of what another instrumentation
    put on the span (its ``net.peer.ip``, ``http.target``...), so no raw address or secret stays."""
    context = state.context
    if context.anonymizer is None and context.redactor is None and not state.secrets:
        return
    # SDK spans expose their attributes; a span that does not cannot be read, only written.
    found = getattr(span, "attributes", None)
    scrubbed = scrub_span_attributes(found, environ, context.anonymizer, context.redactor, state.secrets)
    for key, value in scrubbed.items():
        attributes.setdefault(key, value)


# -- the log record ---------------------------------------------------------------------------------

# Accept-Language values repeat: parse each distinct one once (as the SQL row builder does).
_language = lru_cache(maxsize=1024)(first_language)


def record_attributes(record: UsageRecord, known_methods: frozenset[str] = STANDARD_METHODS) -> dict[str, Any]:
    """A ``UsageRecord`` as log record attributes: the span's (same names, same values), the
    response body sizes, the parsed user agent, ``url.full``, and ``flask_usage.*`` for the
    fields no convention names. ``known_methods``: ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``.
    The span's captured headers (``http.request.header.*``, ``http.response.header.*``) when the
    record carries them (``TRACK_USAGE_OTEL_LOGS_HEADERS``).

    The record keeps no WSGI server name: a request without a Host header has its
    ``record.host`` made of ``SERVER_NAME`` and ``SERVER_PORT`` already. Mappings
    (``view_args``, ``track_var``, ``ip_info``) are JSON text, as in the SQL table, so every
    attribute is a scalar a column store can keep in a string map.
    """
    method = record.method  # as Flask gives it, upper-cased: a lower-case original is not kept
    label = method if method in known_methods else OTHER
    status = record.status
    attributes = endpoint_attributes(label, record.endpoint, record.route, record.blueprint)
    attributes.update(connection_attributes(record.host, record.scheme, record.protocol))
    add_request_attributes(
        attributes,
        method,
        label,
        record.script_root + record.path,
        record.query_string,
        record.remote_addr,
        record.user_agent,
        record.synthetic_type,
    )
    attributes[HTTP_RESPONSE_STATUS_CODE] = status
    error = error_type(record.exception, status)
    if error is not None:
        attributes[ERROR_TYPE] = error
    # OTel wants an RFC 3986 URI; record.url is request.url, an IRI (FTU stored that).
    attributes[URL_FULL] = iri_to_uri(record.url)
    optional = {
        HTTP_REQUEST_BODY_SIZE: record.content_length,
        HTTP_RESPONSE_BODY_SIZE: record.response_size,
        ENDUSER_ID: record.username,
        FLASK_USAGE + "xforwardedfor": record.xforwardedfor,
        FLASK_USAGE + "language": _language(record.accept_language),
    }
    attributes.update((k, v) for k, v in optional.items() if v is not None)
    if record.user_agent:
        ua = record.ua
        for key, value in (
            (USER_AGENT_NAME, ua.browser),
            (USER_AGENT_VERSION, ua.version),
            (USER_AGENT_OS_NAME, ua.platform),
        ):
            if value:
                attributes[key] = value
    attributes[FLASK_USAGE + "route"] = record.route
    attributes[FLASK_USAGE + "speed"] = record.speed
    attributes[FLASK_USAGE + "server_name"] = record.server_name
    attributes[FLASK_USAGE + "authorization"] = record.authorization
    for key, value in (("view_args", record.view_args), ("track_var", record.track_var), ("ip_info", record.ip_info)):
        if value:
            attributes[FLASK_USAGE + key] = json.dumps(value, default=str)
    headers = record.headers  # the span's http.*.header.* (TRACK_USAGE_OTEL_LOGS_HEADERS), sanitised and anonymised
    if headers:
        attributes.update(headers)
    return attributes


# -- the exception event ----------------------------------------------------------------------------


def exception_attributes(error: BaseException, label: str, route: str | None, status: int) -> dict[str, Any]:
    """The ``http.server.request.exception`` log event's attributes: ``exception.*`` (the type
    named as the SDK's ``record_exception`` names it), and the span's method, route and status."""
    kind = type(error)
    module = kind.__module__
    attributes = {
        EXCEPTION_TYPE: f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__,
        EXCEPTION_MESSAGE: str(error),
        EXCEPTION_STACKTRACE: "".join(traceback.format_exception(kind, error, error.__traceback__)),
        HTTP_REQUEST_METHOD: label,
        HTTP_RESPONSE_STATUS_CODE: status,
    }
    if route is not None:
        attributes[HTTP_ROUTE] = route
    return attributes
