"""Instructions per request of each way of tracking a Flask app, counted by valgrind's callgrind.

Time on a shared machine swings by tens of percent between runs; the instructions a process
executes do not (callgrind counts the same ones to within a fraction of a percent). Each variant
runs in a process of its own under ``valgrind --tool=callgrind --instr-atstart=no``: the process
warms up, drains its background work, then turns counting on around exactly ``--requests``
requests (``app.wsgi_app`` with prebuilt environs, as bench_requests does), a drain of every
background worker (SQL writer, span exporter) and nothing else. Every thread is counted; the
request thread is reported apart. Afterwards the variant must prove it did its work: each
request counted by its metrics, each row in its table, each span exported, else it fails.

The same process counts a little differently when its memory sits elsewhere (addresses feed
hashes and alignment) and when its classes get other version tags (CPython's method cache: see
``layout_child.py``), so every variant runs once per *layout*: the environment padded by a
different number of bytes, and one throwaway class made per 10 bytes of padding before anything
is imported. The table gives the median and the spread over layouts.

    python benchmarks/bench_instructions.py [--quick] [--variants a,b] [--requests N] [--annotate]

``--annotate`` adds callgrind_annotate's heaviest functions for ours (the files stay in
``results/callgrind/``). Needs valgrind and a C compiler (``benchmarks/ensure_tools.sh``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import callgrind
from apps import (
    VARIANTS_BY_KEY,
    Setup,
    Unavailable,
    build_app,
    ours_everything_setup,
    ours_sql_setup,
)
from bench_requests import check_responses, drive, prebuilt_environs
from flask import Flask
from report import BENCH_DIR, RESULTS_DIR, format_table, machine_info, print_targets, write_json

FULL = {"requests": 500, "warmup": 300, "layouts": (0, 1500, 4000)}
QUICK = {"requests": 100, "warmup": 50, "layouts": (0, 1500)}
CHILD_TIMEOUT = 900.0

REQUESTS_LABEL = "requests"
DRAIN_LABEL = "drain"
LAYOUT_ENV = "BENCH_LAYOUT_PADDING"
POSTGRES_URL_ENV = "BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


# --- the variants -----------------------------------------------------------------------
# The peers as bench_requests runs them; ours with the writer's own defaults (it writes while
# requests come in, as in production), plus PostgreSQL.


def setup_ours_sql_default(app: Flask, workdir: Path) -> Setup:
    return ours_sql_setup(app, f"sqlite:///{workdir / 'ours.db'}")


def setup_ours_sql_postgres(app: Flask, workdir: Path) -> Setup:
    url = os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)
    reachable(url)
    # A table of its own: the server is shared with other runs; dropped at the end.
    return ours_sql_setup(app, url, table_name=f"bench_usage_{uuid.uuid4().hex[:12]}", drop_table=True)


def setup_ours_everything_default(app: Flask, workdir: Path) -> Setup:
    return ours_everything_setup(app, workdir)


def reachable(url: str) -> None:
    """Raise Unavailable unless the database at ``url`` answers within a few seconds."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, connect_args={"connect_timeout": 3} if url.startswith("postgresql") else {})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        raise Unavailable(f"database not reachable at {engine.url.render_as_string()}: {type(exc).__name__}") from exc
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    setup: Callable[[Flask, Path], Setup]


def _peer(key: str) -> Variant:
    peer = VARIANTS_BY_KEY[key]
    return Variant(peer.key, peer.label, peer.setup)


VARIANTS: tuple[Variant, ...] = (
    _peer("bare"),
    _peer("handwritten"),
    _peer("prometheus_flask_exporter"),
    _peer("otel_instrumentation"),
    _peer("flask_track_usage"),
    _peer("ours_prometheus"),
    Variant("ours_sql", "ours: Prometheus + SQL rows (SQLite)", setup_ours_sql_default),
    Variant("ours_sql_postgres", "ours: Prometheus + SQL rows (PostgreSQL)", setup_ours_sql_postgres),
    Variant("ours_everything", "ours: Prometheus + SQL (SQLite) + spans", setup_ours_everything_default),
)
BY_KEY = {v.key: v for v in VARIANTS}
# Work a variant must have done once per measured request, by the name Setup.work gives it.
CHECKED_WORK = ("requests", "rows", "spans")


