"""In-process cost per request of each way of tracking a Flask app, side by side in one run.

Each variant instruments its own fresh three-route app. Requests go straight through
``app.wsgi_app(environ, start_response)`` with prebuilt environs (copied per call), the body
consumed and closed, so the figure is Flask plus the tracking and nothing else. Variants are
interleaved round-robin over several rounds (the starting variant rotates) and each reports
the median over rounds; the overhead is the median of the per-round differences to bare
Flask, which cancels drift between rounds.

Background work a variant queued (span export, SQL writes) is drained after each timed batch,
outside the request-path time, and reported separately as ``drain`` µs per request.

    python benchmarks/bench_requests.py [--quick] [--rounds N] [--requests N] [--variants a,b]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps import PATHS, VARIANTS, VARIANTS_BY_KEY, Setup, Unavailable, Variant, build_app
from report import RESULTS_DIR, format_table, machine_info, print_targets, write_json
from werkzeug.test import EnvironBuilder

FULL = {"rounds": 15, "requests": 2000, "warmup": 300}
QUICK = {"rounds": 5, "requests": 300, "warmup": 100}

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class Run:
    """One variant during a benchmark: its app, its samples, or why it did not run."""

    variant: Variant
    status: str = "ok"  # ok | skipped | failed
    reason: str | None = None
    wsgi: WsgiApp | None = None
    setup: Setup | None = None
    samples_us: list[float] = field(default_factory=list)
    drain_us: list[float] = field(default_factory=list)


def prebuilt_environs(paths: Sequence[str] = PATHS) -> list[dict[str, Any]]:
    return [EnvironBuilder(path=path, headers={"User-Agent": "bench/1.0"}).get_environ() for path in paths]


def _start_response(status: str, headers: Any, exc_info: Any = None) -> None:
    pass


def drive(wsgi: WsgiApp, environs: Sequence[dict[str, Any]], count: int) -> float:
    """Seconds taken by ``count`` requests cycling over ``environs``."""
    kinds = len(environs)
    start_response = _start_response
    start = time.perf_counter()
    for i in range(count):
        body = wsgi(environs[i % kinds].copy(), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return time.perf_counter() - start


def respond(wsgi: WsgiApp, environ: dict[str, Any]) -> tuple[str, bytes]:
    """One request: its status line and body."""
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    body = wsgi(environ.copy(), start_response)
    content = b"".join(body)
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return (statuses[0] if statuses else "nothing"), content


def check_responses(wsgi: WsgiApp, environs: Sequence[dict[str, Any]]) -> str | None:
    """None when every route answers 200 under this variant, else what went wrong."""
    for environ in environs:
        status, content = respond(wsgi, environ)
        if not status.startswith("200"):
            return f"{environ['PATH_INFO']} answered {status}: {content[:200]!r}"
    return None


def prepare(variant: Variant, workdir: Path, environs: Sequence[dict[str, Any]]) -> Run:
    run = Run(variant)
    app = build_app(f"bench_{variant.key}")
    try:
        run.setup = variant.setup(app, workdir)
    except Unavailable as exc:
        run.status, run.reason = "skipped", str(exc)
        return run
    except Exception as exc:  # a broken peer is reported, not fatal
        run.status, run.reason = "failed", f"set-up raised {exc!r}"
        return run
    run.wsgi = app.wsgi_app  # after set-up: some variants wrap it
    problem = check_responses(run.wsgi, environs)
    if problem is not None:
        run.status, run.reason, run.wsgi = "failed", problem, None
    return run


def measure(runs: Sequence[Run], environs: Sequence[dict[str, Any]], rounds: int, requests: int, warmup: int) -> None:
    active = [(run, run.wsgi, run.setup) for run in runs if run.wsgi is not None and run.setup is not None]
    for _run, wsgi, setup in active:
        drive(wsgi, environs, warmup)
        if setup.drain is not None:
            setup.drain()
    for round_index in range(rounds):
        shift = round_index % len(active) if active else 0
        for run, wsgi, setup in active[shift:] + active[:shift]:
            gc.collect()
            seconds = drive(wsgi, environs, requests)
            run.samples_us.append(seconds / requests * 1e6)
            if setup.drain is not None:
                start = time.perf_counter()
                setup.drain()
                run.drain_us.append((time.perf_counter() - start) / requests * 1e6)


def summarise(runs: Sequence[Run]) -> list[dict[str, Any]]:
    bare = next((r for r in runs if r.variant.key == "bare" and r.status == "ok"), None)
    results = []
    for run in runs:
        entry: dict[str, Any] = {"key": run.variant.key, "label": run.variant.label, "status": run.status}
        if run.reason:
            entry["reason"] = run.reason
        if run.status == "ok" and run.samples_us:
            entry["median_us"] = statistics.median(run.samples_us)
            entry["min_us"] = min(run.samples_us)
            if bare is not None:
                diffs = [s - b for s, b in zip(run.samples_us, bare.samples_us, strict=True)]
                entry["overhead_us"] = statistics.median(diffs)
            entry["drain_us"] = statistics.median(run.drain_us) if run.drain_us else None
            entry["rounds_us"] = [round(s, 2) for s in run.samples_us]
        results.append(entry)
    return results


def _overhead(results: Sequence[dict[str, Any]], key: str) -> float | None:
    entry = next((e for e in results if e["key"] == key), None)
    return None if entry is None else entry.get("overhead_us")


def _target(name: str, description: str, value: float | None, limit: float, note: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "value": value,
        "limit": limit,
        "passed": None if value is None else value <= limit,
        "note": note
        if value is not None
        else "no verdict: a variant it compares did not run, or its overhead was not positive (noise)",
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def targets(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's in-process targets, judged on this run's medians."""
    prom = _overhead(results, "ours_prometheus")
    sql = _overhead(results, "ours_sql")
    everything = _overhead(results, "ours_everything")
    sql_extra = None if sql is None or prom is None else sql - prom
    return [
        _target(
            "prometheus_vs_handwritten",
            "noisy (time): ours (Prometheus only) overhead / hand-written pair overhead <= 1.0",
            _ratio(prom, _overhead(results, "handwritten")),
            1.0,
        ),
        _target(
            "prometheus_vs_exporter",
            "noisy (time): ours (Prometheus only) overhead / prometheus_flask_exporter overhead <= 0.5",
            _ratio(prom, _overhead(results, "prometheus_flask_exporter")),
            0.5,
        ),
        _target("sql_enqueue", "noisy (time): ours + SQL minus ours Prometheus only, µs <= 5", sql_extra, 5.0),
        _target(
            "everything_vs_otel_instrumentation",
            "noisy (time): ours + SQL + spans overhead / opentelemetry-instrumentation-flask overhead <= 0.5",
            _ratio(everything, _overhead(results, "otel_instrumentation")),
            0.5,
        ),
    ]


