"""Run every benchmark, each in its own process, and summarise them in one table and one JSON file.

    python benchmarks/run.py [--quick] [--only requests,http,...]

Each script prints its own table and writes ``benchmarks/results/<name>.json``. A script
that is not there yet is reported as absent; one that fails is reported with its exit code
and the run goes on. The summary gathers every script's targets (a ``targets`` list in its
JSON: ``name``, ``description``, ``value``, ``passed``) into ``results/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from report import BENCH_DIR, RESULTS_DIR, format_table, machine_info, print_targets, verdict, write_json


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    result: str


BENCHMARKS = (
    Benchmark("instructions", "bench_instructions.py", "instructions.json"),
    Benchmark("requests", "bench_requests.py", "requests.json"),
    Benchmark("http", "bench_http.py", "http.json"),
    Benchmark("metrics_render", "bench_metrics_render.py", "metrics_render.json"),
    Benchmark("storage", "bench_storage.py", "storage.json"),
    Benchmark("otel", "bench_otel.py", "otel.json"),
    Benchmark("curves", "bench_curves.py", "curves.json"),
)


def run_one(benchmark: Benchmark, quick: bool) -> dict[str, Any]:
    script = BENCH_DIR / benchmark.script
    entry: dict[str, Any] = {"name": benchmark.name, "script": benchmark.script}
    if not script.exists():
        return {**entry, "status": "absent", "seconds": 0.0}
    result = RESULTS_DIR / benchmark.result
    before = result.stat().st_mtime if result.exists() else None
    command = [sys.executable, str(script), *(["--quick"] if quick else [])]
    print(f"\n=== {benchmark.name}: {' '.join(command[1:])}", flush=True)
    start = time.monotonic()
    code = subprocess.call(command, cwd=BENCH_DIR.parent)
    entry["seconds"] = round(time.monotonic() - start, 1)
    entry["status"] = "ok" if code == 0 else f"failed (exit {code})"
    if result.exists() and result.stat().st_mtime != before:
        entry["result"] = str(result.relative_to(BENCH_DIR.parent))
        entry["targets"] = _targets_of(result, benchmark.name)
    return entry


def _targets_of(path: Path, benchmark: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    targets = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(targets, list):
        return []
    return [{**t, "benchmark": benchmark} for t in targets if isinstance(t, dict) and "description" in t]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(b.name for b in BENCHMARKS)}")
    args = parser.parse_args(argv)
    chosen = set(args.only.split(",")) if args.only else None
    entries = [run_one(b, args.quick) for b in BENCHMARKS if chosen is None or b.name in chosen]
    targets = [t for e in entries for t in e.get("targets", [])]

    print("\n=== summary")
    print(
        format_table(
            ["benchmark", "status", "seconds", "results"],
            [[e["name"], e["status"], e["seconds"], e.get("result", "-")] for e in entries],
        )
    )
    print_targets(targets)
    summary = {"benchmark": "summary", "quick": args.quick, "machine": machine_info(), "benchmarks": entries}
    print(f"\nwrote {write_json(summary, RESULTS_DIR / 'summary.json')}")
    failed = [e["name"] for e in entries if e["status"].startswith("failed")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    missed = [t for t in targets if t.get("passed") is False]
    print(
        f"targets: {sum(t.get('passed') is True for t in targets)} pass, {len(missed)} fail, "
        f"{sum(t.get('passed') is None for t in targets)} n/a; "
        + (", ".join(f"{t['benchmark']}:{t.get('name', '?')} {verdict(False)}" for t in missed) or "none missed")
    )
    # A missed target is a finding, not a crash: only a benchmark that failed to run fails the command.
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
