"""The benchmark harness runs and reports (tiny N); timings are measured in benchmarks/, never asserted."""

from __future__ import annotations

import importlib
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
    for target in requests_run["targets"]:
        assert target["passed"] in (True, False, None)
        assert (target["value"] is None) == (target["passed"] is None)


def test_unknown_variant_is_refused(bench_modules: dict[str, ModuleType]) -> None:
    with pytest.raises(ValueError, match="unknown variants"):
        bench_modules["bench_requests"].run_benchmark(["no_such_variant"], rounds=1, requests=1, warmup=0)


def test_metrics_render_benchmark_grows_with_routes(bench_modules: dict[str, ModuleType]) -> None:
    data = bench_modules["bench_metrics_render"].run_benchmark([1, 5], repeats=2)
    small, large = data["sizes"]
    assert (small["routes"], large["routes"]) == (1, 5)
    assert large["series"] > small["series"] > 0
    for size in data["sizes"]:
        assert size["text_ms"] > 0
        assert size["openmetrics_ms"] > 0
        assert size["text_bytes"] > 0
