"""``StorageSink``: hands each finished request to a storage, off the request path.

Only plain data crosses to the writer thread: the request's state is copied into a
:class:`PlainState` of strings, numbers and small dicts/lists of them
(:func:`plain`), so nothing the writer later touches is bound to the request
(a ``LocalProxy``, the session, an ORM object) or can fail when read. A value that
cannot be made plain drops its row alone, counted as ``unserialisable``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flask import current_app, has_app_context

from ..record import UsageRecord, record_from_state
from ..sinks import RequestState, Sink
from .batch import BatchWriter

if TYPE_CHECKING:
    from ..config import Settings
    from ..prometheus import PrometheusMetrics
    from .base import Storage

logger = logging.getLogger("flask_usage_otel.storage")

MAX_DEPTH = 32
"""Deepest nesting of dicts and lists kept in ``track_var`` and ``view_args``."""
MAX_ITEMS = 10_000
"""Most scalars and containers in one row's ``track_var`` and ``view_args`` together."""
ROW_OVERHEAD_BYTES = 1_000
"""Memory a queued row holds besides its strings (objects, the tuple, the deque slot)."""

_SCALARS = (str, int, float, bool, type(None))
_SCALAR_TYPES = frozenset(_SCALARS)
_FLAT_FAST_PATH = 64  # most keys of a flat dict checked by the fast path


class Unserialisable(ValueError):
    """A value of the request cannot be turned into plain data."""


class PlainState:
    """A finished request's state as plain values: what ``record_from_state`` reads, and its estimated size."""

    __slots__ = (
        "authorization",
        "blueprint",
        "context",
        "endpoint",
        "environ_values",
        "exception",
        "method",
        "nbytes",
        "response_size",
        "route",
        "span_id",
        "speed",
        "status",
        "timestamp",
        "trace_id",
        "track_var",
        "username",
        "view_args",
    )

    def capture(self) -> None:
        """Already captured (``record_from_state`` calls it on request states)."""


def plain_state(state: RequestState) -> PlainState:
    """The state's values as plain data, with an estimate of the bytes they hold (``nbytes``).

    Runs on the request thread for every tracked request, so the usual case (text,
    numbers, a small flat ``track_var``) takes a fast path of type checks and copies.

    :raises Unserialisable: a value is too deep, too large, or its conversion to text failed.
    """
    if state.environ_values is None:
        state.capture()
    budget = [MAX_ITEMS]
    out = PlainState()
    environ_values = state.environ_values
    out.environ_values = environ_values
    out.authorization = state.authorization is True or bool(state.authorization)
    # None or an empty dict (most requests' track_var, every rule without variables) is
    # kept as it is; only a mapping with items takes the copy.
    value = state.view_args
    out.view_args = value if value is None or (not value and type(value) is dict) else _plain_mapping(value, budget)
    value = state.track_var
    out.track_var = value if value is None or (not value and type(value) is dict) else _plain_mapping(value, budget)
    value = state.username
    out.username = value if value is None or type(value) is str else _text(value)
    value = state.exception
    out.exception = value if value is None or type(value) is str else _text(value)
    value = state.blueprint
    out.blueprint = value if value is None or type(value) is str else _text(value)
    value = state.endpoint
    out.endpoint = value if value is None or type(value) is str else _text(value)
    value = state.status
    out.status = value if value is None or type(value) is int else _integer(value)
    value = state.response_size
    out.response_size = value if value is None or type(value) is int else _integer(value)
    out.route = state.route
    out.method = state.method
    out.speed = state.speed
    out.timestamp = state.timestamp
    out.trace_id = state.trace_id
    out.span_id = state.span_id
    out.context = state.context
    size = ROW_OVERHEAD_BYTES + len("".join(filter(None, environ_values or ())))
    out.nbytes = size + 50 * (MAX_ITEMS - budget[0])  # containers and scalars of track_var / view_args
    return out


def plain(value: Any) -> Any:
    """``value`` as str/int/float/bool/None and dicts (str keys) and lists of them.

    Other values become their ``str()`` (a date, a UUID, a Decimal, a model object).
    :raises Unserialisable: deeper than ``MAX_DEPTH``, more than ``MAX_ITEMS`` items, or ``str()`` failed.
    """
    return _plain(value, MAX_DEPTH, [MAX_ITEMS])


