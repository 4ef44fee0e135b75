"""``make demo``: run the demo app on loopback, send it traffic, print what was tracked.

The app is tracked into Prometheus metrics (read back from its own ``/metrics``),
raw rows in SQLite (read back with ``read_usage`` and ``get_summary``), and
OpenTelemetry spans (kept in memory and printed), so one run shows the three
views of the same requests and how they link up through the trace id.

    .venv/bin/python examples/demo.py [--serve] [--port 8000] [--db demo-data/usage.db] [--requests 300]

The rows go to a stable SQLite file (``demo-data/usage.db`` in the checkout), so they add up over
runs and the ``flask usage`` commands printed at the end read them. ``--serve`` keeps the app
serving after the tour, on ``--port``, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import shlex
import signal
import sqlite3
import sys
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.demo_app import create_app

REPO = Path(__file__).resolve().parent.parent
REQUESTS = 300
# Each of these once per run (an excluded health check, a 404 of a known route, an unmatched path,
# a failure, a stream...), the rest drawn at random from PATHS.
EVERY_KIND = ["/api/items/5000", "/slow", "/error", "/stream", "/healthz", "/no/such/page", "/wp-login.php"]
PATHS = ["/"] * 30 + [f"/api/items/{n}" for n in range(1, 40)] + EVERY_KIND + ["/slow"]
DEFAULT_DB = REPO / "demo-data" / "usage.db"
DEFAULT_PORT = 8000
APP_SPEC = "examples.demo_app:create_app()"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    random.seed(1)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log: the summary is the output
    db_path = args.db.resolve()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    rows_before = _count_rows(db_path)
    os.environ["USAGE_DB_URL"] = f"sqlite:///{db_path}"
    spans = _in_memory_spans()
    registry = CollectorRegistry()
    options: dict[str, Any] = {"registry": registry}
    if spans is not None:
        options["tracer_provider"] = spans[0]
    app = create_app({"TRACK_USAGE_OTEL": spans is not None}, **options)
    app.logger.setLevel(logging.CRITICAL)  # /error fails on purpose; its traceback is not news

    try:
        server = make_server("127.0.0.1", args.port if args.serve else 0, app, threaded=True)
    except OSError as exc:
        print(f"cannot listen on 127.0.0.1:{args.port} ({exc.strerror}): choose another with --port", file=sys.stderr)
        return 2
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_port}"
    lifetime = "kept serving after the tour" if args.serve else "for the tour only (--serve keeps it)"
    print(f"demo app on {base_url}, {lifetime}; raw rows in {db_path}")

    paths = EVERY_KIND[: args.requests] + [random.choice(PATHS) for _ in range(args.requests - len(EVERY_KIND))]
    random.shuffle(paths)
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda path: _send(base_url, path), paths))
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        exposition = response.read().decode()
    if not args.serve:
        server.shutdown()

    tracked = _print_traffic(paths, statuses, app.config["TRACK_USAGE_EXCLUDE_PATHS"], exposition)
    _print_metrics(exposition)
    track = app.extensions["track_usage"]
    with app.app_context():
        track.flush()
        _print_rows(track)
    rows_after = _count_rows(db_path)
    print(f"{db_path} now holds {rows_after} rows: {rows_after - rows_before} from this run ({tracked} tracked)\n")
    if spans is not None:
        _print_spans(spans[1], track, app)
    _print_next_steps(db_path, args.port)
    if args.serve:
        _serve_until_interrupted(server, base_url, track, app)
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the demo app, send it traffic, show what was tracked.")
    parser.add_argument("--serve", action="store_true", help="keep the app serving after the tour, until Ctrl-C")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port for --serve (default {DEFAULT_PORT})")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="SQLite file for the raw rows (kept between runs)")
    parser.add_argument("--requests", type=int, default=REQUESTS, help=f"requests to send (default {REQUESTS})")
    return parser.parse_args(argv)


def _count_rows(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    with sqlite3.connect(db_path) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM flask_usage").fetchone()[0])
        except sqlite3.OperationalError:  # the file exists but has no table yet
            return 0


def _print_traffic(paths: list[str], statuses: list[int], exclude_patterns: list[str], exposition: str) -> int:
    """Say how many requests were sent, answered, excluded and counted; return how many were tracked."""
    excluded: dict[str, int] = defaultdict(int)
    for path in paths:
        if any(re.fullmatch(pattern, path) for pattern in exclude_patterns):
            excluded[path] += 1
    tracked = len(paths) - sum(excluded.values())
    counted = sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "flask_usage_requests_total"
    )
    answered = ", ".join(f"{statuses.count(code)} x {code}" for code in sorted(set(statuses)))
    print(f"sent {len(paths)} requests ({answered})")
    for path, count in sorted(excluded.items()):
        print(f"  {count} to {path}: excluded by TRACK_USAGE_EXCLUDE_PATHS, so in no metric, span or row")
    print(f"  {tracked} tracked; Prometheus counted {int(counted)}\n")
    return tracked


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


def _print_next_steps(db_path: Path, port: int) -> None:
    """Commands to go on from here, each runnable as printed from the checkout."""
    here = Path.cwd()
    bin_dir = Path(sys.executable).parent
    venv_bin = bin_dir.relative_to(here) if bin_dir.is_relative_to(here) else bin_dir
    db_env = f"USAGE_DB_URL={shlex.quote(f'sqlite:///{db_path}')}"
    flask = f"{db_env} {venv_bin / 'flask'} --app {shlex.quote(APP_SPEC)} usage"
    steps = [
        ("the raw rows of every run so far, with the `flask usage` command:", None),
        (None, f"{flask} summary --by route --period day --since 1d"),
        (None, f"{flask} export --since 1h --format csv --output {shlex.quote(str(db_path.parent / 'usage.csv'))}"),
        ("rows missing? check that the database answers and its tables are right (says what to run if not):", None),
        (None, f"{flask} check"),
        ("serve the demo app and scrape it (Ctrl-C stops it):", None),
        (None, f"{venv_bin / 'python'} examples/demo.py --serve --port {port} --db {shlex.quote(str(db_path))}"),
        ("and, in another terminal:", None),
        (None, f"curl -s http://127.0.0.1:{port}/metrics | grep '^flask_usage_requests_total'"),
        ("or under gunicorn, two workers, with the configuration that ships in the package:", None),
        (
            None,
            f"{db_env} GUNICORN_BIND=127.0.0.1:{port} GUNICORN_WORKERS=2 {venv_bin / 'gunicorn'} "
            f"-c python:flask_usage_otel.gunicorn_config {shlex.quote(APP_SPEC)}",
        ),
        ("the whole stack (app, PostgreSQL, Prometheus, Collector, Jaeger, Grafana on :3000), with Docker:", None),
        (None, "docker compose up --build"),
    ]
    print(f"\nWhat next (from {here}):")
    for comment, command in steps:
        print(f"  # {comment}" if comment else f"  $ {command}")
    print("  More: docs/getting-started.md, docs/sql.md, docs/gunicorn.md, docs/compose.md")


def _serve_until_interrupted(server: Any, base_url: str, track: Any, app: Any) -> None:
    # Started in the background by a shell (`make demo ... &`, a job runner), the process inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: Ctrl-C (or kill -INT) must stop it all the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"\nserving {base_url} until Ctrl-C (rows go to the database within a second)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        with app.app_context():
            track.flush()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
