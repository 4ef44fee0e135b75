"""A request while it runs (``RequestState``) and captured once it is finished (``CapturedRequest``).

The request thread keeps raw values only: strings straight from the WSGI environ, numbers
from one clock read, what the hooks annotated. When the request finishes and some sink
consumes whole requests (a storage, log records), :func:`capture` turns it into one
:class:`CapturedRequest`: immutable, plain data only (str, int, float, bool, None, dicts and
lists of them), sized from its contents. That is what crosses to the background writer; the
record every target receives is built from it there (``record.build_record``), so decoding,
anonymisation and GeoIP lookups cost the request nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .record import ENVIRON_KEYS, CapturedRequest, RecordContext

if TYPE_CHECKING:
    from flask import Request

MAX_DEPTH = 32
"""Deepest nesting of dicts and lists kept in ``track_var`` and ``view_args``."""
MAX_ITEMS = 10_000
"""Most scalars and containers in one request's ``track_var`` and ``view_args`` together."""
ROW_OVERHEAD_BYTES = 1_000
"""Memory a captured request holds besides the characters of its strings (the tuple, the string
objects' headers, the queue's slot)."""
VALUE_OVERHEAD_BYTES = 64
"""Memory one scalar or container of ``track_var``/``view_args`` holds besides its characters."""


class Unserialisable(ValueError):
    """A value of the request cannot be turned into plain data."""


_new_captured = tuple.__new__  # the NamedTuple from a ready tuple, without its per-field __new__


class RequestState:
    """What the tracking knows about one tracked request while it is in flight.

    Mutable and private to one request; sinks may keep their own per-request objects in
    the slots reserved for them (``span``, ``context_token``). ``request`` is the request
    being served until the request finishes, then None; ``error`` is the exception nothing
    handled (the view's, a hook's, or one that escaped the app), until it finishes.
    ``captured`` is set when the request finishes, for sinks that consume whole requests
    (None when a value of it could not be made plain: ``capture_error`` says why); its record
    is ``record.build_record(state.context, state.captured)``, built where it is needed.
    """

    __slots__ = (
        "blueprint",
        "capture_error",
        "captured",
        "context",
        "context_token",
        "endpoint",
        "error",
        "exception",
        "first_byte",
        "method",
        "method_label",
        "request",
        "response_size",
        "route",
        "sampled",
        "secrets",
        "span",
        "span_id",
        "speed",
        "start",
        "status",
        "timestamp",
        "trace_id",
        "track_var",
        "username",
    )

    def __init__(
        self,
        request: Request,
        start: float,
        timestamp: float,
        method: str,
        method_label: str,
        endpoint: str | None,
        route: str,
        blueprint: str | None,
        context: RecordContext,
    ) -> None:
        self.request = request
        self.start = start
        self.timestamp = timestamp
        self.method = method
        self.method_label = method_label
        self.endpoint = endpoint
        self.route = route
        self.blueprint = blueprint
        self.status: int | None = None
        self.response_size: int | None = None
        self.username: str | None = None
        self.track_var: dict[str, Any] | None = None
        self.exception: str | None = None
        self.error: BaseException | None = None
        self.span: Any = None
        self.context_token: Any = None
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.sampled = False
        self.context = context
        self.speed = 0.0
        # Seconds to the first chunk of body handed to the server (the headers go with it); the
        # duration itself when the body was in memory, since the server sends it all at once then.
        self.first_byte = 0.0
        # Secret URL variables (TRACK_USAGE_REDACT_VIEW_ARGS) as (name, value), read when admitted.
        self.secrets: tuple[tuple[str, str], ...] = ()
        self.captured: CapturedRequest | None = None
        self.capture_error: BaseException | None = None


