"""Other libraries' internals (``flask_usage_otel.internals``): each fast path passes its check here,
and when a check fails the public-API fallback counts and writes exactly what the fast path does,
through ``TrackUsage``, real requests, ``/metrics``, real multiprocess files and real SQL rows."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import operator
import os
import subprocess
import sys
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import prometheus_client.mmap_dict
import pytest
import sqlalchemy as sa
from flask import Flask, Response, abort, g
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from werkzeug.test import create_environ

from flask_usage_otel import TrackUsage, exchange, internals
from flask_usage_otel.exchange import Exchange
from flask_usage_otel.gunicorn import child_exit
from flask_usage_otel.internals import PrometheusCells, PrometheusPublic, ScrapeReads
from flask_usage_otel.prometheus import exposition, filescrape
from flask_usage_otel.storage import sql_text
from flask_usage_otel.storage.sql import SQLStorage
from tests.test_prometheus_multiprocess import collected

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
REPO = Path(__file__).resolve().parent.parent
# Durations on and between the default bucket bounds, and over the last one.
TOOK = ("0", "0.003", "0.005", "0.1", "0.75", "1.0", "2.5", "29.0", "30.0", "45.0")


def warnings_of(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "flask_usage_otel" and r.levelno == logging.WARNING and text in r.message
    ]


def test_every_fast_path_passes_its_check_here() -> None:
    """Otherwise the fallback tests below would compare the fallback with itself."""
    assert internals._prometheus is PrometheusCells
    assert internals.single_process_values() is True
    assert internals.metric_files_foldable() is True
    assert internals.closing_iterator_callbacks is internals._fast_callbacks
    assert internals.compact_json is not internals._public_compact_json
    assert sql_text._encode_json is internals.compact_json
    assert exchange.closing_iterator_callbacks is internals.closing_iterator_callbacks
    assert exposition.render_registry != exposition._public_render
    assert filescrape.directory_scrape_usable() is True


# -- prometheus_client's value cells ----------------------------------------------------------


class RenamedCells(PrometheusCells):
    """A release that keeps the histogram's cells under another name."""

    @staticmethod
    def histogram_observer(child: Any) -> internals.Adder:
        return PrometheusCells.histogram_observer(SimpleNamespace(_sum=child._sum, _buckets=child._bucket_cells))


class InclusiveBuckets(PrometheusCells):
    """Counts an amount equal to a bound into the next bucket: wrong only on the bounds, which the check tries."""

    @staticmethod
    def histogram_observer(child: Any) -> internals.Adder:
        sum_inc, buckets, bounds = child._sum.inc, child._buckets, tuple(child._upper_bounds)

        def observe(amount: float) -> None:
            sum_inc(amount)
            buckets[min(bisect_right(bounds, amount), len(buckets) - 1)].inc(1)

        return observe


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """``time.perf_counter`` under the test's control: a request takes exactly what its view sets."""
    now = SimpleNamespace(value=0.0)
    monkeypatch.setattr(time, "perf_counter", lambda: now.value)
    return now


