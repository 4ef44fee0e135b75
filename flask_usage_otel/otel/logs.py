"""Raw rows as OpenTelemetry log records: one ``flask_usage.request`` event per tracked request.

The SQL table holds one row per request and suits one database; past that, the rows
can ride the OTLP pipeline the traces already use (an OpenTelemetry Collector routing
them to a store built for billions of rows, such as ClickHouse). This sink emits each
record as a log record: the event name ``flask_usage.request``, the record's fields as
attributes named after the OpenTelemetry HTTP and user-agent conventions where they
exist (``flask_usage.*`` where they do not), and the request's trace and span ids.

Path of a record: the request thread appends the captured request to a bounded queue (a
:class:`~flask_usage_otel.writer.BatchWriter`, as for SQL rows); the writer thread builds
the record (anonymised addresses, as for SQL rows) and hands batches to this module's
target, which emits each to the OpenTelemetry ``Logger``; the SDK's ``BatchLogRecordProcessor``
exports batches over OTLP from its own thread. A record is dropped, never waited for, when the queue is full
or its export fails; each drop counts in ``flask_usage_tracking_errors_total{component="otel_logs"}``.

The library never sets up export itself: the app passes a provider
(``TrackUsage(logger_provider=build_logger_provider("my-app"))``) or sets an SDK one globally
(``opentelemetry-instrument`` does); with :func:`build_logger_provider`'s, export failures
count as drops too and the SDK's own queue is never overfilled.

Importing this module loads only the standard library; ``opentelemetry`` is imported
when the sink is created.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
import weakref
from typing import TYPE_CHECKING, Any

from ..config import ConfigError
from ..record import STANDARD_METHODS, UsageRecord
from ..sinks import QueueingSink
from ..writer import Observer

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..config import Settings
    from ..prometheus import PrometheusMetrics
    from ..record import RecordContext

logger = logging.getLogger(__name__)

EVENT_NAME = "flask_usage.request"
"""The event name of every record; stable, so a Collector can route on it."""

INSTRUMENTATION_NAME = "flask_usage_otel"

SDK_QUEUE_SIZE = 2048
"""Log records the SDK's batch processor may hold; the sink never hands it more (it drops them silently)."""

_SETTING = "TRACK_USAGE_OTEL_LOGS"

# --- the record as attributes -----------------------------------------------------------


def log_attributes(record: UsageRecord, known_methods: frozenset[str] = STANDARD_METHODS) -> dict[str, Any]:
    """The record's fields as log record attributes: the span's HTTP attributes (same names from
    ``opentelemetry.semconv``, same values), plus ``flask_usage.*`` for fields no convention names.

    Mappings (``view_args``, ``track_var``, ``ip_info``) are JSON text, as in the SQL table,
    so every attribute is a scalar a column store can keep in a string map. ``known_methods``:
    the methods ``http.request.method`` may name (``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``).
    """
    # Imported here: the builder loads opentelemetry's semantic conventions, this module only the standard library.
    from .attributes import record_attributes

    return record_attributes(record, known_methods)


# --- the pipeline -----------------------------------------------------------------------


class CountingExporter:
    """Wraps a ``LogRecordExporter``: counts what it finished and what it failed to export.

    ``in_flight`` (emitted minus finished) is what the SDK's batch processor still holds,
    so the emitter can stop short of its queue limit instead of letting it drop silently.
    """

    def __init__(self, exporter: Any) -> None:
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        self._exporter = exporter
        self._success = LogRecordExportResult.SUCCESS
        self._failure = LogRecordExportResult.FAILURE
        self.listeners: list[Callable[[int], Any]] = []
        """Called with the number of records of each batch whose export failed (the sinks' drop counters)."""
        self.emitted = 0  # written by the emitting thread only
        self.finished = 0  # written by the exporting thread only
        self.failed = 0
        if hasattr(os, "register_at_fork"):
            # A forked child starts with an empty SDK queue: what the parent had in flight is not its own.
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _forget_in_flight(ref))

    @property
    def in_flight(self) -> int:
        return self.emitted - self.finished

    def export(self, batch: Sequence[Any]) -> Any:
        try:
            result = self._exporter.export(batch)
        except Exception:
            logger.warning("exporting %d usage log records failed", len(batch), exc_info=True)
            result = self._failure
        self.finished += len(batch)
        if result is not self._success:
            self.failed += len(batch)
            for listener in self.listeners:
                listener(len(batch))
        return result

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self._exporter.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self._exporter.shutdown()


