"""The benchmarked app and every way of tracking it, each built on a fresh app and fresh registries.

A variant's ``setup(app, workdir)`` instruments the app and returns a ``Setup`` (how to drain
background work, how to count the work done and how to clean up), or raises ``Unavailable`` with
the reason it cannot run here (a package not installed, a part of flask-usage-otel not built yet).
"""

from __future__ import annotations

import os
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, g, request

# One request of each kind the app serves: the root, a converter route, a blueprint route.
PATHS = ("/", "/items/42", "/api/status")

REQUIREMENTS_HINT = "pip install -r benchmarks/requirements.txt"


class Unavailable(Exception):
    """This variant cannot run here; the message says why."""


def build_app(name: str = "bench") -> Flask:
    """The three-route app every variant instruments."""
    app = Flask(name)

    @app.get("/")
    def index() -> str:
        return "hello"

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return f"item {item_id}"

    api = Blueprint("api", name, url_prefix="/api")

    @api.get("/status")
    def status() -> str:
        return "ok"

    app.register_blueprint(api)
    return app


@dataclass
class Setup:
    """What a variant leaves behind: work to drain after a timed batch, its work counts, and the clean-up.

    ``work`` returns what the variant has recorded so far (``requests`` counted by its metrics,
    ``rows`` in its table, ``spans`` exported), read outside any measured window: a benchmark
    compares two readings to prove the variant did its job on every request it was sent.
    """

    drain: Callable[[], Any] | None = None
    cleanups: list[Callable[[], Any]] = field(default_factory=list)
    work: Callable[[], dict[str, int]] | None = None

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:  # a failed clean-up must not hide the figures
                print(f"  clean-up failed: {exc!r}", file=sys.stderr)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    setup: Callable[[Flask, Path], Setup]


# --- peers ------------------------------------------------------------------------------


def setup_bare(app: Flask, workdir: Path) -> Setup:
    return Setup()


def counted(registry: Any, sample: str) -> int:
    """The sum of every sample named ``sample`` in a prometheus_client registry (all label sets)."""
    return int(sum(s.value for metric in registry.collect() for s in metric.samples if s.name == sample))


def setup_prometheus_flask_exporter(app: Flask, workdir: Path) -> Setup:
    try:
        from prometheus_client import CollectorRegistry
        from prometheus_flask_exporter import PrometheusMetrics
    except ImportError as exc:
        raise Unavailable(f"prometheus-flask-exporter is not installed ({REQUIREMENTS_HINT}): {exc}") from exc
    registry = CollectorRegistry()
    PrometheusMetrics(app, registry=registry)
    return Setup(work=lambda: {"requests": counted(registry, "flask_http_request_total")})


def setup_handwritten(app: Flask, workdir: Path) -> Setup:
    """The pair of hooks a team writes by hand: a labelled Counter and Histogram."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    requests_total = Counter("http_requests_total", "HTTP requests.", ("method", "route", "status"), registry=registry)
    latency = Histogram("http_request_duration_seconds", "Request latency.", ("method", "route"), registry=registry)

    @app.before_request
    def start_timer() -> None:
        g.request_start = time.perf_counter()

    @app.after_request
    def observe(response: Any) -> Any:
        rule = request.url_rule
        route = rule.rule if rule is not None else "unmatched"
        requests_total.labels(request.method, route, str(response.status_code)).inc()
        latency.labels(request.method, route).observe(time.perf_counter() - g.request_start)
        return response

    return Setup(work=lambda: {"requests": counted(registry, "http_requests_total")})


def _tracer_provider(exported: list[int] | None = None) -> Any:
    """An SDK tracer provider with a batch processor and an exporter that drops everything.

    ``exported``, when given, is a one-item list the exporter adds each batch's span count to.
    """
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    except ImportError as exc:
        raise Unavailable(f"opentelemetry-sdk is not installed: {exc}") from exc

    class NoopSpanExporter(SpanExporter):
        """Accepts every batch and sends it nowhere: the cost measured is the SDK's, not a network's."""

        def export(self, spans: Any) -> SpanExportResult:
            if exported is not None:
                exported[0] += len(spans)  # one add per batch: proof of work, not a cost worth measuring
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NoopSpanExporter()))
    return provider


def setup_otel_instrumentation(app: Flask, workdir: Path) -> Setup:
    try:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    except ImportError as exc:
        raise Unavailable(f"opentelemetry-instrumentation-flask or the SDK is not installed: {exc}") from exc
    exported = [0]
    tracer_provider = _tracer_provider(exported)
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    FlaskInstrumentor.instrument_app(app, tracer_provider=tracer_provider, meter_provider=meter_provider)
    return Setup(
        drain=tracer_provider.force_flush,
        cleanups=[tracer_provider.shutdown, meter_provider.shutdown, lambda: FlaskInstrumentor.uninstrument_app(app)],
        work=lambda: {"spans": exported[0]},
    )


class _RequestContextStack:
    """Stands in for ``flask._request_ctx_stack`` (removed in Flask 3): ``.top`` is the request context."""

    @property
    def top(self) -> Any:
        from flask.globals import _cv_request

        return _cv_request.get(None)


def import_flask_track_usage() -> types.ModuleType:
    """Flask-Track-Usage 2.0, made importable on Flask 3 with the one name it misses."""
    try:
        import six  # noqa: F401  (Flask-Track-Usage imports it without depending on it)
    except ImportError as exc:
        raise Unavailable(f"Flask-Track-Usage needs six, which is not installed ({REQUIREMENTS_HINT})") from exc
    import flask

    # Flask-Track-Usage binds the name at import; take it off flask again so nothing else sees it.
    shimmed = not hasattr(flask, "_request_ctx_stack")
    if shimmed:
        flask._request_ctx_stack = _RequestContextStack()  # type: ignore[attr-defined]
    try:
        import flask_track_usage
    except ImportError as exc:
        raise Unavailable(f"Flask-Track-Usage is not importable ({REQUIREMENTS_HINT}): {exc}") from exc
    finally:
        if shimmed:
            del flask._request_ctx_stack  # type: ignore[attr-defined]
    return flask_track_usage


def setup_flask_track_usage(app: Flask, workdir: Path) -> Setup:
    flask_track_usage = import_flask_track_usage()
    from flask_track_usage.storage.sql import SQLStorage as TrackUsageSQLStorage
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{workdir / 'flask_track_usage.db'}")
    storage = TrackUsageSQLStorage(engine=engine)
    flask_track_usage.TrackUsage(app, [storage])
    return Setup(cleanups=[engine.dispose], work=lambda: {"rows": count_rows(engine, storage.track_table)})


def count_rows(engine: Any, table: Any) -> int:
    """Rows in a SQLAlchemy table, read on a connection of its own."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


