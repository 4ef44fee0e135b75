"""Flask-Track-Usage 2.0's private names that users' code copied, kept working and deprecated.

Flask-Track-Usage's own tests, and code written after them, read ``TrackUsage._include_views``
and ``_exclude_views`` (the sets of included and excluded view functions), set
``TrackUsage._type`` (the mode) after set-up, used ``SQLStorage._eng``, ``_get_raw`` and
``_get_usage``, and fixed the time of every stored record with ``TrackUsage(..., _fake_time=...)``.
They work as they did there; each use raises a :class:`LegacyNameWarning` that names the public
replacement.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
import weakref
from collections.abc import Iterator, MutableSet, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .config import ViewsModeError

if TYPE_CHECKING:
    from flask import Flask

    from .filters import RequestFilter
    from .lifecycle import RequestTracker

METRICS_ENDPOINT = "track_usage_metrics"
"""The endpoint of the ``/metrics`` view (never tracked, and no rule of the user's)."""


class LegacyNameWarning(FutureWarning):
    """A private name of Flask-Track-Usage 2.0 was used; it is deprecated: it works, and the message names
    what to use instead.

    A ``FutureWarning``, Python's category for deprecations meant for the app's developers, so it is
    shown by default without touching the warning filters (a ``DeprecationWarning`` is hidden outside
    ``__main__``), and ``-W error`` / ``-W ignore`` / ``PYTHONWARNINGS`` govern it as usual.
    """


def warn_legacy_name(name: str, instead: str) -> None:
    """Warn, at the line of the caller's caller, that ``name`` is a Flask-Track-Usage private name."""
    warnings.warn(
        f"{name} is a private name of Flask-Track-Usage 2.0, kept for old code; use {instead}",
        LegacyNameWarning,
        stacklevel=3,
    )


class ViewSet(MutableSet[Any]):
    """Flask-Track-Usage's ``_include_views`` (or ``_exclude_views``): the view functions that a rule
    includes (excludes), their own or their blueprint's, on the apps of the ``TrackUsage``.

    It reads the rules each time, so it follows ``include``, ``include_blueprint`` and views
    added later; ``add`` and ``discard`` set and drop a view's own rule.
    """

    def __init__(self, owner: LegacyTrackUsageNames, tracked: bool) -> None:
        self._owner = owner
        self._tracked = tracked

    def _members(self) -> set[Any]:
        owner, tracked = self._owner, self._tracked
        request_filter = owner._filter
        members = set(request_filter.views_set(tracked))
        mode = "include" if tracked else "exclude"  # where no rule applies, decide() answers the other way
        for app in owner._tracked_apps():
            for endpoint, view in list(app.view_functions.items()):
                if endpoint == METRICS_ENDPOINT:
                    continue
                if request_filter.decide(endpoint, view, mode, app.blueprints) is tracked:
                    members.add(view)
        return members

    def __contains__(self, view: object) -> bool:
        return view in self._members()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._members())

    def __len__(self) -> int:
        return len(self._members())

    def add(self, view: Any) -> None:
        self._owner._set_view(view, self._tracked)

    def discard(self, view: Any) -> None:
        self._owner._filter.forget_view(view)
        self._owner._forget_decisions()

    def __repr__(self) -> str:
        return f"ViewSet({self._members()!r})"


class LegacyTrackUsageNames:
    """``TrackUsage``'s Flask-Track-Usage private names (``TrackUsage`` provides what is declared here)."""

    _filter: RequestFilter
    _trackers: weakref.WeakKeyDictionary[Flask, RequestTracker]
    _lock: threading.Lock

    if TYPE_CHECKING:

        def _set_view(self, view: Any, tracked: bool) -> None: ...

        def _forget_decisions(self) -> None: ...

        def _tracker(self) -> RequestTracker: ...

    def _tracked_apps(self) -> list[Flask]:
        with self._lock:
            return list(self._trackers.keys())

    @property
    def _include_views(self) -> ViewSet:
        """The view functions tracked in ``include`` mode (deprecated: ``include``, ``include_blueprint``)."""
        warn_legacy_name("TrackUsage._include_views", "TrackUsage.include() and include_blueprint()")
        return ViewSet(self, True)

    @property
    def _exclude_views(self) -> ViewSet:
        """The view functions left out in ``exclude`` mode (deprecated: ``exclude``, ``exclude_blueprint``)."""
        warn_legacy_name("TrackUsage._exclude_views", "TrackUsage.exclude() and exclude_blueprint()")
        return ViewSet(self, False)

    @property
    def _type(self) -> str:
        """The mode, ``"include"`` or ``"exclude"``, of the current (or only) app (deprecated)."""
        warn_legacy_name("TrackUsage._type", "TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS")
        return self._tracker().settings.include_or_exclude_views

    @_type.setter
    def _type(self, value: str) -> None:
        """Change the mode of every app of this ``TrackUsage`` from their next request on, as
        Flask-Track-Usage did; a value it did not accept is refused here (it failed the next request)."""
        warn_legacy_name("TrackUsage._type", "TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS")
        mode = value.lower() if isinstance(value, str) else value
        if mode not in ("include", "exclude"):
            raise ViewsModeError(
                "TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS", f"must be one of 'include', 'exclude', got {value!r}"
            )
        with self._lock:
            for tracker in self._trackers.values():
                tracker.settings = dataclasses.replace(tracker.settings, include_or_exclude_views=mode)
                tracker.endpoints.clear()


class FakeTimeStorage:
    """Gives a storage every record at one fixed time: Flask-Track-Usage's ``TrackUsage(..., _fake_time=dt)``,
    which its tests used to know which summary period a request lands in (deprecated).

    :param when: the time; a naive datetime is UTC (as Flask-Track-Usage stored it).
    """

    def __init__(self, storage: Any, when: datetime) -> None:
        self.storage = storage
        self.timestamp = (when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)).timestamp()

    def store(self, records: Sequence[Any]) -> int | None:
        timestamp = self.timestamp
        fixed: Sequence[Any] = [record._replace(timestamp=timestamp) for record in records]
        batch_id = getattr(records, "batch_id", None)
        if batch_id is not None:  # the writer's Batch: the id keeps a retried batch from being written twice
            fixed = type(records)(fixed, batch_id=batch_id)  # type: ignore[call-arg]
        return self.storage.store(fixed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)
