"""Span and metric attribute values by the HTTP semantic conventions, from a WSGI environ.

Pure functions of the request's values; the sink caches what they compute per endpoint or host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..privacy import scrub_span_attributes
from ..record import OTHER

if TYPE_CHECKING:
    from ..capture import RequestState

NETWORK_PROTOCOL_VERSIONS = {"HTTP/1.0": "1.0", "HTTP/1.1": "1.1", "HTTP/2": "2", "HTTP/2.0": "2", "HTTP/3": "3"}
"""``SERVER_PROTOCOL`` -> ``network.protocol.version``. Anything else is ``_OTHER``: servers
pass the client's spelling through (Werkzeug accepts any ``HTTP/1.x``), and an attribute
with unbounded values would make one metric series per spelling."""
SCHEMES = {"http": "http", "https": "https"}
DEFAULT_PORTS = {"http": 80, "https": 443}


class EndpointSpan:
    """A span name and the attributes every request of one kind shares: computed once.

    Per (method, endpoint, route), and per that and the request's (Host, scheme, protocol).
    """

    __slots__ = ("attributes", "name")

    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        self.name = name
        self.attributes = attributes


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


def protocol_version(protocol: str | None) -> str | None:
    """``network.protocol.version``: ``"1.1"`` for ``"HTTP/1.1"``, ``_OTHER`` for a spelling we do not know."""
    if not protocol:
        return None
    return NETWORK_PROTOCOL_VERSIONS.get(protocol, OTHER)


def url_scheme(environ: dict[str, Any]) -> str:
    """``url.scheme``: ``http`` or ``https``; a proxy header can make ``wsgi.url_scheme`` anything."""
    return SCHEMES.get(environ.get("wsgi.url_scheme", "http"), OTHER)


def environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def endpoint_span(state: RequestState) -> EndpointSpan:
    method = state.method_label
    name_method = "HTTP" if method == OTHER else method
    attributes: dict[str, Any] = {"http.request.method": method}
    if state.endpoint is None:
        # No URL rule matched (404, 405, redirect): never the raw path, which is unbounded.
        return EndpointSpan(name_method, attributes)
    attributes["http.route"] = state.route
    attributes["flask.endpoint"] = state.endpoint
    if state.blueprint is not None:
        attributes["flask.blueprint"] = state.blueprint
    return EndpointSpan(f"{name_method} {state.route}", attributes)


def connection_attributes(host: str | None, environ: dict[str, Any]) -> dict[str, Any]:
    """``url.scheme``, ``server.address``, ``server.port`` and ``network.protocol.version``.

    A function of the Host header, ``wsgi.url_scheme`` and ``SERVER_PROTOCOL`` (and, with no
    Host header, of ``SERVER_NAME`` and ``SERVER_PORT``).
    """
    scheme = url_scheme(environ)
    attributes: dict[str, Any] = {"url.scheme": scheme}
    address, port = split_host(host, scheme, environ)
    if address is not None:
        attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
    version = protocol_version(environ.get("SERVER_PROTOCOL"))
    if version is not None:
        attributes["network.protocol.version"] = version
    return attributes


def split_host(host: str | None, scheme: str, environ: dict[str, Any]) -> tuple[str | None, int | None]:
    """``server.address`` and ``server.port`` from the Host header, else the WSGI server's name."""
    if not host:
        name = environ.get("SERVER_NAME")
        port = environ.get("SERVER_PORT")
        return name or None, int(port) if port and port.isdigit() else None
    if host.startswith("["):  # [IPv6]:port
        address, _, rest = host[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        address, _, port_text = host.rpartition(":") if ":" in host else (host, "", "")
    if port_text.isdigit():
        return address, int(port_text)
    return address, DEFAULT_PORTS.get(scheme)
