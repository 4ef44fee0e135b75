"""The gunicorn hooks and the multiprocess directory check, without a gunicorn process."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from flask import Flask
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from flask_usage_otel import ConfigError, TrackUsage
from flask_usage_otel.gunicorn import child_exit, on_starting, prepare_multiprocess_dir, worker_exit
from flask_usage_otel.prometheus import MULTIPROC_ENV, multiprocess_dir
from flask_usage_otel.sinks import Sink


def test_prepare_deletes_only_metric_files(tmp_path: Path) -> None:
    for name in ("counter_12.db", "gauge_livesum_12.db", "gauge_max_7.db", "histogram_12.db", "summary_3.db"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "notes.db").write_bytes(b"keep")
    (tmp_path / "app.log").write_text("keep")

    assert prepare_multiprocess_dir(str(tmp_path)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "notes.db"]


def test_on_starting_creates_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a" / "b"
    monkeypatch.setenv(MULTIPROC_ENV, str(target))
    on_starting(server=None)
    assert target.is_dir()


def test_hooks_do_nothing_without_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    on_starting(server=None)
    child_exit(server=None, worker=SimpleNamespace(pid=1))
    assert list(tmp_path.iterdir()) == []


def test_child_exit_drops_the_live_gauges_and_folds_the_counters_of_that_worker_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("gauge_livesum_41.db", "gauge_liveall_41.db", "gauge_livesum_42.db", "counter_41.db", "counter_42.db"):
        values = MmapedDict(str(tmp_path / name))
        values.write_value(mmap_key("hits", "hits_total", [], [], "h"), 3.0, 0.0)
        values.close()
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))

    child_exit(server=None, worker=SimpleNamespace(pid=41))

    # The dead worker's counts live on in the archive: totals never go backwards.
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        "counter_42.db",
        "counter_archive.db",
        "gauge_livesum_42.db",
    ]
    assert [v for _, v, _, _ in MmapedDict.read_all_values_from_file(str(tmp_path / "counter_archive.db"))] == [3.0]


def test_child_exit_keeps_files_it_cannot_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "counter_41.db").write_bytes(b"not a metrics file")
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))

    child_exit(server=None, worker=SimpleNamespace(pid=41))  # must not raise in the master

    assert (tmp_path / "counter_41.db").read_bytes() == b"not a metrics file"
    assert "folding the metric files of worker 41" in caplog.text


class _Buffered(Sink):
    name = "buffered"

    def __init__(self) -> None:
        self.flushed: list[float | None] = []

    def flush(self, timeout: float | None = None) -> bool:
        self.flushed.append(timeout)
        return True


def test_worker_exit_flushes_the_apps_sinks() -> None:
    from prometheus_client import CollectorRegistry

    app = Flask("worker_exit")
    tracker = TrackUsage(app, registry=CollectorRegistry())
    sink = _Buffered()
    tracker._trackers[app].sinks.append(sink)

    worker_exit(server=None, worker=SimpleNamespace(pid=1, wsgi=app))

    assert sink.flushed == [10.0]


def test_worker_exit_ignores_apps_without_tracking() -> None:
    worker_exit(server=None, worker=SimpleNamespace(pid=1, wsgi=Flask("plain")))
    worker_exit(server=None, worker=SimpleNamespace(pid=1, wsgi=lambda environ, start_response: []))


def test_multiprocess_dir_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    assert multiprocess_dir() is None


def test_multiprocess_dir_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"PROMETHEUS_MULTIPROC_DIR: .* is not a directory"):
        multiprocess_dir()


def test_multiprocess_dir_set_after_prometheus_client_was_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This test process imported prometheus_client without the variable: its metrics live in
    # process memory, so a worker's /metrics would show that worker alone.
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="set after prometheus_client was imported"):
        multiprocess_dir()
