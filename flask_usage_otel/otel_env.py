"""OpenTelemetry's own environment variables, read at ``init_app`` as opentelemetry-instrumentation-flask reads them.

A team moving from the instrumentor keeps its settings: they mean here what they mean there.

- ``OTEL_PYTHON_FLASK_EXCLUDED_URLS``, else ``OTEL_PYTHON_EXCLUDED_URLS``: comma-separated regular
  expressions, searched (not fully matched) in the request's full URL (``request.url``), as
  ``opentelemetry.util.http.ExcludeList`` does; a match leaves the request untracked.
- ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST`` / ``..._SERVER_RESPONSE``:
  comma-separated regular expressions fully matching (case-insensitively) the header names put on
  the server span; ``..._SANITIZE_FIELDS``: those searched in a header's name have their value
  ``[REDACTED]``.
- ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``: the methods ``http.request.method`` (and the
  ``method`` label) may hold, replacing the default set; any other is ``_OTHER``.
- ``OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN``: ``logs`` or ``logs/dup`` emits an unhandled exception
  as the ``http.server.request.exception`` log event (``logs`` only: no span event any more).

This module imports only the standard library: apps without the ``otel`` extra read it too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .record import STANDARD_METHODS

EXCLUDED_URLS = ("OTEL_PYTHON_FLASK_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS")
REQUEST_HEADERS = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"
RESPONSE_HEADERS = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE"
SANITIZE_FIELDS = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"
KNOWN_METHODS = "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS"
EXCEPTION_SIGNAL = "OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN"


Error = Callable[[str, str], Exception]
"""Makes the error raised for a variable, from its name and what is wrong (``config.ConfigError``)."""


@dataclass(frozen=True, slots=True)
class OtelEnvironment:
    """What the OpenTelemetry variables asked for when ``init_app`` ran."""

    excluded_urls: re.Pattern[str] | None = None
    """Searched in ``request.url``; None when neither variable names a URL (then nothing is searched)."""
    request_headers: re.Pattern[str] | None = None
    """Fully matches (ignoring case) the names of the request headers put on spans."""
    request_header_names: tuple[str, ...] | None = None
    """The same, when every pattern is a plain header name: looked up, not matched against every header."""
    response_headers: re.Pattern[str] | None = None
    sanitize_fields: re.Pattern[str] | None = None
    """Searched (ignoring case) in a captured header's name: a match is stored as ``[REDACTED]``."""
    known_methods: frozenset[str] = STANDARD_METHODS
    exception_signal: str = ""
    """``""`` (a span event, the default), ``"logs"`` (a log event only) or ``"logs/dup"`` (both)."""

    @property
    def exception_logs(self) -> bool:
        return self.exception_signal in ("logs", "logs/dup")

    @property
    def exception_span_event(self) -> bool:
        return self.exception_signal != "logs"


NO_OTEL_VARIABLES = OtelEnvironment()
"""None of the variables set."""

_PLAIN_HEADER = re.compile(r"[A-Za-z0-9-]+")


def read_otel_environment(error: Error = ValueError, environ: Mapping[str, str] | None = None) -> OtelEnvironment:
    """The variables' values (in ``environ``, default ``os.environ``), validated and compiled.

    :raises: ``error(variable, message)`` when a regular expression does not compile.
    """
    if environ is None:
        environ = os.environ
    # The instrumentor's own precedence: the Flask variable, even empty, wins over the generic one.
    name = EXCLUDED_URLS[0] if EXCLUDED_URLS[0] in environ else EXCLUDED_URLS[1]
    excluded = _items(environ.get(name, ""))
    request_headers = _items(environ.get(REQUEST_HEADERS, ""))
    plain = all(_PLAIN_HEADER.fullmatch(p) for p in request_headers)
    return OtelEnvironment(
        excluded_urls=_compile(error, name, excluded, 0),
        request_headers=_compile(error, REQUEST_HEADERS, request_headers, re.IGNORECASE),
        request_header_names=tuple(p.lower() for p in request_headers) if request_headers and plain else None,
        response_headers=_compile(error, RESPONSE_HEADERS, _items(environ.get(RESPONSE_HEADERS, "")), re.IGNORECASE),
        sanitize_fields=_compile(error, SANITIZE_FIELDS, _items(environ.get(SANITIZE_FIELDS, "")), re.IGNORECASE),
        known_methods=_known_methods(environ.get(KNOWN_METHODS, "")),
        exception_signal=_exception_signal(environ.get(EXCEPTION_SIGNAL, "")),
    )


def _items(value: str) -> list[str]:
    # opentelemetry.util.http's parsing: split on commas and strip, empty items kept (so "a," also
    # matches the empty string: every URL is excluded, every header sanitised, as with the instrumentor).
    return [item.strip() for item in value.split(",")] if value else []


def _compile(error: Error, variable: str, patterns: list[str], flags: int) -> re.Pattern[str] | None:
    if not patterns:
        return None
    try:
        return re.compile("|".join(patterns), flags)  # joined as the instrumentor joins them: no groups
    except re.error as exc:
        raise error(variable, f"{','.join(patterns)!r} is not a valid regular expression: {exc}") from None


def _known_methods(value: str) -> frozenset[str]:
    methods = frozenset(m.strip() for m in value.split(",") if m.strip())
    # An empty variable counts as unset, as for every OpenTelemetry variable.
    return methods or STANDARD_METHODS


def _exception_signal(value: str) -> str:
    choices = {v.strip().lower() for v in value.split(",")}
    if "logs/dup" in choices:
        return "logs/dup"
    return "logs" if "logs" in choices else ""