def capture(state: RequestState, headers: dict[str, list[str]] | None = None) -> CapturedRequest:
    """The finished request as a :class:`CapturedRequest`: ``g.track_var`` and the view arguments
    copied into plain data, the size measured. ``headers``: the header attributes its log record
    carries (``TRACK_USAGE_OTEL_LOGS_HEADERS``), counted in the size; None for none.

    Runs on the request thread for every tracked request that a storage or log sink consumes:
    the usual case (no ``track_var``, no or a few plain ``view_args``) is a couple of type checks
    and one tuple.

    :raises Unserialisable: a value is too deep, too large, or its conversion to text failed.
    """
    req = state.request
    environ = req.environ
    values = tuple(map(environ.get, ENVIRON_KEYS))  # the raw values, so the request itself can be let go
    size = ROW_OVERHEAD_BYTES + len("".join(filter(None, values)))
    view_args = req.view_args
    track_var = state.track_var
    # None or an empty dict (most requests' track_var, every rule without variables) is kept as
    # it is; a mapping with items is copied, so later changes by the app are not seen.
    if view_args or track_var or not (type(view_args) in _EMPTY_KINDS and type(track_var) in _EMPTY_KINDS):
        budget = [MAX_ITEMS, 0]  # items left, bytes: a list, the cheapest thing to make and update
        if view_args is not None:
            view_args = _plain_mapping(view_args, budget)
        if track_var is not None:
            track_var = _plain_mapping(track_var, budget)
        size += budget[1]
    if headers is not None:
        size += _headers_size(headers)
    return _new_captured(
        CapturedRequest,
        (
            state.timestamp,
            state.speed,
            state.method,
            state.route,
            state.endpoint,
            state.blueprint,
            state.status or 500,
            state.response_size,
            state.username,
            track_var,
            view_args,
            state.exception,
            state.trace_id,
            state.span_id,
            "HTTP_AUTHORIZATION" in environ,  # its presence only, never the header
            state.secrets,
            size,
            values,
            headers,
        ),
    )


def _headers_size(headers: dict[str, list[str]]) -> int:
    """Bytes the captured header attributes hold: their characters, and an object's overhead for each."""
    characters = 0
    for name, values in headers.items():
        characters += len(name) + sum(map(len, values))
    return characters + 3 * VALUE_OVERHEAD_BYTES * len(headers)  # per header: its name, list and value


def plain(value: Any) -> Any:
    """``value`` as str/int/float/bool/None and dicts (str keys) and lists of them.

    Other values become their ``str()`` (a date, a UUID, a Decimal, a model object).
    :raises Unserialisable: deeper than ``MAX_DEPTH``, more than ``MAX_ITEMS`` items, or ``str()`` failed.
    """
    return _plain(value, MAX_DEPTH, [MAX_ITEMS, 0])


Budget = list[int]
"""What the values copied so far cost: ``[items left before MAX_ITEMS, bytes]``."""


def _take(budget: Budget, count: int, characters: int) -> None:
    budget[0] -= count
    if budget[0] < 0:
        raise Unserialisable(f"more than {MAX_ITEMS} values")
    budget[1] += count * VALUE_OVERHEAD_BYTES + characters


_SCALARS = (str, int, float, bool, type(None))
_SCALAR_TYPES = frozenset(_SCALARS)
_FLAT_FAST_PATH = 64  # most keys of a flat dict checked by the fast path
_EMPTY_KINDS = frozenset((dict, type(None)))  # an empty value of these kinds is kept as it is


def _plain_mapping(value: Any, budget: Budget) -> dict[str, Any] | None:
    if value is None:
        return None
    if type(value) is dict:
        if not value:
            return value  # most requests: nothing to copy
        if len(value) <= _FLAT_FAST_PATH:
            characters = 0
            for key, item in value.items():
                kind = type(item)
                if type(key) is not str or kind not in _SCALAR_TYPES:
                    break
                characters += len(key) + (len(item) if kind is str else 0)
            else:  # flat, plain already: a copy, so later changes by the app are not seen
                # At most 64 items: the item bound cannot be passed here, only counted.
                count = len(value) + 1
                budget[0] -= count
                budget[1] += count * VALUE_OVERHEAD_BYTES + characters
                return value.copy()  # a method call: cheaper than calling dict()
    converted = _plain(value, MAX_DEPTH, budget)
    return converted if isinstance(converted, dict) else {"value": converted}


def _plain(value: Any, depth: int, budget: Budget) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        _take(budget, 1, len(value) if kind is str else 0)
        return value
    _take(budget, 1, 0)
    if depth <= 0:
        raise Unserialisable(f"nested deeper than {MAX_DEPTH} levels")
    if kind is dict or kind is list or kind is tuple:
        pass
    elif isinstance(value, int):
        return int(value)  # an IntEnum and the like
    elif isinstance(value, float):
        return float(value)
    elif isinstance(value, str) or not isinstance(value, dict | list | tuple | set | frozenset):
        text = _text(value)  # a str subclass (Markup), a date, a UUID, bytes, a model object
        _take(budget, 0, len(text))  # type: ignore[arg-type]
        return text
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        try:
            items = list(value.items())
        except Exception as exc:
            raise Unserialisable(f"cannot read a mapping ({type(exc).__name__})") from None
        for key, item in items:
            if type(key) is not str:
                key = _text(key)
            _take(budget, 0, len(key))  # type: ignore[arg-type]
            out[key] = _plain(item, depth - 1, budget)  # type: ignore[index]
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
