"""The benchmark harness runs and reports (tiny N); timings are measured in benchmarks/, never asserted."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench_modules() -> dict[str, ModuleType]:
    # The scripts import their siblings by plain name, as they do when run as `python benchmarks/x.py`.
    sys.path.insert(0, str(BENCH_DIR))
    try:
        return {name: importlib.import_module(name) for name in ("bench_requests", "bench_metrics_render")}
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="module")
def requests_run(bench_modules: dict[str, ModuleType]) -> dict:
    # Every variant, so a peer whose package is missing here proves it is skipped, not fatal.
    return bench_modules["bench_requests"].run_benchmark(rounds=2, requests=6, warmup=3)


def test_requests_benchmark_measures_bare_and_ours(requests_run: dict) -> None:
    by_key = {v["key"]: v for v in requests_run["variants"]}
    for key in ("bare", "ours_prometheus"):
        entry = by_key[key]
        assert entry["status"] == "ok", entry.get("reason")
        assert len(entry["rounds_us"]) == 2
        assert all(sample > 0 for sample in entry["rounds_us"])
        assert entry["median_us"] > 0
    assert by_key["bare"]["overhead_us"] == 0
    assert isinstance(by_key["ours_prometheus"]["overhead_us"], float)


def test_every_variant_is_measured_or_says_why_not(requests_run: dict, bench_modules: dict[str, ModuleType]) -> None:
    keys = [v["key"] for v in requests_run["variants"]]
    assert keys == [v.key for v in bench_modules["bench_requests"].VARIANTS]
    for entry in requests_run["variants"]:
        if entry["status"] == "ok":
            assert entry["median_us"] > 0
            continue
        # Ours may be skipped only while a part is not built; a peer may also fail on a newer Flask.
        allowed = ("skipped",) if entry["key"].startswith("ours") else ("skipped", "failed")
        assert entry["status"] in allowed, entry
        assert entry["reason"]


def test_requests_benchmark_reports_machine_and_targets(requests_run: dict) -> None:
    machine = requests_run["machine"]
    assert machine["python"]
    assert machine["cpu_model"]
    assert machine["packages"]["flask"]
    names = {t["name"] for t in requests_run["targets"]}
    assert names == {
        "prometheus_vs_handwritten",
        "prometheus_vs_exporter",
        "sql_enqueue",
        "everything_vs_otel_instrumentation",
    }
    overhead = {v["key"]: v.get("overhead_us") for v in requests_run["variants"] if v["status"] == "ok"}
    by_name = {t["name"]: t for t in requests_run["targets"]}
    # Both sides of these always run here (prometheus_client alone): a verdict is required.
    # On a short, noisy run the pair's overhead can come out at or below zero: then no ratio exists.
    handwritten = by_name["prometheus_vs_handwritten"]
    if overhead["handwritten"] > 0:
        assert handwritten["value"] == pytest.approx(overhead["ours_prometheus"] / overhead["handwritten"])
        assert handwritten["passed"] is (handwritten["value"] <= handwritten["limit"])
    else:
        assert handwritten["value"] is None
    for target in requests_run["targets"]:
        if target["value"] is None:
            assert target["passed"] is None
            assert target["note"].startswith("no verdict: ")
        else:
            assert target["passed"] is (target["value"] <= target["limit"]), target


@pytest.mark.parametrize(
    ("overheads", "verdicts"),
    [
        (
            {
                "handwritten": 10.0,
                "ours_prometheus": 9.0,
                "prometheus_flask_exporter": 30.0,
                "ours_sql": 12.0,
                "ours_everything": 40.0,
                "otel_instrumentation": 100.0,
            },
            {
                "prometheus_vs_handwritten": True,
                "prometheus_vs_exporter": True,
                "sql_enqueue": True,
                "everything_vs_otel_instrumentation": True,
            },
        ),
        (
            {
                "handwritten": 10.0,
                "ours_prometheus": 11.0,
                "prometheus_flask_exporter": 20.0,
                "ours_sql": 17.0,
                "ours_everything": 60.0,
                "otel_instrumentation": 100.0,
            },
            {
                "prometheus_vs_handwritten": False,
                "prometheus_vs_exporter": False,
                "sql_enqueue": False,
                "everything_vs_otel_instrumentation": False,
            },
        ),
        (
            {"handwritten": 10.0, "ours_prometheus": 9.0},
            {
                "prometheus_vs_handwritten": True,
                "prometheus_vs_exporter": None,
                "sql_enqueue": None,
                "everything_vs_otel_instrumentation": None,
            },
        ),
    ],
)
def test_targets_are_judged_on_the_overheads(
    bench_modules: dict[str, ModuleType], overheads: dict[str, float], verdicts: dict[str, bool | None]
) -> None:
    results = [{"key": key, "overhead_us": value} for key, value in overheads.items()]
    judged = {t["name"]: t["passed"] for t in bench_modules["bench_requests"].targets(results)}
    assert judged == verdicts


def test_every_benchmark_script_takes_quick() -> None:
    # `make bench BENCH_ARGS=--quick` passes --quick to each script run.py knows.
    sys.path.insert(0, str(BENCH_DIR))
    try:
        run = importlib.import_module("run")
    finally:
        sys.path.remove(str(BENCH_DIR))
    scripts = [BENCH_DIR / b.script for b in run.BENCHMARKS if (BENCH_DIR / b.script).exists()]
    assert len(scripts) >= 5
    for script in scripts:
        helped = subprocess.run(
            [sys.executable, str(script), "--help"], cwd=BENCH_DIR.parent, capture_output=True, text=True, timeout=60
        )
        assert helped.returncode == 0, helped.stderr
        assert "--quick" in helped.stdout, f"{script.name} does not take --quick"
