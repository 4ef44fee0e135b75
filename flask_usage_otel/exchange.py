"""The body handed to the WSGI server: one request's exchange through the ``wsgi_app`` wrapper.

It records the status and headers the app starts the response with, counts the body's
bytes as they pass (never buffering them) and tells the tracker when the body is done.
The helpers read what the app answered: the status code, a declared ``Content-Length``,
whether a body is already in memory.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from werkzeug.wrappers import Response as WerkzeugResponse
from werkzeug.wsgi import ClosingIterator

from .internals import closing_iterator_callbacks

if TYPE_CHECKING:
    from .capture import RequestState


class Finisher(Protocol):
    """What an exchange reports to: the request tracker."""

    def body_failed(self, exchange: Exchange, exc: BaseException) -> None: ...

    def finish(self, exchange: Exchange) -> None: ...


class Exchange:
    """One request through the wrapper: its tracking state, what the app answered, its body.

    It is also the body handed to the server, counting the bytes as they pass and
    finishing the request when the server closes it. Most fields start as class
    defaults, so making one per request costs four stores.
    """

    decided = False
    """Whether admission ran (tracked or not)."""
    state: RequestState | None = None
    """The tracked request's state; None when it is not tracked."""
    g: Any = None
    status: str | None = None
    headers: list[tuple[str, str]] | None = None
    body: Iterable[bytes] | None = None
    sent = 0
    handed_over = False
    """Whether the server was given a chunk of the body yet (it may send the headers with an empty one)."""
    first_byte: float | None = None
    """``perf_counter()`` when the first chunk (or a file) was handed to the server; None for a body in memory."""
    finished = False

    def __init__(self, tracker: Finisher, start_response: Callable[..., Any]) -> None:
        self.start = time.perf_counter()
        self.timestamp = time.time()
        self.tracker = tracker
        self._start_response = start_response

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        # The last call wins: an app may start again with exc_info before any byte is sent.
        self.status = status
        self.headers = headers
        return self._start_response(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.body:  # type: ignore[union-attr]
                self.sent += len(chunk)
                if not self.handed_over:  # the server sends the headers with it: the first byte
                    self.handed_over = True
                    self.first_byte = time.perf_counter()
                yield chunk
        except Exception as exc:  # the body failed mid-way; the server aborts the response
            self.tracker.body_failed(self, exc)
            raise
        # The last byte is handed over: finish now rather than at close(), so that a
        # caller that reads the body and never closes it (a test client) sees the record.
        self.tracker.finish(self)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.tracker.finish(self)


class PendingExchange(Exchange):
    """An exchange whose request finishes only when the server is done with the body (a stream, a
    file): the wrapper switches an exchange to this class when it hands such a body over.

    Dropped unread and unclosed (a test response never read, a server that breaks PEP 3333), it
    finishes anyway, so the request is counted and leaves no gauge behind. A body already in memory
    finishes before the wrapper returns, so most exchanges never pay for a finaliser.
    """

    def __del__(self) -> None:
        if not self.finished:
            # At interpreter exit modules may be gone: never raise from __del__.
            with contextlib.suppress(Exception):
                self.tracker.finish(self)


def status_code(status: str | None) -> int:
    """The code of a WSGI status line; 500 when the app never started a response."""
    if status is None:
        return 500
    try:
        return int(status[:3])
    except ValueError:
        return 500


def in_memory(body: Any) -> bool:
    """Whether a WSGI body Flask returned is a sequence already in memory, not a stream or a file.

    Flask returns ``ClosingIterator(response.iter_encoded(), response.close)``: the response
    is the owner of that ``close``. An error page Flask made from an ``HTTPException`` (404,
    405, ``abort(403)``, the 500 page) is a response whose body is, in turn, a
    ``ClosingIterator`` over the page's own response: in memory too when that one is a
    sequence. ``abort(Response(stream))`` is not, and is timed and counted as it streams.
    When the callbacks cannot be read (:func:`~flask_usage_otel.internals.closing_iterator_callbacks`
    failed its check) there are none, and every body is taken as a stream: never wrong, only slower.
    """
    for _ in range(6):  # each wrapping adds a level or two; never loop forever
        if type(body) is not ClosingIterator:
            return False
        inner: Any = None
        for callback in closing_iterator_callbacks(body):  # the wrapped iterable's close() and the response's
            owner = getattr(callback, "__self__", None)
            if isinstance(owner, WerkzeugResponse):
                if owner.direct_passthrough:
                    return False
                if owner.is_sequence:
                    return True
                inner = owner.response
            elif type(owner) is ClosingIterator:
                inner = owner
        body = inner
    return False


def declared_length(headers: list[tuple[str, str]] | None) -> int:
    if not headers:
        return 0
    # Werkzeug adds Content-Length last, spelled so: look there first.
    name, value = headers[-1]
    if name == "Content-Length" and value.isdigit() and value.isascii():
        return int(value)
    for name, value in reversed(headers):
        if name == "Content-Length" or (len(name) == 14 and name.lower() == "content-length"):
            return int(value) if value.isascii() and value.isdigit() else 0
    return 0