# --- inside the measured process ----------------------------------------------------------


class WorkNotDone(Exception):
    """The variant answered but did not record every request it was sent."""


def check_work(before: dict[str, int], after: dict[str, int], requests: int) -> dict[str, int]:
    """The work done in the window; raises WorkNotDone unless every checked kind moved by ``requests``."""
    done = {kind: after[kind] - before.get(kind, 0) for kind in after}
    short = [f"{kind} {done[kind]} of {requests}" for kind in CHECKED_WORK if kind in done and done[kind] != requests]
    if short:
        raise WorkNotDone("did not do its work: " + ", ".join(short))
    return done


def measure_in_process(
    variant: Variant, requests: int, warmup: int, switch: callgrind.Switch, workdir: Path
) -> dict[str, Any]:
    """Set the variant up, warm it, count ``requests`` requests and the drain, check its work."""
    app = build_app(f"instr_{variant.key}")
    try:
        setup = variant.setup(app, workdir)
    except Unavailable as exc:
        return {"status": "skipped", "reason": str(exc)}
    try:
        environs = prebuilt_environs()
        wsgi = app.wsgi_app
        problem = check_responses(wsgi, environs)
        if problem is not None:
            return {"status": "failed", "reason": problem}
        drive(wsgi, environs, warmup)
        drain = setup.drain or (lambda: None)
        drain()
        before = setup.work() if setup.work else {}
        # The same collector state at every start, whatever the warm-up and the checks left behind.
        gc.collect()
        switch.start()
        drive(wsgi, environs, requests)
        switch.dump(REQUESTS_LABEL)
        drain()
        switch.dump(DRAIN_LABEL)
        switch.stop()
        after = setup.work() if setup.work else {}
        try:
            done = check_work(before, after, requests)
        except WorkNotDone as exc:
            return {"status": "failed", "reason": str(exc), "work": after}
        return {"status": "ok", "work": done, "under_valgrind": switch.under_valgrind}
    finally:
        setup.close()


def child_main(key: str, requests: int, warmup: int, result_path: Path) -> int:
    """The measured process: writes its outcome as JSON to ``result_path``."""
    switch = callgrind.Switch(callgrind.helper_path())
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-instr-{key}-"))
    try:
        outcome = measure_in_process(BY_KEY[key], requests, warmup, switch, workdir)
    except Exception as exc:  # reported by the parent with the variant's name
        outcome = {"status": "failed", "reason": f"raised {exc!r}"}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result_path.write_text(json.dumps(outcome), encoding="utf-8")
    return 0


# --- the parent: one process per variant and layout ---------------------------------------


