"""The contract between the request lifecycle and what consumes a request: ``Sink``.

A sink overrides only the steps it needs; the lifecycle calls a step only on the
sinks that override it, so an unused step costs nothing per request.
"""

from __future__ import annotations

from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

from .capture import RequestState
from .record import RecordContext, build_record
from .writer import BatchWriter, Observer

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from .config import Settings
    from .writer import Target

__all__ = ["HeaderSource", "QueueingSink", "RequestState", "Sink", "overrides"]


class HeaderSource(Protocol):
    """Picks a finished request's headers for its record (``otel.headers.HeaderCapture``)."""

    def exchange(
        self, environ: Mapping[str, Any], response_headers: Iterable[tuple[str, str]] | None
    ) -> dict[str, list[str]] | None: ...


class Sink:
    """Base class of everything that consumes tracked requests. Every step is optional.

    Each step runs exactly once per tracked request, in this order: ``start``,
    ``teardown``, ``finish``. ``start`` and ``teardown`` run on the request's thread
    and context; ``finish`` runs where the WSGI server closes the response body
    (the same thread for every server we know). A step must not block: anything
    slow belongs behind a ``BatchWriter``. An exception from a step is logged and
    counted and never reaches the request.
    """

    name = "sink"
    uses_record = True
    """Whether ``finish`` reads ``state.captured`` (the finished request as plain data): then the
    request is captured once when it finishes, with the user and ``g.track_var``."""
    uses_user = False
    """Whether ``finish`` reads ``state.username`` without the rest of the record."""
    record_headers: HeaderSource | None = None
    """With ``uses_record``: what picks the headers the record carries (``record.headers``), or None
    for none. The request's are captured by the first sink's, once, when the request finishes."""

    def start(self, state: RequestState) -> None:
        """The request was matched to a URL rule and accepted for tracking, before any of the
        app's ``before_request`` hooks runs (after its URL value preprocessors)."""

    def teardown(self, state: RequestState) -> None:
        """Flask is done with the request: ``app.wsgi_app`` returned its body or raised,
        every hook and teardown has run, the request context is gone. A streamed body
        may still be unsent."""

    def finish(self, state: RequestState) -> None:
        """The response body was closed (or the app raised); ``state.speed``,
        ``state.status`` and ``state.response_size`` (bytes of body sent) are final.

        With ``uses_record``, ``state.captured`` holds the request as plain data
        (None when it could not be captured: ``state.capture_error`` says why);
        ``record.build_record(state.context, state.captured)`` makes its ``UsageRecord``.
        """

    def flush(self, timeout: float | None = None) -> bool:
        """Write out anything buffered; True when nothing is left."""
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush and release resources; called at interpreter exit."""


class QueueingSink(Sink):
    """A sink that hands each captured request to a target through a background :class:`BatchWriter`,
    which builds its :class:`~flask_usage_otel.record.UsageRecord` on its own thread.

    :param target: receives batches of ``UsageRecord``.
    :param context: what the records of this app share (its name, anonymisation, redaction).
    :param settings: the queue's bounds and timings (``TRACK_USAGE_QUEUE_SIZE`` ...).
    :param observer: told what is written and dropped.
    :param writer_options: other :class:`BatchWriter` arguments (backoff).
    """

    def __init__(
        self,
        target: Target,
        context: RecordContext,
        settings: Settings,
        observer: Observer | None = None,
        **writer_options: Any,
    ) -> None:
        self.writer = BatchWriter(
            target,
            queue_size=settings.queue_size,
            queue_bytes=settings.queue_bytes,
            batch_size=settings.batch_size,
            flush_interval=settings.flush_interval,
            linger=settings.batch_linger,
            observer=observer,
            prepare=partial(build_record, context),  # positional: partial calls it without a keyword dict
            size_of=_captured_size,
            **writer_options,
        )

    def finish(self, state: RequestState) -> None:
        captured = state.captured
        if captured is None:  # a value of the request could not be made plain: its record alone is lost
            self.writer.drop("unserialisable", exc=state.capture_error)
        else:
            self.writer.put(captured, captured.size)

    def flush(self, timeout: float | None = None) -> bool:
        return self.writer.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> None:
        self.writer.shutdown(timeout)


_captured_size = attrgetter("size")


def overrides(sink: Sink, step: str) -> bool:
    """Whether ``sink`` implements ``step`` itself rather than inheriting the no-op."""
    return getattr(type(sink), step) is not getattr(Sink, step)
