"""Every ClickHouse panel of grafana/dashboards/flask-usage-logs.json, run by embedded ClickHouse (chdb).

The table is the Collector's clickhouse exporter's own ``otel_logs`` (the DDL of the pinned Collector,
tests/clickhouse_support.py); its rows are log records a real tracked app emitted, mapped the way the
exporter maps them; each panel's SQL is expanded the way grafana-clickhouse-datasource expands it.
The numbers must be those of the requests sent, and a one-hour panel over a month of rows must read
one part, not the month.
"""

from __future__ import annotations

import base64
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from tests.clickhouse_support import ALL, expand_grafana, exporter_row, insert_rows, render_logs_table
from tests.otel.otel_helpers import server_spans

chdb_session = pytest.importorskip("chdb.session", reason="chdb is in the dev extra: pip install -e '.[dev]'")

DASHBOARD = Path(__file__).resolve().parents[1] / "grafana" / "dashboards" / "flask-usage-logs.json"
TABLE = "otel.otel_logs"
TTL_HOURS = 720  # deploy/otel-collector.yml: ttl: 720h
DAY = 86_400

# (method, path, status, user): what the test app is sent, in this order.
SENT: list[tuple[str, str, int, str | None]] = [
    ("GET", "/", 200, None),
    ("GET", "/items/1", 200, "ada"),
    ("GET", "/items/2", 200, "ada"),
    ("POST", "/items/3", 201, "bob"),
    ("GET", "/items/4", 404, None),
    ("GET", "/error", 500, "ada"),
    ("GET", "/no/such/page", 404, None),
    ("GET", "/", 200, "bob"),
]
ROUTES = {"/": "/", "/error": "/error", "/no/such/page": "<unmatched>"}


def route_of(path: str) -> str:
    return ROUTES.get(path, "/items/<int:item_id>")