# --- ours -------------------------------------------------------------------------------


# Our Prometheus counter of tracked requests (default prefix).
OUR_REQUESTS_SAMPLE = "flask_usage_requests_total"


def _track_usage(app: Flask, **kwargs: Any) -> tuple[Any, Any]:
    """Ours on ``app`` with a registry of its own: (the TrackUsage, the registry)."""
    from prometheus_client import CollectorRegistry

    from flask_usage_otel import TrackUsage

    registry = CollectorRegistry()
    return TrackUsage(app, registry=registry, **kwargs), registry


def setup_ours_prometheus(app: Flask, workdir: Path) -> Setup:
    _tracker, registry = _track_usage(app)
    return Setup(work=lambda: {"requests": counted(registry, OUR_REQUESTS_SAMPLE)})


def our_sql_storage(url: str, table_name: str = "flask_usage") -> Any:
    try:
        from flask_usage_otel import SQLStorage
    except ImportError as exc:
        raise Unavailable(f"flask_usage_otel.SQLStorage is not available yet: {exc}") from exc
    return SQLStorage(conn_str=url, table_name=table_name)


def require_our_otel() -> None:
    try:
        import flask_usage_otel.otel  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"flask_usage_otel.otel is not available yet: {exc}") from exc


# The writer thread writes only when a timed batch is over (drain), so the timed loop measures
# the request path alone (the enqueue) and the drain column the writer's own CPU per request.
# With the defaults it would write mid-batch and its CPU would land in whichever request was running.
WRITER_AT_DRAIN = {
    "TRACK_USAGE_BATCH_SIZE": 10_000,
    "TRACK_USAGE_QUEUE_SIZE": 20_000,
    "TRACK_USAGE_FLUSH_INTERVAL": 3600,
}


def setup_ours_sql(app: Flask, workdir: Path) -> Setup:
    app.config.update(WRITER_AT_DRAIN)
    return ours_sql_setup(app, f"sqlite:///{workdir / 'ours.db'}")


def ours_sql_setup(app: Flask, url: str, table_name: str = "flask_usage", drop_table: bool = False) -> Setup:
    """Ours with Prometheus and SQL rows at ``url``, the writer as the app's config sets it.

    ``work`` also reports ``commits``, the transactions the writer made: rows per commit is the
    batch size it reached. ``drop_table`` drops the table at clean-up (a shared database).
    """
    import sqlalchemy as sa

    storage = our_sql_storage(url, table_name)
    commits = [0]

    def count_commit(conn: Any) -> None:
        commits[0] += 1

    sa.event.listen(storage.engine, "commit", count_commit)
    # One app per TrackUsage object, so flush() needs no app context.
    tracker, registry = _track_usage(app, storage=storage)
    cleanups: list[Callable[[], Any]] = [storage.engine.dispose]
    if drop_table:
        cleanups.append(lambda: storage.table.drop(storage.engine, checkfirst=True))
    cleanups.append(tracker.flush)  # clean-ups run last first: flush, drop, dispose
    return Setup(
        drain=tracker.flush,
        cleanups=cleanups,
        work=lambda: {
            "requests": counted(registry, OUR_REQUESTS_SAMPLE),
            "rows": count_rows(storage.engine, storage.table),
            "commits": commits[0],
        },
    )


def setup_ours_everything(app: Flask, workdir: Path) -> Setup:
    app.config.update(WRITER_AT_DRAIN)
    return ours_everything_setup(app, workdir)