def scrape_after_requests(clock: SimpleNamespace, *, otel: bool) -> list[tuple[Any, ...]]:
    """Every sample of ``/metrics`` (OpenMetrics, with exemplars) after the same requests."""
    registry = CollectorRegistry()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    app = Flask("cells")
    app.config.update(TRACK_USAGE_OTEL=otel)

    @app.route("/took/<seconds>")
    def took(seconds: str) -> str:
        clock.value = float(seconds)
        return "x" * int(float(seconds) * 100)

    @app.route("/boom")
    def boom() -> str:
        raise ValueError("deliberate")

    TrackUsage(app, registry=registry, tracer_provider=provider)
    client = app.test_client()
    for seconds in TOOK:
        for method in (client.get, client.post, client.head):
            clock.value = 0.0
            method(f"/took/{seconds}")
    client.get("/boom")
    samples = []
    for family in text_string_to_metric_families(client.get("/metrics", headers={"Accept": OPENMETRICS}).text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue  # when each child was made
            # The ids differ from run to run; their names and the observed value do not.
            exemplar = None if s.exemplar is None else (sorted(s.exemplar.labels), s.exemplar.value)
            samples.append((s.name, sorted(s.labels.items()), s.value, exemplar))
    return samples


@pytest.mark.parametrize("broken", [RenamedCells, InclusiveBuckets])
@pytest.mark.parametrize("otel", [False, True], ids=["prometheus-only", "with-exemplars"])
def test_value_cells_fallback_counts_exactly_as_the_fast_path(
    broken: type[PrometheusCells],
    otel: bool,
    clock: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fast = scrape_after_requests(clock, otel=otel)
    with caplog.at_level(logging.WARNING, "flask_usage_otel"):
        selected = internals.select_prometheus_cells(broken)
        assert selected is PrometheusPublic
        monkeypatch.setattr(internals, "_prometheus", selected)
        public = scrape_after_requests(clock, otel=otel)
    assert public == fast
    requests = [s for s in fast if s[0] == "flask_usage_requests_total"]
    assert sum(s[2] for s in requests) == len(TOOK) * 3 + 1
    assert any(s[3] for s in fast) is otel  # exemplars compared too, when there are any
    [warning] = warnings_of(caplog, "value cells")
    assert f"prometheus-client {importlib.metadata.version('prometheus-client')}" in warning.message


# -- Werkzeug's ClosingIterator._callbacks ----------------------------------------------------


def werkzeug_app(registry: CollectorRegistry, tracer_provider: TracerProvider | None = None) -> Flask:
    app = Flask("closing")

    @app.route("/page")
    def page() -> str:
        return "in memory"

    @app.route("/stream")
    def stream() -> Response:
        return Response(iter([b"ab", b"cde"]))

    @app.route("/refused")
    def refused() -> str:
        abort(403)

    @app.route("/boom")
    def boom() -> str:
        raise ValueError("deliberate")

    if tracer_provider is not None:
        app.config.update(TRACK_USAGE_OTEL=True)
    TrackUsage(app, registry=registry, tracer_provider=tracer_provider)
    return app


def run_werkzeug_app(clock: SimpleNamespace) -> tuple[list[tuple[str, int, bytes]], str, bool]:
    """The answers, ``/metrics`` without the children's creation times, and whether a page was streamed."""
    registry = CollectorRegistry()
    app = werkzeug_app(registry)
    client = app.test_client()
    answers = []
    for path in ("/page", "/stream", "/refused", "/boom", "/missing"):
        for method in (client.get, client.head):
            response = method(path)
            answers.append((path, response.status_code, response.data))
    body = app.wsgi_app(create_environ("/page"), lambda status, headers, exc_info=None: None)
    streamed = isinstance(body, Exchange)
    list(body)
    body.close()  # type: ignore[attr-defined]
    metrics = [line for line in client.get("/metrics").text.splitlines() if "_created" not in line]
    return answers, "\n".join(metrics), streamed


def test_closing_iterator_fallback_streams_and_counts_exactly_as_the_fast_path(
    clock: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fast_answers, fast_metrics, fast_streamed = run_werkzeug_app(clock)
    with caplog.at_level(logging.WARNING, "flask_usage_otel"):
        selected = internals.select_closing_iterator(operator.attrgetter("_close_callbacks"))  # renamed
        monkeypatch.setattr(exchange, "closing_iterator_callbacks", selected)
        answers, metrics, streamed = run_werkzeug_app(clock)
    assert (fast_streamed, streamed) == (False, True)  # the fallback takes every body as a stream
    assert answers == fast_answers  # never a 500 for it
    assert [a[1] for a in answers] == [200, 200, 200, 200, 403, 403, 500, 500, 404, 404]
    assert metrics == fast_metrics  # the clock stands still: durations agree too
    assert 'flask_usage_response_size_bytes_sum{blueprint="",method="GET",route="/stream"} 5.0' in metrics
    [warning] = warnings_of(caplog, "ClosingIterator._callbacks")
    assert f"werkzeug {importlib.metadata.version('werkzeug')}" in warning.message


# -- json's C encoder -------------------------------------------------------------------------

TRACK_VARS: list[Any] = [
    {"text": 'ü "quoted" \\ \u2028 \U0001f600', "n": [1, 2.5, -0.0, 10**30, True, None]},
    {"nested": {"deeper": [{"a": "b"}, [], {}]}, "when": "2024-01-01"},
    {"big": "x" * 20_000},  # over the column's width: the truncation marker
    {"nul": "a\x00b", "float": 1e300},
]


def json_columns(tmp_path: Path, name: str) -> list[tuple[Any, ...]]:
    storage = SQLStorage(f"sqlite:///{tmp_path / name}")
    app = Flask("json")

    @app.route("/var/<int:n>/<word>")
    def var(n: int, word: str) -> str:
        g.track_var = TRACK_VARS[n]
        return "ok"

    tracker = TrackUsage(app, storage=storage, registry=CollectorRegistry())
    client = app.test_client()
    for n in range(len(TRACK_VARS)):
        assert client.get(f"/var/{n}/ünï").status_code == 200
    with app.app_context():
        assert tracker.flush(10)
    with storage.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT path, view_args, track_var FROM flask_usage ORDER BY path")).all()
    storage.engine.dispose()
    return [tuple(row) for row in rows]


def escaping_json() -> Callable[[Any], str]:
    """A fast path that escapes non-ASCII text, as ``json.dumps`` does by default."""
    return functools.partial(json.dumps, default=str, separators=(",", ":"))


@pytest.mark.parametrize("broken", ["missing", "different"])
def test_json_fallback_writes_exactly_the_same_columns(
    broken: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fast = json_columns(tmp_path, "fast.db")
    with caplog.at_level(logging.WARNING, "flask_usage_otel"):
        if broken == "missing":  # a Python without the C accelerator, or a release that renamed it
            monkeypatch.setattr(json.encoder, "c_make_encoder", None)
            selected = internals.select_compact_json()
        else:
            selected = internals.select_compact_json(escaping_json)
        assert selected is internals._public_compact_json
        monkeypatch.setattr(sql_text, "_encode_json", selected)
        public = json_columns(tmp_path, "public.db")
    assert public == fast
    assert len(fast) == len(TRACK_VARS)
    assert json.loads(fast[0][2]) == TRACK_VARS[0]
    assert json.loads(fast[0][1]) == {"n": 0, "word": "ünï"}
    [warning] = warnings_of(caplog, "c_make_encoder")
    assert f"python {sys.version.split()[0]}" in warning.message


# -- prometheus_client's multiprocess files and value store -----------------------------------

WORKER = """
import logging, os, sys
logging.basicConfig(format="%(levelname)s %(name)s %(message)s")
import prometheus_client.values
if sys.argv[1] == "broken":
    del prometheus_client.values.get_value_class  # a release that renamed it
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[2]
import flask_usage_otel.gunicorn_config  # chooses the value store again, as gunicorn would
from flask_usage_otel import TrackUsage
from tests.conftest import build_app
app = build_app()
TrackUsage(app)
client = app.test_client()
for path in ("/", "/items/7", "/shop/cart", "/stream", "/boom", "/forbidden") * int(sys.argv[3]):
    client.get(path)
print(os.getpid())
"""


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter with this checkout importable; its output as text."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def run_worker(directory: Path, way: str, rounds: int) -> tuple[int, str]:
    """A process that serves ``rounds`` rounds of requests in multiprocess mode, then exits; its pid and log."""
    done = run_script(WORKER, way, str(directory), str(rounds))
    return int(done.stdout), done.stderr


def counts(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What a scrape of the directory shows, but the durations (real time in another process)."""
    timed = ("duration", "first_byte")
    return {
        k: v for k, v in collected(directory).items() if not any(t in k[0] for t in timed) or k[0].endswith("_count")
    }


def test_value_store_fallback_writes_the_same_multiprocess_files(tmp_path: Path) -> None:
    (tmp_path / "fast").mkdir()
    (tmp_path / "public").mkdir()
    _, fast_log = run_worker(tmp_path / "fast", "fast", 2)
    _, public_log = run_worker(tmp_path / "public", "broken", 2)
    assert "WARNING" not in fast_log
    assert public_log.count("WARNING flask_usage_otel") == 1
    assert "value store choice" in public_log
    assert f"prometheus-client {importlib.metadata.version('prometheus-client')}" in public_log

    def kinds(directory: Path) -> list[str]:
        return sorted(p.name.rpartition("_")[0] for p in directory.glob("*.db"))

    assert kinds(tmp_path / "public") == kinds(tmp_path / "fast")
    assert "counter" in kinds(tmp_path / "fast")
    assert counts(tmp_path / "public") == counts(tmp_path / "fast")
    assert (
        counts(tmp_path / "fast")[
            ("flask_usage_requests_total", (("blueprint", ""), ("method", "GET"), ("route", "/"), ("status", "200")))
        ]
        == 2
    )


LIVE_GAUGES = ("flask_usage_requests_in_progress", "flask_usage_storage_queue_rows")


@pytest.fixture
def fresh_fold_check() -> Iterator[None]:
    internals.metric_files_foldable.cache_clear()
    yield
    internals.metric_files_foldable.cache_clear()


def test_dead_worker_files_fallback_scrapes_exactly_as_the_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_fold_check: None
) -> None:
    folded, kept = tmp_path / "folded", tmp_path / "kept"
    folded.mkdir()
    kept.mkdir()
    pids = {}
    for directory in (folded, kept):
        pids[directory] = [run_worker(directory, "fast", rounds)[0] for rounds in (1, 3)]
    live = counts(folded)
    assert counts(kept) == live

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folded))
    for pid in pids[folded]:
        child_exit(server=None, worker=SimpleNamespace(pid=pid))
    archives = sorted(p.name for p in folded.glob("*.db"))
    assert {"counter_archive.db", "histogram_archive.db"} <= set(archives)
    assert all(name.endswith("_archive.db") for name in archives)

    internals.metric_files_foldable.cache_clear()
    monkeypatch.delattr(prometheus_client.mmap_dict, "MmapedDict")  # a release that moved it
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(kept))
    with caplog.at_level(logging.WARNING, "flask_usage_otel"):
        for pid in pids[kept]:
            child_exit(server=None, worker=SimpleNamespace(pid=pid))
    assert internals.metric_files_foldable() is False
    assert not list(kept.glob("*_archive.db"))  # nothing folded: the dead workers' files stay

    assert counts(kept) == counts(folded)
    # Every total of the live workers is kept; only their live gauges went with them.
    assert counts(folded) == {k: v for k, v in live.items() if k[0] not in LIVE_GAUGES}
    [warning] = warnings_of(caplog, "MmapedDict")
    assert "prometheus-client" in warning.message


# -- prometheus_client's registry, children and cells, read for /metrics ----------------------


class SwappedBuckets(ScrapeReads):
    """A release whose cells hold the buckets in another order."""

    buckets = staticmethod(lambda child: list(reversed(ScrapeReads.buckets(child))))


class RenamedRegistry(ScrapeReads):
    """A release that keeps the registry's collectors under another name."""

    collectors = staticmethod(lambda registry: list(registry._collectors))


SCRAPE_ACCEPTS = (None, OPENMETRICS, "text/plain; version=1.0.0; escaping=allow-utf-8")


@pytest.mark.parametrize("broken", [SwappedBuckets, RenamedRegistry])
def test_renderer_fallback_scrapes_byte_for_byte_as_the_renderer(
    broken: type[ScrapeReads], clock: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert exposition.render_registry != exposition._public_render
    registry = CollectorRegistry()
    provider = TracerProvider()
    app = werkzeug_app(registry, tracer_provider=provider)  # exemplars too
    client = app.test_client()
    for path in ("/page", "/stream", "/refused", "/boom", "/missing") * 3:
        client.get(path)

    def scrapes() -> list[tuple[bytes, str]]:
        got = [client.get("/metrics", headers={"Accept": a} if a else {}) for a in SCRAPE_ACCEPTS]
        return [(r.get_data(), r.headers["Content-Type"]) for r in got]

    fast = scrapes()
    with caplog.at_level(logging.WARNING, "flask_usage_otel"):
        selected = exposition.select_renderer(broken)
    assert selected is exposition._public_render
    monkeypatch.setattr(exposition, "render_registry", selected)
    assert scrapes() == fast  # the same registry, byte for byte, with the same exemplars and creation times
    assert b"# {" in fast[1][0]
    [warning] = warnings_of(caplog, "registry, children and value cells")
    assert f"prometheus-client {importlib.metadata.version('prometheus-client')}" in warning.message


def test_directory_scrape_fallback_scrapes_byte_for_byte_as_the_directory_scrape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for rounds in (1, 2):
        run_worker(tmp_path, "fast", rounds)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    fast = exposition.render(CollectorRegistry(), None, True)
    assert filescrape.directory_scrape_usable() is True

    def shifted(data: bytes, start: int = 8) -> tuple[list[tuple[bytes, int]], int]:
        entries, used = internals.metric_file_entries(data, start)
        return [(key, index + 1) for key, index in entries], used  # the timestamps read as values

    filescrape.directory_scrape_usable.cache_clear()
    monkeypatch.setattr(filescrape, "metric_file_entries", shifted)
    try:
        with caplog.at_level(logging.WARNING, "flask_usage_otel"):
            assert filescrape.directory_scrape_usable() is False
            public = exposition.render(CollectorRegistry(), None, True)
    finally:
        filescrape.directory_scrape_usable.cache_clear()
    assert public == fast
    assert b"flask_usage_requests_total{" in public[0]
    [warning] = warnings_of(caplog, "multiprocess file layout")
    assert "prometheus-client" in warning.message


# -- opentelemetry-semconv's incubating names --------------------------------------------------

SPAN_ATTRIBUTES = """
import json, logging, sys
logging.basicConfig(format="%(levelname)s %(name)s %(message)s")
if sys.argv[1] == "broken":
    # A release that moved the incubating names this package reads (the SDK's own stay).
    for module in ("attributes.enduser_attributes", "attributes.user_agent_attributes"):
        sys.modules["opentelemetry.semconv._incubating." + module] = None
from flask import Flask
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from flask_usage_otel import TrackUsage
app = Flask("incubating")
app.config.update(TRACK_USAGE_CAPTURE_USER=lambda: "user-42", TRACK_USAGE_OTEL_CAPTURE_USER=True)
@app.route("/")
def index():
    return "ok"
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
TrackUsage(app, tracer_provider=provider, registry=CollectorRegistry())
app.test_client().get("/", headers={"User-Agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"})
[span] = exporter.get_finished_spans()
print(json.dumps(dict(span.attributes), sort_keys=True))
"""


def span_attributes(way: str) -> tuple[dict[str, Any], str]:
    done = run_script(SPAN_ATTRIBUTES, way)
    return json.loads(done.stdout), done.stderr


def test_incubating_names_pass_their_check_here() -> None:
    internals.check_incubating_names()
    with pytest.raises(internals.Mismatch, match="ENDUSER_ID"):
        internals.check_incubating_names(lambda constant: "end_user.id" if constant == "ENDUSER_ID" else "")


def test_incubating_names_fallback_gives_the_span_the_same_attributes() -> None:
    fast, quiet = span_attributes("fast")
    public, log = span_attributes("broken")
    assert public == fast
    assert fast["enduser.id"] == "user-42"
    assert fast["user_agent.synthetic.type"] == "bot"
    assert "_incubating" not in quiet
    assert log.count("the _incubating modules of opentelemetry-semantic-conventions") == 1