def _forget_in_flight(ref: weakref.ref[CountingExporter]) -> None:
    counter = ref()
    if counter is not None:
        counter.finished = counter.emitted


class _Full(Exception):
    """The SDK's queue has no room for this batch yet: the writer retries it after a pause."""


class LogRecordTarget:
    """The writer's target: emits each record of a batch to the OTel logger."""

    def __init__(
        self, otel_logger: Any, counter: CountingExporter | None, known_methods: frozenset[str] = STANDARD_METHODS
    ) -> None:
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

        self._logger = otel_logger
        self._counter = counter
        self._known_methods = known_methods
        self._span_context = SpanContext
        self._span = NonRecordingSpan
        self._in_context = set_span_in_context
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.context import Context

        self._info = SeverityNumber.INFO
        self._no_trace = Context()  # immutable: one empty context serves every record without a trace

    def store(self, batch: Sequence[UsageRecord]) -> None:
        counter = self._counter
        if counter is not None and counter.in_flight + len(batch) > SDK_QUEUE_SIZE:
            raise _Full(f"{counter.in_flight} usage log records wait for export")
        # Built before any is emitted: a batch that fails here is retried whole, never emitted twice.
        prepared = [self._arguments(record) for record in batch]
        for arguments in prepared:
            self._logger.emit(**arguments)
        if counter is not None:
            counter.emitted += len(prepared)

    def _arguments(self, record: UsageRecord) -> dict[str, Any]:
        # No trace of its own: an empty context, not whatever the writer thread has current.
        context = self._no_trace
        if record.trace_id and record.span_id:
            span_context = self._span_context(int(record.trace_id, 16), int(record.span_id, 16), False, self._sampled)
            context = self._in_context(self._span(span_context))
        return {
            "timestamp": int(record.timestamp * 1e9),
            "observed_timestamp": time.time_ns(),
            "context": context,
            "severity_number": self._info,
            "severity_text": "INFO",
            "body": f"{record.method} {record.route} {record.status}",
            "attributes": log_attributes(record, self._known_methods),
            "event_name": EVENT_NAME,
        }


class _DropObserver(Observer):
    """Counts the records the writer lost (queue full, unbuildable, shut down) as tracking errors."""

    def __init__(self, dropped: Any) -> None:
        self._dropped = dropped

    def dropped(self, reason: str, rows: int) -> None:
        self._dropped.inc(rows)


class OtelLogSink(QueueingSink):
    """Emits each tracked request's record as an OpenTelemetry log record, off the request path.

    Build it with :func:`create_log_sink`, which applies the settings.

    :param otel_logger: an OpenTelemetry ``Logger``.
    :param context: what the records of this app share (its name, anonymisation, redaction).
    :param settings: the queue's bounds and timings.
    :param counter: the exporter wrapper of a pipeline made by :func:`build_logger_provider`
        (or None for another provider, whose export failures its own SDK metrics count).
    :param provider: the ``LoggerProvider``, flushed by :meth:`flush` (never shut down: it is the app's).
    :param dropped: a counter (``.inc(n)``) for records lost, or None.
    """

    name = "otel_logs"

    def __init__(
        self,
        otel_logger: Any,
        context: RecordContext,
        settings: Settings,
        *,
        counter: CountingExporter | None = None,
        provider: Any = None,
        dropped: Any = None,
    ) -> None:
        self._counter = counter
        self._provider = provider
        env = settings.otel_env
        if settings.otel_logs_headers:
            from .headers import HeaderCapture

            # The span's header attributes, by the same variables: captured when the request finishes.
            self.record_headers = HeaderCapture(env) if HeaderCapture.wanted(env) else None
        super().__init__(
            LogRecordTarget(otel_logger, counter, env.known_methods),
            context,
            settings,
            _DropObserver(dropped) if dropped is not None else None,
            # Short waits while the SDK's queue is full; the writer's queue bounds the rest.
            min_backoff=0.05,
            max_backoff=1.0,
        )

    @property
    def records_dropped(self) -> int:
        """Records lost so far: queue full, unbuildable, or export failed."""
        return self.writer.rows_dropped + (self._counter.failed if self._counter is not None else 0)

    def flush(self, timeout: float | None = None) -> bool:
        written = self.writer.flush(timeout)
        force_flush = getattr(self._provider, "force_flush", None)
        if force_flush is None:
            return written
        return bool(force_flush(30_000 if timeout is None else int(timeout * 1000))) and written

    def shutdown(self, timeout: float | None = None) -> None:
        # Hands over what is queued; the provider, the app's, exports it at its own shutdown.
        self.writer.shutdown(timeout)