def ours_everything_setup(app: Flask, workdir: Path) -> Setup:
    """Ours with Prometheus, SQL rows (SQLite) and spans, the writer as the app's config sets it."""
    require_our_otel()
    storage = our_sql_storage(f"sqlite:///{workdir / 'ours_all.db'}")
    exported = [0]
    tracer_provider = _tracer_provider(exported)
    app.config["TRACK_USAGE_OTEL"] = True
    tracker, registry = _track_usage(app, storage=storage, tracer_provider=tracer_provider)

    def drain() -> None:
        tracker.flush()
        tracer_provider.force_flush()

    return Setup(
        drain=drain,
        cleanups=[tracer_provider.shutdown, tracker.flush],
        work=lambda: {
            "requests": counted(registry, OUR_REQUESTS_SAMPLE),
            "rows": count_rows(storage.engine, storage.table),
            "spans": exported[0],
        },
    )


def setup_ours_logs(app: Flask, workdir: Path) -> Setup:
    """Raw rows as OTel log records instead of SQL rows: encoded as OTLP protobuf, then discarded."""
    try:
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult

        import flask_usage_otel.otel.logs  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"the OTel log record sink or the SDK is not available: {exc}") from exc

    class EncodingExporter(LogRecordExporter):
        """Does what the OTLP/HTTP exporter does before the network: encode each batch."""

        def export(self, batch: Any) -> LogRecordExportResult:
            encode_logs(batch).SerializeToString()
            return LogRecordExportResult.SUCCESS

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

        def shutdown(self) -> None:
            pass

    provider = LoggerProvider()
    # A queue as large as the writer's batch: the drain hands the SDK everything at once.
    provider.add_log_record_processor(
        BatchLogRecordProcessor(EncodingExporter(), max_queue_size=20_000, max_export_batch_size=512)
    )
    app.config.update(WRITER_AT_DRAIN)
    app.config["TRACK_USAGE_OTEL_LOGS"] = True
    tracker, _registry = _track_usage(app, logger_provider=provider)

    def drain() -> None:
        tracker.flush()
        provider.force_flush()

    return Setup(drain=drain, cleanups=[drain, provider.shutdown])


VARIANTS: tuple[Variant, ...] = (
    Variant("bare", "bare Flask", setup_bare),
    Variant("prometheus_flask_exporter", "prometheus_flask_exporter (defaults)", setup_prometheus_flask_exporter),
    Variant("handwritten", "hand-written prometheus_client pair", setup_handwritten),
    Variant("otel_instrumentation", "opentelemetry-instrumentation-flask (SDK)", setup_otel_instrumentation),
    Variant("flask_track_usage", "Flask-Track-Usage 2.0 SQLStorage (SQLite)", setup_flask_track_usage),
    Variant("ours_prometheus", "ours: Prometheus only", setup_ours_prometheus),
    Variant("ours_sql", "ours: Prometheus + SQL (SQLite, batched)", setup_ours_sql),
    Variant("ours_everything", "ours: Prometheus + SQL + OTel spans", setup_ours_everything),
    Variant("ours_logs", "ours: Prometheus + OTel log records (OTLP-encoded)", setup_ours_logs),
)
VARIANTS_BY_KEY = {v.key: v for v in VARIANTS}


# --- the app gunicorn serves in bench_http ----------------------------------------------

HTTP_VARIANT_ENV = "BENCH_HTTP_VARIANT"
HTTP_WORKDIR_ENV = "BENCH_HTTP_WORKDIR"
HTTP_DB_URL_ENV = "BENCH_HTTP_DB_URL"


def http_app() -> Flask:
    """Gunicorn's app factory: bare, or ours with Prometheus, + SQL rows, or every available part."""
    app = build_app("bench_http")
    variant = os.environ.get(HTTP_VARIANT_ENV, "bare")
    if variant == "bare":
        return app
    if variant == "otel_instrumentation":  # the peer, with the same no-op span exporter as ours
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor.instrument_app(app, tracer_provider=_tracer_provider())
        return app
    from flask_usage_otel import TrackUsage

    workdir = Path(os.environ.get(HTTP_WORKDIR_ENV) or ".")
    kwargs: dict[str, Any] = {}
    if variant in {"ours_prometheus_sql", "ours_everything"}:
        try:
            kwargs["storage"] = our_sql_storage(
                os.environ.get(HTTP_DB_URL_ENV) or f"sqlite:///{workdir / f'http-{os.getpid()}.db'}"
            )
        except Unavailable as exc:
            print(f"bench_http: running without SQL storage: {exc}", file=sys.stderr)
    if variant == "ours_everything":
        try:
            require_our_otel()
            kwargs["tracer_provider"] = _tracer_provider()
            app.config["TRACK_USAGE_OTEL"] = True
        except Unavailable as exc:
            print(f"bench_http: running without OTel spans: {exc}", file=sys.stderr)
    # Prometheus in gunicorn's multiprocess mode (PROMETHEUS_MULTIPROC_DIR set by bench_http).
    TrackUsage(app, **kwargs)
    return app
