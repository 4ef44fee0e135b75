"""Cost curves for sizing a deployment (issue 24): how each cost grows, measured at three or more sizes.

1. ``/metrics`` render time against label sets (routes x statuses x methods), in process, and
   against the number of gunicorn workers' files in the multiprocess directory;
2. rows/s the writer keeps up with when each database round trip takes 0, 1 or 5 ms more
   (PostgreSQL, and MariaDB when it listens, behind a loopback proxy that delays every packet:
   latency_proxy.py);
3. ``get_usage`` and the summaries on a plain and a partitioned PostgreSQL table of growing size
   (filled inside the database with generate_series);
4. the bytes one queued row costs in memory (tracemalloc) and one stored row costs on disk.

Each curve is fitted (curves.py: the power-law exponent names the growth) and drawn as a PNG.

    python benchmarks/bench_curves.py [--quick] [--only render,workers,writer,storage,bytes]
        [--table-rows 100000,1000000,10000000] [--plots docs/img]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curves import fit, plot
from flask import Flask, request
from report import BENCH_DIR, RESULTS_DIR, format_table, machine_info, write_json
from werkzeug.test import EnvironBuilder

STATUSES = (200, 404, 500)
METHODS = ("GET", "POST")
DOCS_IMG = BENCH_DIR.parent / "docs" / "img"


def label_set_app(routes: int) -> Flask:
    """``routes`` routes, each answering GET and POST with the status asked for: 6 label sets a route."""
    app = Flask(f"curves_{routes}")

    def view(**_: Any) -> tuple[str, int]:
        return "ok", int(request.args.get("s", 200))

    for i in range(routes):
        app.add_url_rule(f"/r{i}/<int:item_id>", endpoint=f"r{i}", view_func=view, methods=list(METHODS))
    return app


def fill_label_sets(app: Flask, routes: int) -> None:
    """One request per (route, method, status) through the WSGI app, so every series exists."""
    for i in range(routes):
        for method in METHODS:
            for status in STATUSES:
                environ = EnvironBuilder(path=f"/r{i}/1", method=method, query_string=f"s={status}").get_environ()
                body = app.wsgi_app(environ, lambda *args: None)
                for _chunk in body:
                    pass
                getattr(body, "close", lambda: None)()


def median_ms(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        timings.append((time.perf_counter() - start) * 1e3)
    return statistics.median(timings)


# -- 1. /metrics ---------------------------------------------------------------------------------


def render_curve(route_counts: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    """In-process render time and size against label sets."""
    from prometheus_client import CollectorRegistry

    from flask_usage_otel import TrackUsage
    from flask_usage_otel.prometheus import render

    points = []
    for routes in route_counts:
        app = label_set_app(routes)
        registry = CollectorRegistry()
        TrackUsage(app, registry=registry)
        fill_label_sets(app, routes)
        body, _ = render(registry, None, False)
        ms = median_ms(lambda registry=registry: render(registry, None, False), repeats)
        points.append({"label_sets": routes * 6, "render_ms": ms, "bytes": len(body)})
    return points


def worker_files_child(workers: int, routes: int, repeats: int) -> dict[str, Any]:
    """In a process started with PROMETHEUS_MULTIPROC_DIR: ``workers`` forked processes each fill
    every label set and exit (unfolded, as gunicorn leaves them without child_exit), then the
    directory is rendered as this package's /metrics does."""
    from prometheus_client import CollectorRegistry

    from flask_usage_otel import TrackUsage
    from flask_usage_otel.prometheus import render

    app = label_set_app(routes)
    TrackUsage(app)
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker: its own pid, its own files
            fill_label_sets(app, routes)
            os._exit(0)
        os.waitpid(pid, 0)
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    ms = median_ms(lambda: render(CollectorRegistry(), None, True), repeats)
    return {"workers": workers, "files": len(os.listdir(directory)), "render_ms": ms}


def workers_curve(worker_counts: Sequence[int], routes: int, repeats: int) -> list[dict[str, Any]]:
    points = []
    for workers in worker_counts:
        with tempfile.TemporaryDirectory(prefix="curves-mp-") as directory:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
            command = [sys.executable, __file__, "--worker-files-child", f"{workers},{routes},{repeats}"]
            out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=True)
            points.append({**json.loads(out.stdout.strip().splitlines()[-1]), "label_sets": routes * 6})
    return points


# -- 4. bytes ------------------------------------------------------------------------------------


