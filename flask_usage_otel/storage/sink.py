"""``StorageSink``: hands each finished request to a storage, off the request path.

Only plain data crosses to the writer thread: the finished request's state is queued
itself, once the values the app gave it (``g.track_var``, ``view_args``) are plain
strings, numbers and small dicts/lists of them (:func:`make_plain`), so nothing the
writer later touches is bound to the request (a ``LocalProxy``, the session, an ORM
object) or can fail when read. Every other value of the state is the tracking's own
(strings and numbers), and the tracker lets go of the request, its span and its
exception once every sink has finished. A value that cannot be made plain drops its
row alone, counted as ``unserialisable``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..record import RecordValues, RequestState, UsageRecord, as_record, record_values, values_of_record
from ..sinks import Sink
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
"""Memory a queued row holds besides its strings (the state object, the deque slot)."""

_SCALARS = (str, int, float, bool, type(None))
_SCALAR_TYPES = frozenset(_SCALARS)
_FLAT_FAST_PATH = 64  # most keys of a flat dict checked by the fast path
_EMPTY_KINDS = frozenset((dict, type(None)))  # an empty value of these kinds is kept as it is


class Unserialisable(ValueError):
    """A value of the request cannot be turned into plain data."""


def make_plain(state: RequestState) -> int:
    """Turn the app-given values of a finished request's state into plain data, in place, and
    return an estimate of the bytes the queued state holds (also kept as ``state.queued_bytes``).

    Runs on the request thread for every tracked request: the usual case (no ``track_var``,
    no or a few plain ``view_args``) is a couple of type checks.

    :raises Unserialisable: a value is too deep, too large, or its conversion to text failed.
    """
    values = state.environ_values
    if values is None:
        state.capture()
        values = state.environ_values
    # Strings of the environ; track_var and view_args add 50 bytes per container or scalar.
    nbytes = ROW_OVERHEAD_BYTES + len("".join(filter(None, values)))  # type: ignore[arg-type]
    # None or an empty dict (most requests' track_var, every rule without variables) is kept as
    # it is; a mapping with items is copied, so later changes by the app are not seen.
    view_args = state.view_args
    track_var = state.track_var
    if view_args or track_var or not (type(view_args) in _EMPTY_KINDS and type(track_var) in _EMPTY_KINDS):
        budget = [MAX_ITEMS]
        if view_args is not None:
            state.view_args = _plain_mapping(view_args, budget)
        if track_var is not None:
            state.track_var = _plain_mapping(track_var, budget)
        nbytes += 50 * (MAX_ITEMS - budget[0])
    state.queued_bytes = nbytes
    return nbytes


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


class StorageSink(Sink):
    """Queues each request's plain state for a :class:`BatchWriter` (or, with
    ``TRACK_USAGE_SYNC_WRITES``, writes it at once, which is meant for tests and scripts)."""

    name = "storage"

    def __init__(self, storage: Storage, settings: Settings, metrics: PrometheusMetrics | None) -> None:
        self.storage = storage
        self._metrics = metrics
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
                # The request thread queues the plain state; the writer makes what the storage
                # writes from it: record values for a storage that takes them (SQLStorage), else records.
                prepare=queued_values if getattr(storage, "takes_record_values", False) else queued_record,
                size_of=queued_size,
            )

    def finish(self, state: RequestState) -> None:
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
    :func:`queued_record` or :func:`queued_values`."""
    try:
        nbytes = make_plain(state)
    except (Unserialisable, RecursionError) as exc:
        writer._count_drop("unserialisable", exc=exc)
        return
    writer.put(state, nbytes)


def queued_size(item: RequestState | UsageRecord | RecordValues) -> int:
    """The bytes a queued item holds, for the writer's ``queue_bytes`` bound."""
    return item.queued_bytes if type(item) is RequestState else ROW_OVERHEAD_BYTES


# A batch put back after a failed shutdown write holds what these made already: each takes that too.


def queued_record(item: RequestState | UsageRecord | RecordValues) -> UsageRecord:
    """The record of a queued request, built on the writer thread."""
    return as_record(record_values(item)) if type(item) is RequestState else as_record(item)  # type: ignore[arg-type]


def queued_values(item: RequestState | UsageRecord | RecordValues) -> RecordValues:
    """The record values of a queued request (no ``UsageRecord`` made), built on the writer thread."""
    if type(item) is RequestState:
        return record_values(item)  # type: ignore[arg-type]
    return item if type(item) is tuple else values_of_record(item)  # type: ignore[arg-type,return-value]