# --- set-up -----------------------------------------------------------------------------


def create_log_sink(
    settings: Settings, context: RecordContext, logger_provider: Any = None, metrics: PrometheusMetrics | None = None
) -> OtelLogSink:
    """The app's log record sink (``TRACK_USAGE_OTEL_LOGS = True``).

    The logger comes from ``logger_provider`` when given, else from the global provider when
    the app (or ``opentelemetry-instrument``) set an SDK ``LoggerProvider`` globally. The
    library never sets up export itself: :func:`build_logger_provider` makes a provider for
    the app to pass, and with it export failures are counted as dropped records too.

    :raises ConfigError: the ``otel`` extra (opentelemetry-sdk 1.39 or later) is not installed,
        or there is no logger provider to emit to.
    """
    try:
        from opentelemetry import _logs
        from opentelemetry.sdk._logs import LoggerProvider  # noqa: F401
    except ImportError:
        raise ConfigError(_SETTING, "needs OpenTelemetry: pip install 'flask-usage-otel[otel]'") from None
    if "event_name" not in inspect.signature(_logs.Logger.emit).parameters:
        raise ConfigError(_SETTING, "needs opentelemetry-api and opentelemetry-sdk 1.39 or later")
    from .._version import __version__

    provider = sdk_logger_provider(logger_provider, _SETTING, "needs a logger provider")
    dropped = metrics.tracking_errors.labels("otel_logs") if metrics is not None else None
    counter = _pipelines.get(provider)
    if counter is not None and dropped is not None:
        counter.listeners.append(dropped.inc)
    return OtelLogSink(
        provider.get_logger(INSTRUMENTATION_NAME, __version__),
        context,
        settings,
        counter=counter,
        provider=provider,
        dropped=dropped,
    )


def sdk_logger_provider(logger_provider: Any, setting: str, needs: str) -> Any:
    """``logger_provider``, else the global provider when the app (or ``opentelemetry-instrument``) set an SDK one.

    :raises ConfigError: neither; the message names ``setting`` and starts with ``needs``.
    """
    from opentelemetry import _logs
    from opentelemetry.sdk._logs import LoggerProvider

    if logger_provider is not None:
        return logger_provider
    provider = _logs.get_logger_provider()
    if not isinstance(provider, LoggerProvider):
        raise ConfigError(
            setting,
            f"{needs}: pass TrackUsage(logger_provider=flask_usage_otel.otel.build_logger_provider(...)), or "
            "set an SDK LoggerProvider globally (opentelemetry-instrument with OTEL_LOGS_EXPORTER=otlp does) "
            "before init_app",
        )
    return provider


_pipelines: weakref.WeakKeyDictionary[Any, CountingExporter] = weakref.WeakKeyDictionary()
"""The counting exporter of each provider made by ``build_logger_provider``."""


def build_logger_provider(service_name: str, exporter: Any = None) -> Any:
    """An SDK ``LoggerProvider`` for ``TrackUsage(logger_provider=...)``, exporting through a
    ``BatchLogRecordProcessor``; not set globally. Shut it down at exit (``provider.shutdown()``).

    With it the sink counts export failures as dropped records and never overfills the SDK's
    queue (which would drop records without a trace).

    :param service_name: ``service.name`` unless ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES`` name one.
    :param exporter: a ``LogRecordExporter``; default the OTLP/HTTP one, configured by the
        standard ``OTEL_EXPORTER_OTLP_*`` variables.
    """
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    from .setup import service_resource

    if exporter is None:
        try:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        except ImportError:
            raise ConfigError(_SETTING, "needs opentelemetry-exporter-otlp-proto-http (the otel extra)") from None
        exporter = OTLPLogExporter()
    counter = CountingExporter(exporter)
    provider = LoggerProvider(resource=service_resource(service_name))
    provider.add_log_record_processor(BatchLogRecordProcessor(counter, max_queue_size=SDK_QUEUE_SIZE))  # type: ignore[arg-type]
    _pipelines[provider] = counter
    return provider