def emitted_records() -> tuple[list[Any], list[str]]:
    """Send SENT to a real tracked app; its log records (as the SDK hands them to an exporter) and trace ids."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider(resource=Resource.create({"service.name": "shop"}))
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    app = Flask("shop")
    app.config.update(
        TRACK_USAGE_OTEL_LOGS=True, TRACK_USAGE_FLUSH_INTERVAL=0.05, TRACK_USAGE_CAPTURE_USER="basic_auth"
    )

    @app.route("/", methods=["GET"])
    def index() -> str:
        return "home"

    @app.route("/items/<int:item_id>", methods=["GET", "POST"])
    def item(item_id: int) -> tuple[str, int]:
        return f"item {item_id}", 404 if item_id == 4 else (201 if item_id == 3 else 200)

    @app.get("/error")
    def error() -> str:
        raise RuntimeError("broken view")

    tracker = TrackUsage(
        app, registry=CollectorRegistry(), tracer_provider=tracer_provider, logger_provider=logger_provider
    )
    client = app.test_client()
    for method, path, status, user in SENT:
        headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"}
        if user:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()
        assert client.open(path, method=method, headers=headers).status_code == status
        time.sleep(0.002)  # distinct timestamps: "newest first" has one right answer
    with app.app_context():
        assert tracker.flush(10)
    records = list(logs.get_finished_logs())
    assert len(records) == len(SENT)
    trace_ids = [f"{s.context.trace_id:032x}" for s in sorted(server_spans(spans), key=lambda s: s.start_time or 0)]
    return records, trace_ids


@pytest.fixture(scope="module")
def session() -> Iterator[Any]:
    """An embedded ClickHouse with the exporter's otel_logs table for the engine's version."""
    db = chdb_session.Session()
    try:
        version = db.query("SELECT version()", "CSV").bytes().decode().strip().strip('"')
        major, minor = (int(part) for part in version.split(".")[:2])
        db.query("CREATE DATABASE IF NOT EXISTS otel")
        db.query(render_logs_table("otel", "otel_logs", server_version=(major, minor), ttl_hours=TTL_HOURS))
        db.query("USE otel")  # the data source's defaultDatabase (grafana/provisioning/datasources)
        yield db
    finally:
        db.close()


@pytest.fixture(scope="module")
def loaded(session: Any) -> dict[str, Any]:
    """The app's records as one exporter batch, after a month of earlier days (one record a day, one part each)."""
    records, trace_ids = emitted_records()
    rows = [exporter_row(r) for r in records]
    first = min(r["TimestampNs"] for r in rows) // 1_000_000_000
    for days in range(28, 0, -1):
        old = dict(rows[0], TimestampNs=rows[0]["TimestampNs"] - days * DAY * 1_000_000_000)
        insert_rows(session, TABLE, [old])
    insert_rows(session, TABLE, rows)
    return {"rows": rows, "trace_ids": trace_ids, "start": first - 3600 + 60, "end": first + 60}


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (panel["title"], target["rawSql"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target["datasource"]["type"] == "grafana-clickhouse-datasource"
    ]
    queries += [(f"variable {v['name']}", v["query"]) for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def run(session: Any, sql: str) -> list[dict[str, Any]]:
    return list(json.loads(session.query(sql, "JSON").bytes())["data"])


def panel(session: Any, loaded: dict[str, Any], title: str, **options: Any) -> list[dict[str, Any]]:
    sql = dict(panel_queries())[title]
    options.setdefault("interval_s", 2)  # what Grafana picks for one hour on a wide panel
    options.setdefault("variables", {"service": ALL})
    return run(session, expand_grafana(sql, start=loaded["start"], end=loaded["end"], **options))


def test_the_dashboard_has_clickhouse_panels_and_a_service_variable() -> None:
    titles = [title for title, _ in panel_queries()]
    assert len(titles) == 4, titles
    assert "variable service" in titles


def test_every_panel_runs_on_the_exporters_table(session: Any, loaded: dict[str, Any]) -> None:
    for title, sql in panel_queries():
        rows = run(
            session,
            expand_grafana(sql, start=loaded["start"], end=loaded["end"], interval_s=2, variables={"service": ALL}),
        )
        assert rows, f"{title}: no rows"


def test_requests_per_minute_by_status_class_match_what_was_sent(session: Any, loaded: dict[str, Any]) -> None:
    title = "Requests per minute by status class (log records)"
    expected = Counter(f"{status // 100}xx" for _, _, status, _ in SENT)
    # One-minute buckets (interval below a minute): each bucket holds its requests, per minute.
    counted: Counter[str] = Counter()
    for row in panel(session, loaded, title):
        counted[row["status_class"]] += float(row["requests"])
    assert counted == expected
    # Ten-minute buckets (a longer range): the rate per minute, a tenth of each bucket's count.
    per_minute: Counter[str] = Counter()
    for row in panel(session, loaded, title, interval_s=600):
        per_minute[row["status_class"]] += float(row["requests"])
    assert {k: round(v * 10, 6) for k, v in per_minute.items()} == expected


def test_newest_requests_are_the_sent_ones_newest_first_with_their_traces(session: Any, loaded: dict[str, Any]) -> None:
    rows = panel(session, loaded, "Newest requests (log records)")
    assert [(r["method"], r["path"], int(r["status"]), r["user"] or None) for r in rows] == [
        (m, p, s, u) for m, p, s, u in reversed(SENT)
    ]
    assert [r["route"] for r in rows] == [route_of(p) for _, p, _, _ in reversed(SENT)]
    assert [r["trace_id"] for r in rows] == list(reversed(loaded["trace_ids"]))
    assert {r["browser"] for r in rows} == {"firefox"}
    assert {r["client"] for r in rows} == {"127.0.0.1"}
    speeds = sorted(float(r["speed"]) for r in rows)
    assert speeds == sorted(float(row["LogAttributes"]["flask_usage.speed"]) for row in loaded["rows"])
    assert 0 < speeds[0] < 1


def test_slowest_routes_count_and_time_each_route(session: Any, loaded: dict[str, Any]) -> None:
    rows = panel(session, loaded, "Slowest routes (log records)")
    assert {r["route"]: int(r["requests"]) for r in rows} == Counter(route_of(p) for _, p, _, _ in SENT)
    speeds: dict[str, list[float]] = {}
    for row in loaded["rows"]:
        attributes = row["LogAttributes"]
        speeds.setdefault(attributes["flask_usage.route"], []).append(float(attributes["flask_usage.speed"]))
    for row in rows:
        assert float(row["median"]) == pytest.approx(statistics.median(speeds[row["route"]]))
        assert min(speeds[row["route"]]) <= float(row["p99"]) <= max(speeds[row["route"]])
    assert [float(r["p99"]) for r in rows] == sorted((float(r["p99"]) for r in rows), reverse=True)


def test_the_service_variable_lists_and_filters_services(session: Any, loaded: dict[str, Any]) -> None:
    assert [r["ServiceName"] for r in panel(session, loaded, "variable service")] == ["shop"]
    title = "Newest requests (log records)"
    assert len(panel(session, loaded, title, variables={"service": ["shop"]})) == len(SENT)
    assert panel(session, loaded, title, variables={"service": ["another-app"]}) == []


def test_a_one_hour_panel_reads_one_part_of_a_month(session: Any, loaded: dict[str, Any]) -> None:
    parts = run(session, f"SELECT count() AS n, uniqExact(_partition_id) AS days FROM {TABLE}")[0]
    assert int(parts["days"]) == 29  # 28 earlier days and today: one part each, each in its own partition
    for title, sql in panel_queries():
        expanded = expand_grafana(
            sql, start=loaded["start"], end=loaded["end"], interval_s=2, variables={"service": ALL}
        )
        (estimate,) = run(session, "EXPLAIN ESTIMATE " + expanded)
        assert int(estimate["parts"]) == 1, f"{title} reads {estimate['parts']} parts for one hour"
    # A month-long range reads the month: the estimate counts what the filter keeps.
    month = expand_grafana(
        dict(panel_queries())["Slowest routes (log records)"],
        start=loaded["end"] - 30 * DAY,
        end=loaded["end"],
        interval_s=3600,
        variables={"service": ALL},
    )
    assert int(run(session, "EXPLAIN ESTIMATE " + month)[0]["parts"]) == 29
