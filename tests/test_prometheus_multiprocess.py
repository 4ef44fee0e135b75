"""Folding dead workers' multiprocess files into archives: exact, atomic for readers, bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from flask_usage_otel.prometheus import filescrape
from flask_usage_otel.prometheus.filescrape import DirectoryScrape
from flask_usage_otel.prometheus.multiprocess import (
    LockedMultiProcessCollector,
    archive_files,
    compact_dead_worker,
)

HELP = "help"


def write(path: Path, filename: str, values: dict[tuple[str, str, tuple[tuple[str, str], ...]], float]) -> None:
    """A multiprocess file as prometheus_client writes it: {(metric, sample, labels): value}."""
    out = MmapedDict(str(path / filename))
    try:
        for (metric, sample, labels), value in values.items():
            names = [name for name, _ in labels]
            out.write_value(mmap_key(metric, sample, names, [v for _, v in labels], HELP), value, time.time())
    finally:
        out.close()


def worker_files(path: Path, pid: int, *, requests: float, duration: float, info: float) -> None:
    route = (("route", "/"),)
    write(path, f"counter_{pid}.db", {("app_requests", "app_requests_total", route): requests})
    write(
        path,
        f"histogram_{pid}.db",
        {
            ("app_seconds", "app_seconds_bucket", (*route, ("le", "0.1"))): requests - 1,
            ("app_seconds", "app_seconds_bucket", (*route, ("le", "+Inf"))): 1,
            ("app_seconds", "app_seconds_sum", route): duration,
        },
    )
    write(path, f"gauge_max_{pid}.db", {("app_info", "app_info", (("version", "1"),)): info})
    write(path, f"gauge_sum_{pid}.db", {("app_queue", "app_queue", ()): 2})
    write(path, f"gauge_all_{pid}.db", {("app_temp", "app_temp", ()): 5})


def collected(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    LockedMultiProcessCollector(registry, path=str(path))
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name != "app_temp"  # the 'all' gauge is pid-labelled: compared apart
    }


def test_folding_keeps_every_total_and_leaves_one_file_per_type(tmp_path: Path) -> None:
    for pid, requests in ((101, 10), (102, 7), (103, 3)):
        worker_files(tmp_path, pid, requests=requests, duration=requests / 8, info=pid - 100)
    before = collected(tmp_path)
    assert before[("app_requests_total", (("route", "/"),))] == 20

    result = compact_dead_worker(str(tmp_path), 101)
    assert (result.files_folded, result.files_deleted) == (4, 1)
    compact_dead_worker(str(tmp_path), 102)

    assert collected(tmp_path) == before
    names = sorted(p.name for p in tmp_path.glob("*.db"))
    assert names == [
        "counter_103.db",
        "counter_archive.db",
        "gauge_all_103.db",
        "gauge_max_103.db",
        "gauge_max_archive.db",
        "gauge_sum_103.db",
        "gauge_sum_archive.db",
        "histogram_103.db",
        "histogram_archive.db",
    ]
    assert not list(tmp_path.glob("*.tmp"))
    assert not list(tmp_path.glob(".*.tmp"))
    assert len(archive_files(str(tmp_path))) == 4


def test_max_and_sum_gauges_fold_as_the_collector_merges_them(tmp_path: Path) -> None:
    worker_files(tmp_path, 7, requests=2, duration=0.1, info=9)
    worker_files(tmp_path, 8, requests=2, duration=0.1, info=4)
    compact_dead_worker(str(tmp_path), 7)
    compact_dead_worker(str(tmp_path), 8)
    values = collected(tmp_path)
    assert values[("app_info", (("version", "1"),))] == 9  # max over dead workers
    assert values[("app_queue", ())] == 4  # sum
    assert values[("app_seconds_count", (("route", "/"),))] == 4
    assert list(tmp_path.glob("gauge_all_*.db")) == []  # a dead pid's 'all' gauge is gone


def test_unknown_pid_is_a_no_op(tmp_path: Path) -> None:
    worker_files(tmp_path, 5, requests=3, duration=0.1, info=1)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert compact_dead_worker(str(tmp_path), 6).files_folded == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".db")) == [
        n for n in before if n.endswith(".db")
    ]


def test_a_reader_never_sees_totals_move_while_workers_are_folded(tmp_path: Path) -> None:
    pids = range(1000, 1060)
    for pid in pids:
        worker_files(tmp_path, pid, requests=3, duration=0.25, info=1)
    expected = collected(tmp_path)[("app_requests_total", (("route", "/"),))]
    assert expected == 3 * len(pids)
    seen: list[float] = []
    stop = threading.Event()

    def read() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            seen.append(collected(tmp_path)[("app_requests_total", (("route", "/"),))])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for pid in pids:
            compact_dead_worker(str(tmp_path), pid)
    finally:
        stop.set()
        reader.join()
    assert seen, "the reader never ran"
    assert set(seen) == {expected}
    assert len(list(tmp_path.glob("*.db"))) == 4


def test_the_stock_collector_reads_the_archives(tmp_path: Path) -> None:
    # Archive names follow prometheus_client's {type}_{id}.db, so an unlocked reader still sums them.
    worker_files(tmp_path, 1, requests=4, duration=0.5, info=1)
    compact_dead_worker(str(tmp_path), 1)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value("app_requests_total", {"route": "/"}) == 4


def test_a_file_still_being_created_is_skipped(tmp_path: Path) -> None:
    worker_files(tmp_path, 1, requests=4, duration=0.5, info=1)
    (tmp_path / "counter_2.db").write_bytes(b"")  # a starting worker's file, not yet sized
    assert collected(tmp_path)[("app_requests_total", (("route", "/"),))] == 4


# -- the directory scrape: what it keeps between scrapes --------------------------------------


def stock_scrape(path: Path) -> bytes:
    registry = CollectorRegistry()
    LockedMultiProcessCollector(registry, path=str(path))
    return generate_latest(registry)


def test_the_directory_scrape_is_the_collectors_byte_for_byte_through_worker_churn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_internals import run_worker  # real TrackUsage workers' files

    pids = [run_worker(tmp_path, "fast", rounds)[0] for rounds in (1, 3)]
    for pid, requests in ((101, 10), (102, 7)):
        worker_files(tmp_path, pid, requests=requests, duration=requests / 8, info=pid - 100)
    scrape = DirectoryScrape(str(tmp_path))
    decoded: list[bytes] = []
    real_decode = filescrape._decode
    monkeypatch.setattr(filescrape, "_decode", lambda key: decoded.append(key) or real_decode(key))

    def same() -> str:
        body = scrape.render()
        assert body == stock_scrape(tmp_path)
        assert body is not None
        return body.decode()

    first = same()
    assert decoded
    assert "flask_usage_request_duration_seconds_bucket{" in first
    decoded.clear()
    assert same() == first
    assert decoded == []  # nothing decoded again: the keys, the indexes and the plan were kept

    def lines(body: str) -> list[str]:  # in the files' order, which folding changes; the 'all' gauge goes
        return sorted(line for line in body.splitlines() if "app_temp" not in line)

    compact_dead_worker(str(tmp_path), pids[0])  # a fold: a new generation, the archives replaced
    assert lines(same()) == lines(first)
    compact_dead_worker(str(tmp_path), pids[1])
    compact_dead_worker(str(tmp_path), 101)
    assert lines(same()) == lines(first)  # every total kept
    assert decoded == []  # the same keys, in new files: indexed again, never decoded again

    out = MmapedDict(str(tmp_path / "counter_102.db"))  # a live worker counts on, and sees a new route
    try:
        out.write_value(mmap_key("app_requests", "app_requests_total", ["route"], ["/"], HELP), 9.0, time.time())
        out.write_value(mmap_key("app_requests", "app_requests_total", ["route"], ["/new"], HELP), 1.0, time.time())
    finally:
        out.close()
    grown = same()
    assert 'app_requests_total{route="/"} 19.0' in grown  # 10 folded + 9 live
    assert decoded == [mmap_key("app_requests", "app_requests_total", ["route"], ["/new"], HELP).encode()]

    (tmp_path / "counter_102.db").unlink()  # the same name, another file (a new worker with the same pid)
    write(tmp_path, "counter_102.db", {("app_requests", "app_requests_total", (("route", "/"),)): 1.0})
    assert 'app_requests_total{route="/"} 11.0' in same()


def test_a_scrape_through_render_is_the_directory_scrape_and_the_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_usage_otel.prometheus import render

    worker_files(tmp_path, 1, requests=4, duration=0.5, info=1)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for accept in (None, "application/openmetrics-text; version=1.0.0"):
        body, content_type = render(CollectorRegistry(), accept, True)
        assert body == stock_scrape(tmp_path)
        assert content_type.startswith("text/plain; version=0.0.4")
