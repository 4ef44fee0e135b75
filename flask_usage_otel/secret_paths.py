"""Secret URL variables as the client spelled them: what each place holding the path must redact.

A view argument is the converted value (``UUID(...)``, ``7``), not the text the client sent
(``ABCDEF01-...``, ``007``): redacting ``str(value)`` misses the request's own spelling. A copy
of the app's rules whose converters keep the text they matched gives that spelling back, for a
matched request and for one that matched no rule while carrying a secret route's path (a 405 on
a GET-only route, the 308 to the trailing slash). The percent-encoded spellings of that text
are found by :func:`flask_usage_otel.privacy.redact_secrets`.

Decided once per endpoint: only an endpoint with a secret variable costs a match of the path
(a few microseconds); the others cost nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, Map, MapAdapter, Rule

from .privacy import secret_arguments

Secrets = tuple[tuple[str, str], ...]
"""(name, value) of a request's secret URL variables, the value as the client spelled it (decoded)."""

_SLASHES = re.compile("/{2,}")


def _same(value: str) -> str:
    return value


class _TextRule(Rule):
    """A copy of one of the app's rules: it matches what the original matches, without method or
    trailing-slash conditions, and gives each variable's text as sent."""

    def get_converter(
        self, variable_name: str, converter_name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> BaseConverter:
        converter = super().get_converter(variable_name, converter_name, args, kwargs)
        converter.to_python = _same  # type: ignore[method-assign]  # this copy keeps the text it matched
        return converter


class SecretPaths:
    """Finds the secret URL variables of a request path among some of the app's rules."""

    def __init__(self, rules: Iterable[Rule], names: frozenset[str], converters: Mapping[str, Any]) -> None:
        copies = [_TextRule(rule.rule, endpoint=rule.endpoint) for rule in rules if not rule.build_only]
        self._names = names
        self._adapter: MapAdapter = Map(
            copies, converters=dict(converters), strict_slashes=False, merge_slashes=False
        ).bind("localhost")

    def values(self, path: str, view_args: Mapping[str, Any] | None) -> Secrets:
        """(name, text) of the secret variables in ``path`` (``request.path``, decoded).

        Read from the path, not the view arguments: the app's URL value preprocessors run before
        the request is admitted and may have popped them. ``view_args`` serve only when none of
        these rules matches the path.
        """
        values = self._match(path)
        if values is None and "//" in path:  # the app's map merges slashes (and redirects to the merged path)
            values = self._match(_SLASHES.sub("/", path))
        if values is None:  # not one of these rules after all: the converted values are all there is
            values = view_args or {}
        return _present((name, value) for name, value in values.items() if name.lower() in self._names)

    def _match(self, path: str) -> Mapping[str, Any] | None:
        try:
            return self._adapter.match(path, method=None)[1]
        except HTTPException:
            return None


def _present(pairs: Iterable[tuple[str, Any]]) -> Secrets:
    return tuple((name, text) for name, value in pairs if value is not None and (text := str(value)))


def secret_paths(app: Any, endpoint: str | None, names: frozenset[str]) -> SecretPaths | None:
    """What finds the secrets of ``endpoint``'s requests (of unmatched requests for None); None when
    there are none to find."""
    url_map = app.url_map
    try:
        rules = list(url_map.iter_rules(endpoint) if endpoint is not None else url_map.iter_rules())
    except KeyError:  # an endpoint with no rule of the app's map
        return None
    secret_rules = [rule for rule in rules if secret_arguments(rule.arguments, names)]
    if not secret_rules:
        return None
    return SecretPaths(secret_rules, names, url_map.converters)