class HeldStorage:
    """A storage whose first write waits until released: every later row stays queued."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def store(self, records: Any) -> None:
        self.release.wait(600)

    def get_usage(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return []


def queued_row_bytes(row_counts: Sequence[int]) -> list[dict[str, Any]]:
    """Memory the queue holds per row, as traced by tracemalloc across ``rows`` real requests."""
    from prometheus_client import CollectorRegistry

    from flask_usage_otel import TrackUsage

    points = []
    for rows in row_counts:
        app = Flask("queued")
        app.config.update(TRACK_USAGE_QUEUE_SIZE=rows + 10, TRACK_USAGE_BATCH_SIZE=1)

        @app.get("/items/<int:item_id>")
        def item(item_id: int) -> str:
            return "ok"

        storage = HeldStorage()
        tracker = TrackUsage(app, storage=storage, registry=CollectorRegistry())
        client = app.test_client()
        headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"}
        for i in range(3):  # series, caches and the writer thread exist before measuring
            client.get(f"/items/{i}?ref=bench", headers=headers)
        time.sleep(0.2)  # the writer took the first batch and waits in store()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(rows):
            client.get(f"/items/{i}?ref=bench", headers=headers)
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        storage.release.set()
        with app.app_context():
            tracker.flush(60)
        points.append({"rows": rows, "bytes_per_row": held / rows})
    return points


# -- the run -------------------------------------------------------------------------------------

FULL = {
    "routes": (10, 100, 1000),
    "workers": (1, 4, 16),
    "worker_routes": 100,
    "rtt_ms": (0.0, 1.0, 2.0, 5.0, 10.0),
    "writer_rows": 20_000,
    "table_rows": (100_000, 1_000_000, 10_000_000),
    "queued_rows": (2_000, 8_000, 20_000),
    "repeats": 7,
}
QUICK = {
    "routes": (1, 10, 100),
    "workers": (1, 2, 4),
    "worker_routes": 10,
    "rtt_ms": (0.0, 1.0, 5.0),
    "writer_rows": 2_000,
    "table_rows": (10_000, 30_000, 100_000),
    "queued_rows": (200, 500, 1_000),
    "repeats": 3,
}
CURVES = ("render", "workers", "writer", "storage", "bytes")


def run_curves(settings: dict[str, Any], only: Sequence[str] = CURVES) -> dict[str, Any]:
    """Every curve chosen, with its fits (what results/curves.json holds)."""
    data: dict[str, Any] = {"benchmark": "curves", "machine": machine_info(), "settings": settings, "curves": {}}
    curves = data["curves"]
    if "render" in only:
        curves["render"] = render_curve(settings["routes"], settings["repeats"])
    if "workers" in only:
        curves["workers"] = workers_curve(settings["workers"], settings["worker_routes"], settings["repeats"])
    if "writer" in only or "storage" in only:
        import curves_storage  # the databases' curves
    if "writer" in only:
        curves["writer"] = curves_storage.writer_curve(settings["rtt_ms"], settings["writer_rows"])
        mariadb = curves_storage.MARIADB_URL
        if curves_storage.reachable(mariadb):
            curves["writer_mariadb"] = curves_storage.writer_curve(settings["rtt_ms"], settings["writer_rows"], mariadb)
        else:
            print("MariaDB is not reachable: the writer's curve is PostgreSQL's only", file=sys.stderr)
    if "storage" in only:
        curves["storage"] = curves_storage.storage_curve(settings["table_rows"], settings["repeats"])
    if "bytes" in only:
        curves["queued_bytes"] = queued_row_bytes(settings["queued_rows"])
    data["fits"] = fits(curves)
    return data


def fits(curves: dict[str, Any]) -> dict[str, Any]:
    """The fitted growth of each measured cost, by name."""
    found: dict[str, Any] = {}

    def add(name: str, points: list[dict[str, Any]], x: str, y: str) -> None:
        usable = [p for p in points if p.get(y) is not None]
        if len({p[x] for p in usable}) >= 2:
            found[name] = fit([p[x] for p in usable], [p[y] for p in usable])

    add("render_ms_by_label_sets", curves.get("render", []), "label_sets", "render_ms")
    add("render_bytes_by_label_sets", curves.get("render", []), "label_sets", "bytes")
    add("render_ms_by_worker_files", curves.get("workers", []), "workers", "render_ms")
    add("writer_rows_per_s_by_rtt", [p for p in curves.get("writer", []) if p["rtt_ms"] > 0], "rtt_ms", "rows_per_s")
    add("writer_ms_per_batch_by_rtt", curves.get("writer", []), "rtt_ms", "ms_per_batch")
    mariadb = curves.get("writer_mariadb", [])
    add("writer_mariadb_rows_per_s_by_rtt", [p for p in mariadb if p["rtt_ms"] > 0], "rtt_ms", "rows_per_s")
    add("writer_mariadb_ms_per_batch_by_rtt", mariadb, "rtt_ms", "ms_per_batch")
    add("queued_bytes_by_rows", curves.get("queued_bytes", []), "rows", "bytes_per_row")
    for kind in ("plain", "partitioned"):
        points = [p for p in curves.get("storage", []) if p["kind"] == kind]
        for key in curves_storage_keys(points):
            add(f"{kind}_{key}_by_rows", points, "rows", key)
    return found


def curves_storage_keys(points: list[dict[str, Any]]) -> list[str]:
    return [k for k in (points[0] if points else {}) if k.endswith(("_ms", "bytes_per_row"))]


def draw(data: dict[str, Any], directory: Path) -> list[Path]:
    """The PNGs of the measured curves into ``directory``."""
    curves, drawn = data["curves"], []
    if "render" in curves and "workers" in curves:
        render, workers = curves["render"], curves["workers"]
        drawn.append(
            plot(
                directory / "curve-metrics-render.png",
                "/metrics render time",
                "label sets (routes x 2 methods x 3 statuses); workers' files (orange)",
                "ms per render",
                {
                    "in process, by label sets": ([p["label_sets"] for p in render], [p["render_ms"] for p in render]),
                    f"multiprocess, {workers[0]['label_sets']} label sets: "
                    + "{intercept:.0f} ms + {slope:.0f} ms per worker's files": (
                        [p["workers"] for p in workers],
                        [p["render_ms"] for p in workers],
                    ),
                },
            )
        )
    if "writer" in curves:
        series = {}
        for key, name in (("writer", "PostgreSQL"), ("writer_mariadb", "MariaDB")):
            if key in curves:
                points = curves[key]
                series[name + ": {intercept:.1f} ms + {slope:.1f} x RTT per batch"] = (
                    [p["rtt_ms"] for p in points],
                    [p["ms_per_batch"] for p in points],
                )
        drawn.append(
            plot(
                directory / "curve-writer-rtt.png",
                "Writer: time per batch against the database's round trip",
                "added round-trip time (ms)",
                "ms per batch of 500 rows (rows/s = 500,000 / ms)",
                series,
                log_x=False,
                log_y=False,
            )
        )
    if "storage" in curves:
        series = {}
        for kind in ("plain", "partitioned"):
            points = [p for p in curves["storage"] if p["kind"] == kind]
            for key, label in (("get_usage_one_day_ms", "get_usage, one day"), ("summary_all_ms", "summary, all")):
                series[f"{kind}: {label}"] = ([p["rows"] for p in points], [p[key] for p in points])
        drawn.append(plot(directory / "curve-storage-reads.png", "Reads against table size", "rows", "ms", series))
    return drawn


def print_results(data: dict[str, Any]) -> None:
    for name, points in data["curves"].items():
        print(f"\n{name}")
        print(format_table(list(points[0]), [list(p.values()) for p in points]))
    print("\nfitted growth (power-law exponent k; line: a + b * size)")
    rows = [[n, f["growth"], f["exponent"], f["intercept"], f["slope"], f["line_r2"]] for n, f in data["fits"].items()]
    print(format_table(["cost", "growth", "k", "a", "b", "line R2"], rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute or two)")
    parser.add_argument("--only", default=",".join(CURVES), help=f"comma-separated subset of {', '.join(CURVES)}")
    parser.add_argument("--table-rows", help="comma-separated table sizes for the storage curve")
    parser.add_argument("--plots", help="where the PNGs go ('' for none; default docs/img, results/ with --quick)")
    parser.add_argument("--output", default=RESULTS_DIR / "curves.json")
    parser.add_argument("--worker-files-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_files_child:
        workers, routes, repeats = map(int, args.worker_files_child.split(","))
        print(json.dumps(worker_files_child(workers, routes, repeats)))
        return 0
    settings = dict(QUICK if args.quick else FULL)
    if args.table_rows:
        settings["table_rows"] = tuple(int(n) for n in args.table_rows.split(","))
    data = run_curves(settings, args.only.split(","))
    print_results(data)
    # A quick run never overwrites the committed plots of a full one.
    plots = args.plots if args.plots is not None else str(RESULTS_DIR if args.quick else DOCS_IMG)
    if plots:
        for path in draw(data, Path(plots)):
            print(f"drew {path}")
    print(f"\nwrote {write_json(data, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
