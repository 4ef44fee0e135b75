"""The instruction-count harness: real callgrind runs at tiny N, its file reading, and its work check.

Counts are asserted only as the harness's own properties (positive, repeatable, more work
counts more); the figures themselves are measured by benchmarks/bench_instructions.py.
"""

from __future__ import annotations

import importlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
REQUESTS = 20
WARMUP = 5


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    # The scripts import their siblings by plain name, as they do when run as `python benchmarks/x.py`.
    sys.path.insert(0, str(BENCH_DIR))
    try:
        return importlib.import_module("bench_instructions")
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="module")
def callgrind_runs(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """bare twice in one layout, ours with Prometheus once in another: three processes under callgrind."""
    problem = bench.callgrind.missing_tools()
    if problem:
        # valgrind and gcc are part of the machine image; CI must not pass by skipping this.
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    # Side by side: most of each run is valgrind starting Python, and there are two cores.
    runs = {"bare_1": ("bare", 0), "bare_2": ("bare", 0), "ours": ("ours_prometheus", 1000)}
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        futures = {
            name: pool.submit(bench.run_variant, key, REQUESTS, WARMUP, padding, tmp_path_factory.mktemp(name))
            for name, (key, padding) in runs.items()
        }
        done = {name: future.result() for name, future in futures.items()}
    return {"bare": [done["bare_1"], done["bare_2"]], "ours": done["ours"]}


def test_counts_are_positive_and_per_thread(callgrind_runs: dict[str, Any]) -> None:
    for run in (*callgrind_runs["bare"], callgrind_runs["ours"]):
        assert run["status"] == "ok", run.get("reason")
        assert run["under_valgrind"] is True
        # Flask serves one request in hundreds of thousands of instructions, not tens nor billions.
        assert 50_000 * REQUESTS < run["request_thread"] < 5_000_000 * REQUESTS
        assert run["total"] == run["request_thread"] + run["request_thread_drain"] + run["other_threads"]
        assert run["threads"] >= 1


def test_same_process_counts_the_same(callgrind_runs: dict[str, Any]) -> None:
    first, second = callgrind_runs["bare"]
    assert abs(first["request_thread"] - second["request_thread"]) <= 0.005 * first["request_thread"]


def test_tracking_counts_more_and_its_work_is_checked(callgrind_runs: dict[str, Any]) -> None:
    bare, ours = callgrind_runs["bare"][0], callgrind_runs["ours"]
    assert ours["work"]["requests"] == REQUESTS
    assert ours["request_thread"] > bare["request_thread"] + 10_000 * REQUESTS


def test_a_variant_that_does_nothing_fails_the_work_check(bench: ModuleType, tmp_path: Path) -> None:
    def setup_idle(app: Any, workdir: Path) -> Any:
        return bench.Setup(work=lambda: {"requests": 0, "rows": 0})

    idle = bench.Variant("idle", "answers but records nothing", setup_idle)
    outcome = bench.measure_in_process(idle, REQUESTS, WARMUP, bench.callgrind.Switch(None), tmp_path)
    assert outcome["status"] == "failed"
    assert outcome["reason"] == f"did not do its work: requests 0 of {REQUESTS}, rows 0 of {REQUESTS}"


def test_work_check_accepts_exact_work_and_refuses_short_work(bench: ModuleType) -> None:
    done = bench.check_work({"rows": 5, "commits": 1}, {"rows": 25, "commits": 3}, 20)
    assert done == {"rows": 20, "commits": 2}  # commits are reported, never checked
    with pytest.raises(bench.WorkNotDone, match="spans 19 of 20"):
        bench.check_work({"spans": 1}, {"spans": 20}, 20)


def test_counts_split_request_thread_drain_and_other_threads(bench: ModuleType, tmp_path: Path) -> None:
    files = {
        "run.out.1-01": ("Client Request: requests", 1000),
        "run.out.2-01": ("Client Request: drain", 30),
        "run.out-01": ("Program termination", 7),  # the switch's own stop call: not counted
        "run.out-02": ("Program termination", 400),
        "run.out-03": ("Program termination", 50),
    }
    for name, (trigger, total) in files.items():
        (tmp_path / name).write_text(f"part: 1\ndesc: Trigger: {trigger}\nsummary: {total}\ntotals: {total}\n")
    counted = bench.callgrind.counts(bench.callgrind.read_parts(tmp_path / "run.out"), "requests", "drain")
    assert (counted.request_thread, counted.request_thread_drain, counted.other_threads) == (1000, 30, 450)
    assert (counted.total, counted.background, counted.threads) == (1480, 480, 3)


def test_targets_are_judged_and_missing_variants_are_na(bench: ModuleType) -> None:
    def ok(key: str, **figures: float) -> dict[str, Any]:
        return {"key": key, "status": "ok", **figures}

    variants = [
        ok("handwritten", overhead=100.0),
        ok("ours_prometheus", overhead=80.0, request_thread=1000.0),
        ok("ours_sql", request_thread=38_000.0, background_per_row=90_000.0),
    ]
    by_name = {t["name"]: t for t in bench.targets(variants)}
    assert by_name["instr_prometheus_vs_handwritten"]["passed"] is True
    assert by_name["instr_prometheus_vs_handwritten"]["value"] == pytest.approx(0.8)
    assert by_name["instr_sql_request_thread_sqlite"]["passed"] is False  # 37,000 over Prometheus only
    assert by_name["instr_sql_per_row_sqlite"]["passed"] is True
    assert by_name["instr_sql_per_row_postgresql"]["passed"] is None
    assert by_name["instr_everything_vs_otel_instrumentation"]["passed"] is None
