"""Which requests are tracked: views, blueprints and path patterns.

Precedence, most specific first: a view's own ``include``/``exclude`` beats its
blueprint's (the innermost blueprint first, for nested ones), which beats the
mode (``TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS``): in ``"exclude"`` mode what is
not excluded is tracked, in ``"include"`` mode only what is included.

The decision for an endpoint depends on nothing else, so it is computed the
first time the endpoint is seen and cached: the request path does one dict
lookup, plus one regex match only when path patterns are configured.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

ViewTarget = Callable[..., Any] | str


class RequestFilter:
    """Include/exclude rules for one ``TrackUsage`` object, shared by all its apps."""

    def __init__(self) -> None:
        self._views: dict[Any, bool] = {}  # view function or endpoint name -> tracked?
        self._blueprints: dict[str, bool] = {}  # blueprint name -> tracked?
        # Blueprint object -> tracked?: one blueprint may be registered under several names
        # (register_blueprint(bp, name="api_v2")), and the object covers every one of them.
        self._blueprint_objects: dict[Any, bool] = {}
        self._never: set[str] = set()  # endpoints that are never tracked (the metrics view)

    def set_view(self, view: ViewTarget, tracked: bool) -> None:
        """Include (``tracked=True``) or exclude a view function or an endpoint name."""
        self._views[_view_key(view)] = tracked

    def set_blueprint(self, blueprint: Any, tracked: bool) -> None:
        """Include or exclude every view of a blueprint.

        :param blueprint: a ``Blueprint`` object (every name it is registered under, on every
            app) or a registration name (only that registration).
        """
        if isinstance(blueprint, str):
            self._blueprints[blueprint] = tracked
        else:
            self._blueprint_objects[blueprint] = tracked

    def forget_view(self, view: ViewTarget) -> None:
        """Drop a view's own include/exclude rule (its blueprint's and the mode apply again)."""
        self._views.pop(_view_key(view), None)

    def views_set(self, tracked: bool) -> list[Any]:
        """The view functions (and view classes) given to ``set_view`` with ``tracked``; names left out."""
        return [key for key, value in self._views.items() if value is tracked and not isinstance(key, str)]

    def never_track(self, endpoint: str) -> None:
        self._never.add(endpoint)

    def rule_filter(self, app: Any, settings: Any) -> Callable[[Any], bool]:
        """Whether a URL rule of ``app`` is tracked: its endpoint, and its path when the rule has no variables.

        The function holds the app's dicts, not the app, so it does not keep the app alive.
        """
        views, blueprints, mode, pattern = (
            app.view_functions,
            app.blueprints,
            settings.include_or_exclude_views,
            settings.exclude_paths_re,
        )

        def tracked(rule: Any) -> bool:
            if not self.decide(rule.endpoint, views.get(rule.endpoint), mode, blueprints):
                return False
            return bool(rule.arguments) or not path_is_excluded(pattern, rule.rule)

        return tracked

    def decide(
        self,
        endpoint: str | None,
        view: Callable[..., Any] | None,
        mode: str,
        registered: Mapping[str, Any] | None = None,
    ) -> bool:
        """Whether requests to ``endpoint`` (None: no URL rule matched) are tracked.

        :param view: the endpoint's view function, from ``app.view_functions``.
        :param mode: ``"include"`` or ``"exclude"``.
        :param registered: the app's blueprints by registration name (``app.blueprints``),
            to find which blueprint object a registration name belongs to.
        """
        if endpoint in self._never:
            return False
        for key in (_view_key(view) if view is not None else None, endpoint):
            if key is not None and key in self._views:
                return self._views[key]
        objects = self._blueprint_objects
        for blueprint in _blueprints_of(endpoint):
            if blueprint in self._blueprints:
                return self._blueprints[blueprint]
            if objects and registered is not None:
                obj = registered.get(blueprint)
                if obj is not None and obj in objects:
                    return objects[obj]
        return mode == "exclude"


def path_is_excluded(pattern: re.Pattern[str] | None, path: str) -> bool:
    """Whether the request path fully matches one of ``TRACK_USAGE_EXCLUDE_PATHS``."""
    return pattern is not None and pattern.fullmatch(path) is not None


def url_is_excluded(pattern: re.Pattern[str], req: Any) -> bool:
    """Whether ``OTEL_PYTHON_FLASK_EXCLUDED_URLS`` (or ``OTEL_PYTHON_EXCLUDED_URLS``) excludes the request.

    The instrumentor's matching (``opentelemetry.util.http.ExcludeList.url_disabled``): the
    patterns are searched anywhere in the full URL, ``request.url``, scheme, host and query included.
    Called only when a variable is set: then it costs building ``request.url`` and one search.
    """
    return pattern.search(req.url) is not None


def blueprint_of(endpoint: str | None) -> str | None:
    """The (innermost, dotted) blueprint name of an endpoint, as ``request.blueprint`` gives it."""
    if endpoint is None or "." not in endpoint:
        return None
    return endpoint.rpartition(".")[0]


def _blueprints_of(endpoint: str | None) -> list[str]:
    """The endpoint's blueprint and its parents, innermost first (``request.blueprints``).

    A nested blueprint is registered as ``parent.child`` but its object is named
    ``child``, so each level is offered under both names.
    """
    blueprint = blueprint_of(endpoint)
    if blueprint is None:
        return []
    parts = blueprint.split(".")
    names: list[str] = []
    for i in range(len(parts), 0, -1):
        names.append(".".join(parts[:i]))
        if i > 1:
            names.append(parts[i - 1])
    return names


def _view_key(view: ViewTarget) -> Any:
    # Class-based views: as_view() returns a new function each call, but it
    # carries view_class, so @t.exclude on the class works as well.
    if isinstance(view, str):
        return view
    return getattr(view, "view_class", view)
