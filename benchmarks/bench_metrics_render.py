"""What a scrape of ``/metrics`` costs: ours beside prometheus_flask_exporter's, in process and multiprocess.

Each size is an app with ``routes`` routes, each answering ``methods`` methods with ``statuses``
statuses; one request per (route, method, status) fills the series. The same app is tracked by
``TrackUsage`` and, apart, by prometheus_flask_exporter (pfe), each on a fresh registry, and each
registry is rendered in the Prometheus text format and in OpenMetrics (what Prometheus asks for).
For multiprocess mode, a child process with ``PROMETHEUS_MULTIPROC_DIR`` set serves the same
requests and exits; its files are folded into archives as gunicorn's ``child_exit`` hook does
(``compact_dead_worker``), and the folded directory is rendered as ``/metrics`` renders it.

    python benchmarks/bench_metrics_render.py [--quick] [--sizes 1x1x1,100x2x3,1000x2x3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask, request
from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_exposition
from report import RESULTS_DIR, format_table, machine_info, write_json
from werkzeug.test import EnvironBuilder

SIZES = ((1, 1, 1), (100, 2, 3), (1000, 2, 3))
METHODS = ("GET", "POST", "PUT")
STATUSES = (200, 404, 500, 201)
FORMATS = {"text": None, "openmetrics": "application/openmetrics-text; version=1.0.0"}
FULL_REPEATS, QUICK_REPEATS = 15, 3


def app_with_routes(routes: int, methods: int) -> Flask:
    app = Flask(f"render_{routes}")
    for i in range(routes):
        app.add_url_rule(
            f"/r{i}/<int:item_id>",
            endpoint=f"r{i}",
            view_func=lambda item_id: ("ok", int(request.args.get("status", 200))),
            methods=list(METHODS[:methods]),
        )
    return app


def fill_series(app: Flask, routes: int, methods: int, statuses: int) -> None:
    """One request per (route, method, status), so each label set has its series."""
    for i in range(routes):
        for method in METHODS[:methods]:
            for status in STATUSES[:statuses]:
                environ = EnvironBuilder(path=f"/r{i}/1", method=method, query_string=f"status={status}").get_environ()
                body = app.wsgi_app(environ, lambda *args: None)
                for _chunk in body:
                    pass
                getattr(body, "close", lambda: None)()


_APPS: list[Flask] = []  # alive while their registries are rendered: the route inventory lists their routes


def tracked(kind: str, routes: int, methods: int, statuses: int) -> CollectorRegistry:
    app = app_with_routes(routes, methods)
    _APPS.append(app)
    registry = CollectorRegistry()
    if kind == "ours":
        from flask_usage_otel import TrackUsage

        TrackUsage(app, registry=registry)
    else:
        from prometheus_flask_exporter import PrometheusMetrics

        PrometheusMetrics(app, registry=registry)
    fill_series(app, routes, methods, statuses)
    return registry


def timed(render: Callable[[], bytes], repeats: int) -> tuple[float, int]:
    """Median ms of ``repeats`` renders after a first one (which fills our renderers' caches), and the size."""
    body = render()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        render()
        timings.append((time.perf_counter() - start) * 1e3)
    return statistics.median(timings), len(body)


def in_process(kind: str, size: tuple[int, int, int], repeats: int) -> dict[str, Any]:
    from flask_usage_otel.prometheus import render

    registry = tracked(kind, *size)
    entry: dict[str, Any] = {"samples": sum(len(m.samples) for m in registry.collect())}
    for name, accept in FORMATS.items():
        if kind == "ours":
            entry[f"{name}_ms"], entry[f"{name}_bytes"] = timed(lambda a=accept: render(registry, a, False)[0], repeats)
        else:
            encoder, _ = text_exposition.choose_encoder(accept or "")
            entry[f"{name}_ms"], entry[f"{name}_bytes"] = timed(lambda e=encoder: e(registry), repeats)
    return entry


CHILD = """
import sys
sys.path.insert(0, {bench!r})
from bench_metrics_render import tracked
tracked({kind!r}, {routes}, {methods}, {statuses})
print(__import__("os").getpid())
"""


def folded(kind: str, size: tuple[int, int, int], repeats: int) -> dict[str, Any]:
    """A dead worker's files folded into archives, rendered as the multiprocess ``/metrics`` renders them."""
    from flask_usage_otel.prometheus.multiprocess import LockedMultiProcessCollector, compact_dead_worker

    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        code = CHILD.format(
            bench=os.path.dirname(os.path.abspath(__file__)),
            kind=kind,
            routes=size[0],
            methods=size[1],
            statuses=size[2],
        )
        pid = int(
            subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
        )
        compact_dead_worker(directory, pid)
        registry = CollectorRegistry()
        LockedMultiProcessCollector(registry, path=directory)
        entry: dict[str, Any] = {"samples": sum(len(m.samples) for m in registry.collect())}
        if kind == "ours":  # as /metrics renders it: our directory scrape, which keeps what it decoded
            from flask_usage_otel.prometheus import render

            os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
            try:
                start = time.perf_counter()
                render(CollectorRegistry(), None, True)
                entry["first_ms"] = (time.perf_counter() - start) * 1e3
                scrape = timed(lambda: render(CollectorRegistry(), None, True)[0], repeats)
            finally:
                del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        else:  # as prometheus_flask_exporter renders it
            scrape = timed(lambda: text_exposition.generate_latest(registry), repeats)
        entry["text_ms"], entry["text_bytes"] = scrape
    return entry


def measure(size: tuple[int, int, int], repeats: int) -> dict[str, Any]:
    label_sets = size[0] * size[1] * size[2]
    entry: dict[str, Any] = {"size": "x".join(map(str, size)), "label_sets": label_sets}
    for kind in ("ours", "pfe"):
        entry[kind] = in_process(kind, size, repeats)
        entry[f"{kind}_folded"] = folded(kind, size, repeats)
    entry["ours_over_pfe"] = entry["ours"]["text_ms"] / entry["pfe"]["text_ms"]
    entry["ours_over_pfe_openmetrics"] = entry["ours"]["openmetrics_ms"] / entry["pfe"]["openmetrics_ms"]
    entry["ours_folded_over_in_process"] = entry["ours_folded"]["text_ms"] / entry["ours"]["text_ms"]
    return entry


def run_benchmark(sizes: Sequence[tuple[int, int, int]] = SIZES, repeats: int = FULL_REPEATS) -> dict[str, Any]:
    """Render times for each size (what the JSON file holds)."""
    return {
        "benchmark": "metrics_render",
        "machine": machine_info(),
        "settings": {"repeats": repeats},
        "sizes": [measure(size, repeats) for size in sizes],
    }


def print_results(data: dict[str, Any]) -> None:
    print(f"/metrics render time (ms, median of {data['settings']['repeats']}); size = routes x methods x statuses")
    rows = []
    for s in data["sizes"]:
        for kind in ("ours", "pfe", "ours_folded", "pfe_folded"):
            e = s[kind]
            per_set = e["samples"] / s["label_sets"]
            rows.append(
                [
                    s["size"],
                    kind,
                    e["samples"],
                    f"{per_set:.1f}",
                    e["text_ms"],
                    e["text_bytes"],
                    e.get("openmetrics_ms", "-"),
                ]
            )
    print(
        format_table(["size", "exporter", "samples", "per label set", "text ms", "text bytes", "openmetrics ms"], rows)
    )
    for s in data["sizes"]:
        print(
            f"{s['size']}: ours/pfe text {s['ours_over_pfe']:.2f} (target <= 1.25), openmetrics "
            f"{s['ours_over_pfe_openmetrics']:.2f}; folded/in-process "
            f"{s['ours_folded_over_in_process']:.2f} (target <= 1.2)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPEATS} renders per size")
    parser.add_argument("--sizes", default=",".join("x".join(map(str, s)) for s in SIZES), help="e.g. 1000x2x3,100x2x3")
    parser.add_argument("--output", default=RESULTS_DIR / "metrics_render.json")
    args = parser.parse_args(argv)
    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]
    data = run_benchmark(sizes, QUICK_REPEATS if args.quick else FULL_REPEATS)  # type: ignore[arg-type]
    print_results(data)
    print(f"\nwrote {write_json(data, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