def run_benchmark(
    variant_keys: Sequence[str] | None = None,
    *,
    rounds: int = FULL["rounds"],
    requests: int = FULL["requests"],
    warmup: int = FULL["warmup"],
) -> dict[str, Any]:
    """Run the benchmark and return its results (what the JSON file holds)."""
    keys = list(variant_keys) if variant_keys else [v.key for v in VARIANTS]
    if "bare" not in keys:
        keys.insert(0, "bare")  # every overhead is measured against it
    unknown = [k for k in keys if k not in VARIANTS_BY_KEY]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {', '.join(VARIANTS_BY_KEY)}")
    environs = prebuilt_environs()
    workdir = Path(tempfile.mkdtemp(prefix="bench-requests-"))
    runs = [prepare(VARIANTS_BY_KEY[key], workdir, environs) for key in keys]
    try:
        measure(runs, environs, rounds, requests, warmup)
    finally:
        for run in runs:
            if run.setup is not None:
                run.setup.close()
        shutil.rmtree(workdir, ignore_errors=True)
    results = summarise(runs)
    return {
        "benchmark": "requests",
        "machine": machine_info(),
        "settings": {"rounds": rounds, "requests_per_round": requests, "warmup": warmup, "paths": list(PATHS)},
        "variants": results,
        "targets": targets(results),
    }


def profile(variant_key: str, requests: int, top: int = 30) -> None:
    """cProfile ``requests`` requests of one variant and print where the time goes."""
    import cProfile
    import pstats

    environs = prebuilt_environs()
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    run = prepare(VARIANTS_BY_KEY[variant_key], workdir, environs)
    try:
        if run.wsgi is None:
            raise SystemExit(f"{variant_key} did not run: {run.reason}")
        drive(run.wsgi, environs, 500)
        profiler = cProfile.Profile()
        profiler.runcall(drive, run.wsgi, environs, requests)
    finally:
        if run.setup is not None:
            run.setup.close()
        shutil.rmtree(workdir, ignore_errors=True)
    stats = pstats.Stats(profiler).strip_dirs()
    print(f"cProfile of {requests} requests, {variant_key}: by own time")
    stats.sort_stats("tottime").print_stats(top)
    print("by cumulative time")
    stats.sort_stats("cumulative").print_stats(top)


def print_results(data: dict[str, Any]) -> None:
    machine = data["machine"]
    settings = data["settings"]
    print(
        "In-process, µs per request (time-based, noisy: bench_instructions.py counts instructions;"
        f" median of {settings['rounds']} rounds x {settings['requests_per_round']}"
        f" requests) - Python {machine['python']}, Flask {machine['packages']['flask']}, {machine['cpu_model']}"
        f" x{machine['cpu_count']}"
    )
    rows = []
    for entry in data["variants"]:
        if entry["status"] == "ok":
            rows.append([entry["label"], entry.get("median_us"), entry.get("overhead_us"), entry.get("drain_us"), ""])
        else:
            rows.append([entry["label"], None, None, None, f"{entry['status']}: {entry.get('reason', '')}"])
    print(format_table(["variant", "µs/request", "overhead µs", "drain µs", "note"], rows))
    print_targets(data["targets"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests (a minute, not several)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--requests", type=int, help="requests per variant per round")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--variants", help=f"comma-separated subset of: {', '.join(VARIANTS_BY_KEY)}")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "requests.json")
    parser.add_argument("--profile", metavar="VARIANT", help="cProfile one variant (--requests of them) instead")
    args = parser.parse_args(argv)
    if args.profile:
        profile(args.profile, args.requests or 20000)
        return 0
    sizes = dict(QUICK if args.quick else FULL)
    for name in ("rounds", "requests", "warmup"):
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    keys = args.variants.split(",") if args.variants else None
    data = run_benchmark(keys, **sizes)
    print_results(data)
    print(f"\nwrote {write_json(data, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
