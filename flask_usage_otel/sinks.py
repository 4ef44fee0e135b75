"""The contract between the request lifecycle and what consumes a request: ``Sink``.

A sink overrides only the steps it needs; the lifecycle calls a step only on the
sinks that override it, so an unused step costs nothing per request.
"""

from __future__ import annotations

from .record import RequestState

__all__ = ["RequestState", "Sink", "overrides"]


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
    """Whether ``finish`` reads ``state.record`` (then the hooks also capture the user and track_var)."""

    def start(self, state: RequestState) -> None:
        """The request was matched to a URL rule and accepted for tracking, before any
        ``before_request`` hook or URL value preprocessor of the app runs."""

    def teardown(self, state: RequestState) -> None:
        """Flask is done with the request: ``app.wsgi_app`` returned its body or raised,
        every hook and teardown has run, the request context is gone. A streamed body
        may still be unsent."""

    def finish(self, state: RequestState) -> None:
        """The response body was closed (or the app raised); ``state.speed``,
        ``state.status`` and ``state.response_size`` (bytes of body sent) are final.

        ``state.record`` builds the full ``UsageRecord`` on first use; a sink that
        needs only the labels and timings reads ``state`` and sets ``uses_record``
        to False, so the record is not built for it.
        """

    def flush(self, timeout: float | None = None) -> bool:
        """Write out anything buffered; True when nothing is left."""
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush and release resources; called at interpreter exit."""


def overrides(sink: Sink, step: str) -> bool:
    """Whether ``sink`` implements ``step`` itself rather than inheriting the no-op."""
    return getattr(type(sink), step) is not getattr(Sink, step)