def run_variant(key: str, requests: int, warmup: int, padding: int, out_dir: Path) -> dict[str, Any]:
    """One variant under callgrind with the environment padded by ``padding`` bytes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / f"{key}-pad{padding}.out"
    for old in out_dir.glob(out_file.name + "*"):
        old.unlink()
    result_path = out_dir / f"{key}-pad{padding}.json"
    env = {**os.environ, LAYOUT_ENV: "x" * padding, "PYTHONHASHSEED": "0"}
    argv = [sys.executable, str(BENCH_DIR / "layout_child.py"), "--child", key]
    argv += ["--requests", str(requests), "--warmup", str(warmup), "--result", str(result_path)]
    start = time.monotonic()
    proc = subprocess.run(
        callgrind.command(out_file, argv), env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT
    )
    entry: dict[str, Any] = {"padding": padding, "seconds": round(time.monotonic() - start, 1)}
    if proc.returncode != 0 or not result_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {**entry, "status": "failed", "reason": f"exit {proc.returncode}: " + " | ".join(tail)}
    outcome = json.loads(result_path.read_text(encoding="utf-8"))
    entry.update(outcome)
    if outcome["status"] != "ok":
        return entry
    if not outcome.get("under_valgrind"):
        return {**entry, "status": "failed", "reason": "the process did not run under valgrind"}
    counted = callgrind.counts(callgrind.read_parts(out_file), REQUESTS_LABEL, DRAIN_LABEL)
    entry.update(
        request_thread=counted.request_thread,
        request_thread_drain=counted.request_thread_drain,
        other_threads=counted.other_threads,
        total=counted.total,
        threads=counted.threads,
        files=[str(p.path) for p in callgrind.read_parts(out_file)],
    )
    return entry


def summarise(key: str, label: str, layouts: list[dict[str, Any]], requests: int) -> dict[str, Any]:
    """Per-request figures of one variant: medians over layouts, and their spread."""
    entry: dict[str, Any] = {"key": key, "label": label, "layouts": layouts}
    bad = next((run for run in layouts if run["status"] != "ok"), None)
    if bad is not None:
        return {**entry, "status": bad["status"], "reason": bad.get("reason")}
    totals = [run["total"] / requests for run in layouts]
    entry.update(
        status="ok",
        per_request=statistics.median(totals),
        request_thread=statistics.median(run["request_thread"] / requests for run in layouts),
        background=statistics.median((run["total"] - run["request_thread"]) / requests for run in layouts),
        spread_pct=(max(totals) - min(totals)) / statistics.median(totals) * 100,
        work=layouts[0]["work"],
    )
    # Per row only where rows are written off the request thread (a writer that commits batches).
    rows = layouts[0]["work"].get("rows") if "commits" in layouts[0]["work"] else None
    if rows:
        per_row = [(run["total"] - run["request_thread"]) / rows for run in layouts]
        entry["background_per_row"] = statistics.median(per_row)
    return entry


def add_overheads(variants: list[dict[str, Any]]) -> None:
    bare = next((v for v in variants if v["key"] == "bare" and v["status"] == "ok"), None)
    if bare is None:
        return
    for v in variants:
        if v["status"] == "ok":
            v["overhead"] = v["per_request"] - bare["per_request"]
            v["request_thread_overhead"] = v["request_thread"] - bare["request_thread"]


def _get(variants: Sequence[dict[str, Any]], key: str, field: str) -> float | None:
    entry = next((v for v in variants if v["key"] == key and v["status"] == "ok"), None)
    return None if entry is None else entry.get(field)


def _target(name: str, description: str, value: float | None, limit: float, at_most: bool = True) -> dict[str, Any]:
    passed = None if value is None else (value <= limit if at_most else value >= limit)
    return {
        "name": name,
        "description": description,
        "value": value,
        "limit": limit,
        "passed": passed,
        "note": "" if value is not None else "a variant it needs did not run",
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def targets(variants: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 20's instruction-count targets ("no cost added"), judged on this run's medians."""
    prom_thread = _get(variants, "ours_prometheus", "request_thread")
    found = [
        _target(
            "instr_prometheus_vs_handwritten",
            "instructions: ours Prometheus overhead / hand-written pair overhead <= 1.0",
            _ratio(_get(variants, "ours_prometheus", "overhead"), _get(variants, "handwritten", "overhead")),
            1.0,
        )
    ]
    for key, db in (("ours_sql", "SQLite"), ("ours_sql_postgres", "PostgreSQL")):
        found.append(
            _target(
                f"instr_sql_request_thread_{db.lower()}",
                f"instructions: SQL rows on the request thread ({db}), over Prometheus only <= 36,000",
                _minus(_get(variants, key, "request_thread"), prom_thread),
                36_000,
            )
        )
        found.append(
            _target(
                f"instr_sql_per_row_{db.lower()}",
                f"instructions: writer per row ({db}), every other thread and the drain <= 100,000",
                _get(variants, key, "background_per_row"),
                100_000,
            )
        )
    found.append(
        _target(
            "instr_everything_vs_otel_instrumentation",
            "instructions: ours everything-on overhead / opentelemetry-instrumentation-flask overhead <= 0.38",
            _ratio(_get(variants, "ours_everything", "overhead"), _get(variants, "otel_instrumentation", "overhead")),
            0.38,
        )
    )
    return found


