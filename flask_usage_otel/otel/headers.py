"""HTTP headers on the server span, chosen by OpenTelemetry's variables (``otel_env.py``).

The semantics of opentelemetry-util-http (which comes with the instrumentor, not the SDK, so
it is not a dependency), reimplemented and checked against it in ``tests/otel/test_otel_headers.py``:

- a header is captured when one of ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST``'s
  (``..._RESPONSE``'s) patterns fully matches its name, ignoring case;
- its value is ``[REDACTED]`` when one of ``..._SANITIZE_FIELDS``' patterns is found in its name,
  ignoring case, and always for ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and
  ``Set-Cookie``, whatever the variables say;
- the value is a list of one string: a request header as the WSGI server joined it, a response
  header's repeated values joined with ``,``.

One difference, on purpose: the attribute is named as the conventions say,
``http.request.header.<name>`` with the name lower-cased and its dashes kept
(``http.request.header.x-request-id``), where the instrumentor writes ``x_request_id``.
``Content-Type`` and ``Content-Length``, which WSGI keeps without the ``HTTP_`` prefix, are
request headers too (the instrumentor cannot capture them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_HEADER_TEMPLATE,
    HTTP_RESPONSE_HEADER_TEMPLATE,
)

if TYPE_CHECKING:
    from ..otel_env import OtelEnvironment

REDACTED = "[REDACTED]"
ALWAYS_REDACTED = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
"""Credentials: never stored as sent, even when a capture variable names them."""

_REQUEST = HTTP_REQUEST_HEADER_TEMPLATE + "."
_RESPONSE = HTTP_RESPONSE_HEADER_TEMPLATE + "."
_UNPREFIXED = {"CONTENT_TYPE": "content-type", "CONTENT_LENGTH": "content-length"}


def environ_key_of(name: str) -> str:
    """The WSGI environ key of a header name (``X-Request-Id`` -> ``HTTP_X_REQUEST_ID``)."""
    key = name.upper().replace("-", "_")
    return key if key in _UNPREFIXED else "HTTP_" + key


class HeaderCapture:
    """Which headers go on the span (and, with ``TRACK_USAGE_OTEL_LOGS_HEADERS``, on the log record),
    as attributes: built once per sink, and once per tracked app for log records, from the settings."""

    __slots__ = ("_names", "_request", "_response", "_sanitize", "captures_response")

    def __init__(self, env: OtelEnvironment) -> None:
        self._request = env.request_headers
        self._response = env.response_headers
        self._sanitize = env.sanitize_fields
        # Plain header names (the usual case): one environ lookup each, no pattern run per header.
        names = env.request_header_names
        self._names = tuple((environ_key_of(n), n) for n in names) if names is not None else None
        self.captures_response = env.response_headers is not None

    @staticmethod
    def wanted(env: OtelEnvironment) -> bool:
        return env.request_headers is not None or env.response_headers is not None

    def _value(self, name: str, value: str) -> str:
        if name in ALWAYS_REDACTED or (self._sanitize is not None and self._sanitize.search(name)):
            return REDACTED
        return value

    def request(self, environ: Mapping[str, Any]) -> dict[str, list[str]]:
        """``http.request.header.*`` of a request's environ."""
        attributes: dict[str, list[str]] = {}
        if self._names is not None:
            for key, name in self._names:
                value = environ.get(key)
                if value is not None:
                    attributes[_REQUEST + name] = [self._value(name, value)]
            return attributes
        pattern = self._request
        if pattern is None:
            return attributes
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                name = key[5:].replace("_", "-").lower()
            elif key in _UNPREFIXED:
                name = _UNPREFIXED[key]
            else:
                continue
            if pattern.fullmatch(name):
                attributes[_REQUEST + name] = [self._value(name, value)]
        return attributes

    def exchange(
        self, environ: Mapping[str, Any], response_headers: Iterable[tuple[str, str]] | None
    ) -> dict[str, list[str]] | None:
        """Both kinds of a finished request, for its record: the request's from its environ, the
        response's from the headers it started with (None when it never started); None when neither
        names a header."""
        attributes = self.request(environ)
        if response_headers is not None and self.captures_response:
            attributes.update(self.response(response_headers))
        return attributes or None

    def response(self, headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
        """``http.response.header.*`` of the headers the response starts with."""
        pattern = self._response
        if pattern is None:
            return {}
        joined: dict[str, str] = {}
        for key, value in headers:
            name = key.lower()
            joined[name] = joined[name] + "," + value if name in joined else value
        return {
            _RESPONSE + name: [self._value(name, value)] for name, value in joined.items() if pattern.fullmatch(name)
        }
