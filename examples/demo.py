"""``make demo``: run the demo app on loopback, send it traffic, print what was tracked.

The app is tracked into Prometheus metrics (read back from its own ``/metrics``),
raw rows in SQLite (read back with ``read_usage`` and ``get_summary``), and
OpenTelemetry spans (kept in memory and printed), so one run shows the three
views of the same requests and how they link up through the trace id.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.demo_app import create_app

REQUESTS = 300
PATHS = (
    ["/"] * 30
    + [f"/api/items/{n}" for n in range(1, 40)]
    + ["/api/items/5000", "/slow", "/slow", "/error", "/stream", "/healthz", "/no/such/page", "/wp-login.php"]
)


def main() -> int:
    random.seed(1)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log: the summary is the output
    workdir = Path(tempfile.mkdtemp(prefix="flask-usage-demo-"))
    os.environ["USAGE_DB_URL"] = f"sqlite:///{workdir / 'usage.db'}"
    spans = _in_memory_spans()
    registry = CollectorRegistry()
    options: dict[str, Any] = {"registry": registry}
    if spans is not None:
        options["tracer_provider"] = spans[0]
    app = create_app({"TRACK_USAGE_OTEL": spans is not None}, **options)
    app.logger.setLevel(logging.CRITICAL)  # /error fails on purpose; its traceback is not news

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_port}"
    print(f"demo app on {base_url}, raw rows in {workdir / 'usage.db'}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: _send(base_url, random.choice(PATHS)), range(REQUESTS)))
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        exposition = response.read().decode()
    server.shutdown()
    print(f"sent {REQUESTS} requests ({statuses.count(200)} answered 200)\n")
    _print_metrics(exposition)

    track = app.extensions["track_usage"]
    with app.app_context():
        track.flush()
        _print_rows(track)
    if spans is not None:
        _print_spans(spans[1], track, app)
    return 0


def _send(base_url: str, path: str) -> int:
    try:
        with urllib.request.urlopen(base_url + path, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _print_metrics(exposition: str) -> None:
    counts: dict[tuple[str, str], float] = defaultdict(float)
    sums: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "flask_usage_requests_total":
                counts[(sample.labels["route"], sample.labels["status"])] += sample.value
            elif sample.name == "flask_usage_request_duration_seconds_bucket":
                buckets[sample.labels["route"]][float(sample.labels["le"])] += sample.value
            elif sample.name == "flask_usage_request_duration_seconds_sum":
                sums[sample.labels["route"]] += sample.value
    print("Prometheus (/metrics): requests by route and status, latency percentiles from the histogram")
    print(f"  {'route':<28} {'status':>6} {'requests':>8}")
    for (route, status), value in sorted(counts.items()):
        print(f"  {route:<28} {status:>6} {int(value):>8}")
    print(f"\n  {'route':<28} {'mean ms':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for route, by_le in sorted(buckets.items()):
        mean = sums[route] / by_le[float("inf")] * 1000
        cells = [mean] + [_quantile(q, by_le) * 1000 for q in (0.5, 0.9, 0.99)]
        print(f"  {route:<28} " + " ".join(f"{c:>8.2f}" for c in cells))
    print("  (percentiles interpolate inside histogram buckets, as histogram_quantile() does)")
    print()


def _quantile(q: float, cumulative: dict[float, float]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]]
    if total == 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-12)
        lower_bound, lower_count = bound, count
    return bounds[-2]


def _print_rows(track: Any) -> None:
    rows = track.storages()[0].read_usage(limit=5)
    print("SQLite (read_usage): the newest raw rows")
    for row in rows:
        print(
            f"  {row['date']:%H:%M:%S.%f} {row['method']:<6} {row['path']:<20} {row['status']} "
            f"{row['speed'] * 1000:7.2f} ms  trace_id={row.get('trace_id') or '-'}"
        )
    storage = track.storages()[0]
    print("\nSQLite (get_summary by route, per day): hits, bytes sent, mean ms")
    for row in storage.get_summary(by="route", period="day"):
        print(
            f"  {row['period']:%Y-%m-%d}  {row['route']!s:<28} {row['hits']:>5} "
            f"{row['response_bytes'] or 0:>8} {row['avg_speed'] * 1000:>8.2f}"
        )
    print()


def _in_memory_spans() -> tuple[Any, Any] | None:
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError:
        print("(opentelemetry-sdk not installed: no spans in this demo)")
        return None
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _print_spans(exporter: Any, track: Any, app: Any) -> None:
    finished = exporter.get_finished_spans()
    print(f"OpenTelemetry: {len(finished)} server spans; the last three:")
    for span in finished[-3:]:
        attrs = span.attributes or {}
        print(
            f"  {span.name:<28} trace_id={span.context.trace_id:032x} "
            f"status={attrs.get('http.response.status_code')} route={attrs.get('http.route')}"
        )
    with app.app_context():
        (row,) = track.storages()[0].read_usage(limit=1)
    match = [s for s in finished if f"{s.context.trace_id:032x}" == row.get("trace_id")]
    print(
        f"\nnewest raw row {row['method']} {row['path']} has trace_id={row.get('trace_id')}: "
        f"{'matches span ' + repr(match[0].name) if match else 'NO MATCHING SPAN'}"
    )


if __name__ == "__main__":
    sys.exit(main())
