"""Time to render ``/metrics`` when the app has 1, 100 and 1,000 routes' worth of series.

Each size gets a fresh app with that many routes, tracked by ``TrackUsage`` on a fresh
registry; one request per route fills the series, then the registry is rendered in the
Prometheus text format and in OpenMetrics (what a scraper asking for exemplars gets).

    python benchmarks/bench_metrics_render.py [--quick] [--routes 1,100,1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from flask import Flask
from prometheus_client import CollectorRegistry
from report import RESULTS_DIR, format_table, machine_info, write_json
from werkzeug.test import EnvironBuilder

from flask_usage_otel import TrackUsage
from flask_usage_otel.prometheus import render

ROUTE_COUNTS = (1, 100, 1000)
FORMATS = {"text": None, "openmetrics": "application/openmetrics-text; version=1.0.0"}
FULL_REPEATS, QUICK_REPEATS = 30, 5


def app_with_routes(count: int) -> tuple[Flask, CollectorRegistry]:
    app = Flask(f"render_{count}")
    for i in range(count):
        app.add_url_rule(f"/r{i}/<int:item_id>", endpoint=f"r{i}", view_func=lambda item_id: "ok")
    registry = CollectorRegistry()
    TrackUsage(app, registry=registry)
    return app, registry


def fill_series(app: Flask, count: int) -> None:
    """One tracked request per route, so each route has its counter and histogram series."""
    for i in range(count):
        body = app.wsgi_app(EnvironBuilder(path=f"/r{i}/1").get_environ(), lambda *args: None)
        for _chunk in body:
            pass
        getattr(body, "close", lambda: None)()


def series_count(registry: CollectorRegistry) -> int:
    return sum(len(metric.samples) for metric in registry.collect())


def measure(count: int, repeats: int) -> dict[str, Any]:
    app, registry = app_with_routes(count)
    fill_series(app, count)
    entry: dict[str, Any] = {"routes": count, "series": series_count(registry)}
    for name, accept in FORMATS.items():
        body, _ = render(registry, accept, False)  # warm-up
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            render(registry, accept, False)
            timings.append((time.perf_counter() - start) * 1e3)
        entry[f"{name}_ms"] = statistics.median(timings)
        entry[f"{name}_bytes"] = len(body)
    return entry


def run_benchmark(route_counts: Sequence[int] = ROUTE_COUNTS, repeats: int = FULL_REPEATS) -> dict[str, Any]:
    """Render times for each route count (what the JSON file holds)."""
    return {
        "benchmark": "metrics_render",
        "machine": machine_info(),
        "settings": {"repeats": repeats},
        "sizes": [measure(count, repeats) for count in route_counts],
    }


def print_results(data: dict[str, Any]) -> None:
    print(f"/metrics render time, median of {data['settings']['repeats']} renders")
    rows = [
        [s["routes"], s["series"], s["text_ms"], s["text_bytes"], s["openmetrics_ms"], s["openmetrics_bytes"]]
        for s in data["sizes"]
    ]
    headers = ["routes", "series", "text ms", "text bytes", "openmetrics ms", "openmetrics bytes"]
    print(format_table(headers, rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPEATS} renders per size")
    parser.add_argument("--routes", default=",".join(map(str, ROUTE_COUNTS)), help="comma-separated route counts")
    parser.add_argument("--output", default=RESULTS_DIR / "metrics_render.json")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.routes.split(",")]
    data = run_benchmark(counts, QUICK_REPEATS if args.quick else FULL_REPEATS)
    print_results(data)
    print(f"\nwrote {write_json(data, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