def _plain_mapping(value: Any, budget: list[int]) -> dict[str, Any] | None:
    if value is None:
        return None
    if type(value) is dict:
        if not value:
            return value  # most requests: nothing to copy
        if len(value) <= _FLAT_FAST_PATH:
            for key, item in value.items():
                if type(key) is not str or type(item) not in _SCALAR_TYPES:
                    break
            else:  # flat, plain already: a copy, so later changes by the app are not seen
                budget[0] -= len(value)
                return dict(value)
    converted = _plain(value, MAX_DEPTH, budget)
    return converted if isinstance(converted, dict) else {"value": converted}


def _plain(value: Any, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise Unserialisable(f"more than {MAX_ITEMS} values")
    kind = type(value)
    if kind in _SCALARS:
        return value
    if depth <= 0:
        raise Unserialisable(f"nested deeper than {MAX_DEPTH} levels")
    if kind is dict or kind is list or kind is tuple:
        pass
    elif isinstance(value, str):
        return _text(value)  # a str subclass (Markup), which may carry methods of its own
    elif isinstance(value, int):
        return int(value)  # an IntEnum and the like
    elif isinstance(value, float):
        return float(value)
    elif not isinstance(value, dict | list | tuple | set | frozenset):
        return _text(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        try:
            items = list(value.items())
        except Exception as exc:
            raise Unserialisable(f"cannot read a mapping ({type(exc).__name__})") from None
        for key, item in items:
            out[key if type(key) is str else _text(key)] = _plain(item, depth - 1, budget)  # type: ignore[index]
        return out
    try:
        items = list(value)
    except Exception as exc:
        raise Unserialisable(f"cannot read a sequence ({type(exc).__name__})") from None
    return [_plain(item, depth - 1, budget) for item in items]


def _text(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    try:
        return str.__str__(value) if isinstance(value, str) else str(value)
    except Exception as exc:  # a __str__ that raises, or needs a context that is gone
        raise Unserialisable(f"str() of a {type(value).__name__} failed ({type(exc).__name__})") from None


def _integer(value: Any) -> int | None:
    if value is None or type(value) is int:
        return value
    try:
        return int(value)
    except Exception as exc:
        raise Unserialisable(f"not an integer: a {type(value).__name__} ({type(exc).__name__})") from None


class StorageSink(Sink):
    """Queues each request's plain state for a :class:`BatchWriter` (or, with
    ``TRACK_USAGE_SYNC_WRITES``, writes it at once, which is meant for tests and scripts)."""

    name = "storage"

    def __init__(self, storage: Storage, settings: Settings, metrics: PrometheusMetrics | None) -> None:
        self.storage = storage
        self._metrics = metrics
        # A storage that needs the app (one using Flask-SQLAlchemy's engine) learns it on the first request.
        self._bind_app = getattr(storage, "bind_app", None)
        self.writer: BatchWriter | None = None
        if not settings.sync_writes:
            self.writer = BatchWriter(
                storage,
                queue_size=settings.queue_size,
                queue_bytes=settings.queue_bytes,
                batch_size=settings.batch_size,
                flush_interval=settings.flush_interval,
                linger=settings.batch_linger,
                metrics=metrics,
                # The request thread queues plain values; the writer builds the record from them.
                prepare=queued_record,
                size_of=queued_size,
            )

    def finish(self, state: RequestState) -> None:
        if self._bind_app is not None and has_app_context():
            bind, self._bind_app = self._bind_app, None
            bind(current_app._get_current_object())  # type: ignore[attr-defined]
        writer = self.writer
        if writer is None:
            self.storage.store([state.record])
            if self._metrics is not None:
                self._metrics.storage_rows_written.inc()
            return
        enqueue(writer, state)

    def flush(self, timeout: float | None = None) -> bool:
        return True if self.writer is None else self.writer.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> None:
        if self.writer is not None:
            self.writer.shutdown(timeout)


def enqueue(writer: BatchWriter, state: RequestState) -> None:
    """Queue a finished request for a background writer as plain data (every sink that writes
    off the request path goes through here): a request whose values cannot be made plain is
    dropped alone, counted as ``unserialisable``. The writer must use :func:`queued_size` and
    :func:`queued_record`."""
    try:
        values = plain_state(state)
    except (Unserialisable, RecursionError) as exc:
        writer._count_drop("unserialisable", exc=exc)
        return
    writer.put(values)


def queued_size(item: PlainState | UsageRecord) -> int:
    """The bytes a queued item holds, for the writer's ``queue_bytes`` bound."""
    return item.nbytes if type(item) is PlainState else ROW_OVERHEAD_BYTES


def queued_record(item: PlainState | UsageRecord) -> UsageRecord:
    """The record of a queued item, built on the writer thread."""
    # A batch put back after a failed shutdown write holds records already.
    return item if isinstance(item, UsageRecord) else record_from_state(item)  # type: ignore[arg-type]
