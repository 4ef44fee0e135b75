"""Per-request cost of a server span: flask-usage-otel beside opentelemetry-instrumentation-flask.

Every variant runs the same Flask app through ``app.wsgi_app(environ, start_response)`` in a
loop, with the same tracing set-up: an SDK ``TracerProvider`` with a ``BatchSpanProcessor`` and
an exporter that drops what it gets (so export cost is not measured, the request path is).
Variants are interleaved in each round; the figure is the median over rounds of the mean time
per request, and the overhead is that minus the untracked app's.

    .venv/bin/python benchmarks/bench_otel.py [--quick] [--requests 20000] [--rounds 7]

Writes ``benchmarks/results/otel.json`` (figures and the machine they come from).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Stable HTTP conventions for the instrumentor too, so both spans carry the same attribute names.
os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")

from flask import Flask
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry
from report import RESULTS_DIR, machine_info, write_json
from werkzeug.test import EnvironBuilder

from flask_usage_otel import TrackUsage


class DropExporter(SpanExporter):
    """Accepts every batch and does nothing with it."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def provider() -> TracerProvider:
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(DropExporter()))
    return tp


def make_app() -> Flask:
    app = Flask("bench")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return "item"

    return app


def plain() -> tuple[Flask, Any]:
    return make_app(), None


def usage_otel_hooks() -> tuple[Flask, Any]:
    app = make_app()
    app.config.update(TRACK_USAGE_PROMETHEUS=False, TRACK_USAGE_OTEL=False)
    TrackUsage(app, registry=CollectorRegistry())  # the hooks and the record, no sink
    return app, None


def usage_otel_spans() -> tuple[Flask, Any]:
    app, tp = make_app(), provider()
    app.config.update(TRACK_USAGE_PROMETHEUS=False, TRACK_USAGE_OTEL=True)
    TrackUsage(app, registry=CollectorRegistry(), tracer_provider=tp)
    return app, tp


def usage_otel_full() -> tuple[Flask, Any]:
    app, tp = make_app(), provider()
    TrackUsage(app, registry=CollectorRegistry(), tracer_provider=tp)  # Prometheus metrics + span + exemplars
    return app, tp


def instrumentation_flask() -> tuple[Flask, Any]:
    app, tp = make_app(), provider()
    FlaskInstrumentor().instrument_app(app, tracer_provider=tp)
    return app, tp


VARIANTS: dict[str, Callable[[], tuple[Flask, Any]]] = {
    "flask (untracked)": plain,
    "flask-usage-otel: hooks, no sink": usage_otel_hooks,
    "flask-usage-otel: span only": usage_otel_spans,
    "flask-usage-otel: span + Prometheus": usage_otel_full,
    "opentelemetry-instrumentation-flask": instrumentation_flask,
}


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
    return lambda data: None


FULL = (20_000, 7)  # requests per variant per round, rounds
QUICK = (2_000, 3)


def run_round(app: Flask, environ: dict[str, Any], requests: int) -> float:
    wsgi = app.wsgi_app
    begin = time.perf_counter()
    for _ in range(requests):
        body = wsgi(dict(environ), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - begin) / requests


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK[0]} requests x {QUICK[1]} rounds")
    parser.add_argument("--requests", type=int, help=f"requests per variant per round (default {FULL[0]})")
    parser.add_argument("--rounds", type=int, help=f"rounds (default {FULL[1]})")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "otel.json")
    args = parser.parse_args(argv)
    default_requests, default_rounds = QUICK if args.quick else FULL
    args.requests = args.requests or default_requests
    args.rounds = args.rounds or default_rounds

    environ = EnvironBuilder(path="/items/42", query_string="page=2", headers={"User-Agent": "bench/1.0"}).get_environ()
    apps = {name: factory() for name, factory in VARIANTS.items()}
    for app, _ in apps.values():  # warm up caches and lazy imports
        run_round(app, environ, 500)
    times: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(args.rounds):
        for name, (app, _) in apps.items():
            times[name].append(run_round(app, environ, args.requests))
    for _, tp in apps.values():
        if tp is not None:
            tp.shutdown()

    base = statistics.median(times["flask (untracked)"])
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {args.requests} requests x {args.rounds} rounds"
    )
    print(f"{'variant':40} {'us/request':>11} {'overhead us':>12}")
    variants = []
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:40} {median * 1e6:11.1f} {(median - base) * 1e6:12.1f}")
        variants.append({"name": name, "median_us": median * 1e6, "overhead_us": (median - base) * 1e6})
    data = {
        "benchmark": "otel",
        "quick": args.quick,
        "requests": args.requests,
        "rounds": args.rounds,
        "machine": machine_info(),
        "variants": variants,
    }
    print(f"wrote {write_json(data, args.output)}")


if __name__ == "__main__":
    sys.exit(main())
