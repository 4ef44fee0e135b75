"""The contract between the request lifecycle and what consumes a request: ``Sink``.

A sink overrides only the steps it needs; the lifecycle calls a step only on the
sinks that override it, so an unused step costs nothing per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .record import ENVIRON_KEYS, RecordContext, UsageRecord, record_from_state

if TYPE_CHECKING:
    from flask import Request


class RequestState:
    """What the tracking knows about one tracked request while it is in flight.

    Mutable and private to one request; sinks may keep their own per-request
    objects in the slots reserved for them (``span``, ``context_token``).
    Everything is a raw value so that building it costs next to nothing; the
    full ``record`` is derived from it only when a sink asks.

    ``request`` is the request being served until the request finishes, then None.
    ``error`` is the exception nothing handled (the view's, a hook's, or one that
    escaped the app), until the request finishes.
    """

    __slots__ = (
        "_record",
        "authorization",
        "blueprint",
        "context",
        "context_token",
        "endpoint",
        "environ_values",
        "error",
        "exception",
        "method",
        "method_label",
        "request",
        "response_size",
        "route",
        "sampled",
        "span",
        "span_id",
        "speed",
        "start",
        "status",
        "timestamp",
        "trace_id",
        "track_var",
        "username",
        "view_args",
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
        self._record: UsageRecord | None = None
        self.environ_values: tuple[str | None, ...] | None = None
        self.authorization = False
        self.view_args: dict[str, Any] | None = None

    def capture(self) -> None:
        """Copy the raw request values a record needs, so the request itself can be let go.

        About half a microsecond of dict lookups on the request thread; everything
        derived from them is left to whoever builds the record.
        """
        if self.environ_values is None:
            req = self.request
            environ = req.environ
            self.environ_values = tuple(map(environ.get, ENVIRON_KEYS))
            self.authorization = "HTTP_AUTHORIZATION" in environ
            self.view_args = req.view_args

    @property
    def record(self) -> UsageRecord:
        """The request's ``UsageRecord``, built on first use (after ``finish`` began), on any thread."""
        if self._record is None:
            self._record = record_from_state(self)
        return self._record


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