def run_benchmark(
    keys: Sequence[str] | None = None,
    *,
    requests: int = FULL["requests"],
    warmup: int = FULL["warmup"],
    layouts: Sequence[int] = FULL["layouts"],
    out_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every chosen variant under callgrind once per layout; what the JSON file holds."""
    chosen = list(keys) if keys else [v.key for v in VARIANTS]
    if "bare" not in chosen:
        chosen.insert(0, "bare")  # every overhead is measured against it
    unknown = [k for k in chosen if k not in BY_KEY]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {', '.join(BY_KEY)}")
    problem = callgrind.missing_tools()
    if problem:
        raise callgrind.ToolMissing(problem)
    callgrind.helper_path()  # built once here, not by every child at once
    out_dir = out_dir or RESULTS_DIR / "callgrind"
    variants = []
    for key in chosen:
        runs = []
        for padding in layouts:
            run = run_variant(key, requests, warmup, padding, out_dir)
            runs.append(run)
            if progress:
                shown = f"{run['total'] / requests:,.0f}/request" if run["status"] == "ok" else run.get("reason")
                print(f"  {key:<26} layout +{padding:>5} B  {run['seconds']:>6.1f} s  {shown}", flush=True)
            if run["status"] != "ok":
                break  # a skipped or failed variant fails the same way in every layout
        variants.append(summarise(key, BY_KEY[key].label, runs, requests))
    add_overheads(variants)
    return {
        "benchmark": "instructions",
        "machine": machine_info(),
        "settings": {"requests": requests, "warmup": warmup, "layouts_env_padding": list(layouts)},
        "variants": variants,
        "targets": targets(variants),
    }


def annotate(data: dict[str, Any], keys: Sequence[str], top: int) -> str:
    """callgrind_annotate's heaviest functions of the first layout of each of ``keys``."""
    out = []
    for entry in data["variants"]:
        if entry["key"] not in keys or entry["status"] != "ok":
            continue
        files = [Path(f) for f in entry["layouts"][0]["files"]]
        request = [f for f in files if f.name.endswith(f".{1}-{callgrind.REQUEST_THREAD:02d}")]
        others = [f for f in files if not f.name.endswith(f"-{callgrind.REQUEST_THREAD:02d}")]
        out.append(f"\n--- {entry['key']}: request thread, the request loop")
        out.append(callgrind.annotate(request, top))
        for other in others:
            out.append(f"\n--- {entry['key']}: {other.name} (a background thread)")
            out.append(callgrind.annotate([other], top))
    return "\n".join(out)


def print_results(data: dict[str, Any]) -> None:
    s = data["settings"]
    print(
        f"\nInstructions per request under callgrind ({s['requests']} requests after {s['warmup']} warm-up,"
        f" every thread, background drained inside the window; median over {len(s['layouts_env_padding'])}"
        " memory layouts)"
    )
    rows = []
    for v in data["variants"]:
        if v["status"] != "ok":
            rows.append([v["label"], None, None, None, None, None, None, f"{v['status']}: {v.get('reason')}"])
            continue
        work = ", ".join(f"{k} {n}" for k, n in v["work"].items()) or "responses only"
        rows.append(
            [
                v["label"],
                round(v["per_request"]),
                round(v.get("overhead", 0)),
                round(v["request_thread"]),
                round(v["background"]),
                round(v["background_per_row"]) if "background_per_row" in v else None,
                round(v["spread_pct"], 2),
                work,
            ]
        )
    headers = ["variant", "per request", "overhead", "request thread", "background", "per row", "spread %", "work"]
    print(format_table(headers, rows))
    print_targets(data["targets"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, two layouts")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--layouts", help="comma-separated environment paddings in bytes, e.g. 0,1500,4000")
    parser.add_argument("--variants", help=f"comma-separated subset of: {', '.join(BY_KEY)}")
    parser.add_argument("--annotate", action="store_true", help="callgrind_annotate's top functions for ours")
    parser.add_argument("--top", type=int, default=25, help="functions per annotated file")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "instructions.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    requests = args.requests or sizes["requests"]
    warmup = args.warmup if args.warmup is not None else sizes["warmup"]
    if args.child:
        return child_main(args.child, requests, warmup, args.result)
    layouts = tuple(int(p) for p in args.layouts.split(",")) if args.layouts else sizes["layouts"]
    keys = args.variants.split(",") if args.variants else None
    try:
        data = run_benchmark(keys, requests=requests, warmup=warmup, layouts=layouts, progress=True)
    except callgrind.ToolMissing as exc:
        print(f"instruction counts skipped: {exc}", file=sys.stderr)
        return 1
    print_results(data)
    if args.annotate:
        print(annotate(data, [v["key"] for v in data["variants"] if v["key"].startswith("ours")], args.top))
    print(f"\nwrote {write_json(data, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
