"""The cost-curve code of benchmarks/bench_curves.py runs at tiny sizes (the real curves: `make bench`)."""

from __future__ import annotations

import importlib
import socket
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> dict[str, ModuleType]:
    sys.path.insert(0, str(BENCH_DIR))
    try:
        return {name: importlib.import_module(name) for name in ("bench_curves", "curves", "latency_proxy")}
    finally:
        sys.path.remove(str(BENCH_DIR))


def test_fit_names_the_growth(bench: dict[str, ModuleType]) -> None:
    fit = bench["curves"].fit
    sizes = [10, 100, 1000]
    assert fit(sizes, [5.0, 5.1, 4.9])["growth"] == "constant"
    linear = fit(sizes, [3 + 2 * n for n in sizes])
    assert linear["growth"] == "linear"
    assert linear["slope"] == pytest.approx(2)
    assert linear["intercept"] == pytest.approx(3)
    assert linear["line_r2"] == pytest.approx(1)
    assert fit(sizes, [n * n for n in sizes])["growth"] == "quadratic or worse"


def test_curves_without_a_database_run_at_tiny_sizes(bench: dict[str, ModuleType], tmp_path: Path) -> None:
    settings = {"routes": (1, 2, 4), "workers": (1, 2, 3), "worker_routes": 1, "queued_rows": (20, 40, 80)}
    data = bench["bench_curves"].run_curves({**settings, "repeats": 1}, ["render", "workers", "bytes"])
    render = data["curves"]["render"]
    assert [p["label_sets"] for p in render] == [6, 12, 24]  # routes x 2 methods x 3 statuses
    assert all(p["render_ms"] > 0 for p in render)
    assert render[0]["bytes"] < render[1]["bytes"] < render[2]["bytes"]
    workers = data["curves"]["workers"]
    # Each worker left its own files in the multiprocess directory.
    assert [p["workers"] for p in workers] == [1, 2, 3]
    assert workers[0]["files"] < workers[1]["files"] < workers[2]["files"]
    queued = data["curves"]["queued_bytes"]
    assert all(200 < p["bytes_per_row"] < 50_000 for p in queued), queued
    assert {"render_ms_by_label_sets", "render_ms_by_worker_files", "queued_bytes_by_rows"} <= set(data["fits"])
    pytest.importorskip("matplotlib", reason="the plots need matplotlib (benchmarks/requirements.txt)")
    (path,) = bench["bench_curves"].draw(data, tmp_path)
    assert path.read_bytes().startswith(b"\x89PNG")


def test_latency_proxy_adds_the_round_trip(bench: dict[str, ModuleType]) -> None:
    server = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    proxy = bench["latency_proxy"].LatencyProxy(server.getsockname()[1], rtt_ms=40)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as client:
            start = time.perf_counter()
            client.sendall(b"ping")
            assert client.recv(1024) == b"ping"
            assert time.perf_counter() - start >= 0.040
    finally:
        proxy.close()
        server.close()
