"""The Grafana dashboards and provisioning: structure a Grafana server would accept and resolve.

The queries themselves run against a real Prometheus in tests/integration/test_dashboards.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extra: pip install -e '.[dev]'")

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = REPO / "grafana" / "provisioning" / "datasources" / "datasources.yml"
VARIABLE_REF = re.compile(r"^\$\{?(\w+)\}?$")


def provisioned() -> dict[str, dict[str, Any]]:
    return {d["uid"]: d for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_both_dashboards_exist() -> None:
    assert {p.name for p in DASHBOARDS} == {"flask-usage.json", "flask-usage-raw.json", "flask-usage-logs.json"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_identity(path: Path) -> None:
    dashboard = load(path)
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None  # provisioning assigns ids


def test_dashboard_uids_are_unique() -> None:
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_have_unique_ids_units_and_fit_the_grid(path: Path) -> None:
    panels = list(all_panels(load(path)["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), f"panel {panel['title']!r} has no unit"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def _datasource_refs(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in all_panels(dashboard["panels"]):
        if "datasource" in panel:
            yield panel["title"], panel["datasource"]
        for target in panel.get("targets", []):
            if "datasource" in target:
                yield f"{panel['title']} [{target['refId']}]", target["datasource"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if "datasource" in variable:
            yield f"variable {variable['name']}", variable["datasource"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_datasource_references_resolve_to_provisioned_sources(path: Path) -> None:
    dashboard = load(path)
    sources = provisioned()
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    refs = list(_datasource_refs(dashboard))
    assert refs
    for where, ref in refs:
        uid = ref["uid"]
        match = VARIABLE_REF.match(uid)
        if match:
            variable = variables.get(match[1])
            assert variable is not None, f"{where}: {uid} is not a variable of the dashboard"
            assert variable["type"] == "datasource", where
            assert variable["query"] == ref["type"], f"{where}: the variable lists {variable['query']} sources"
            uid = variable["current"]["value"]
        assert uid in sources, f"{where}: data source uid {uid!r} is not provisioned"
        assert sources[uid]["type"] == ref["type"], f"{where}: {uid} is a {sources[uid]['type']}, not {ref['type']}"


def test_metrics_dashboard_variables() -> None:
    variables = {v["name"]: v for v in load(REPO / "grafana/dashboards/flask-usage.json")["templating"]["list"]}
    assert set(variables) == {"datasource", "job", "instance", "route", "blueprint", "method"}
    for name in ("job", "instance", "route", "blueprint", "method"):
        variable = variables[name]
        assert variable["includeAll"], name
        assert variable["allValue"] == ".*", name  # so "All" also matches views outside any blueprint


def test_latency_queries_sum_by_le_and_use_rate_interval() -> None:
    dashboard = load(REPO / "grafana/dashboards/flask-usage.json")
    exprs = [t["expr"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", [])]
    quantiles = [e for e in exprs if "histogram_quantile" in e]
    assert len(quantiles) >= 5
    for expr in quantiles:
        assert re.search(r"sum by \(le\b", expr), f"histogram_quantile without sum by (le): {expr}"
    for expr in exprs:
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window in {"$__rate_interval", "$__range"}, f"fixed window {window} in {expr}"
    # Success is not status="200": 201s, 204s and redirects are successes too.
    assert not any('status="200"' in e for e in exprs)


def test_latency_panels_show_exemplars_linked_to_traces() -> None:
    dashboard = load(REPO / "grafana/dashboards/flask-usage.json")
    latency = [
        p
        for p in all_panels(dashboard["panels"])
        if p["type"] == "timeseries" and p["fieldConfig"]["defaults"]["unit"] == "s"
    ]
    quantile_panels = [p for p in latency if any("histogram_quantile" in t["expr"] for t in p["targets"])]
    assert len(quantile_panels) >= 2
    for panel in quantile_panels:
        assert all(t.get("exemplar") for t in panel["targets"]), panel["title"]
    prometheus = provisioned()["prometheus"]
    destinations = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert destinations[0]["name"] == "trace_id"  # the exemplar label PrometheusSink sets
    assert destinations[0]["datasourceUid"] in provisioned()


def test_raw_dashboard_reads_the_flask_usage_table() -> None:
    dashboard = load(REPO / "grafana/dashboards/flask-usage-raw.json")
    sql = [t["rawSql"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", [])]
    assert all("FROM flask_usage" in s for s in sql)
    assert all("$__timeFilter(datetime)" in s for s in sql)
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Newest requests", "Top users", "Top remote addresses"} <= titles


def test_log_records_dashboard_reads_the_collectors_clickhouse_table() -> None:
    dashboard = load(REPO / "grafana/dashboards/flask-usage-logs.json")
    sql = [t["rawSql"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", [])]
    assert sql
    for query in sql:
        assert "FROM otel_logs" in query
        # Timestamp is the partition and sorting key of the exporter's table (0.151 and later): the
        # filter prunes parts. tests/test_clickhouse_dashboard.py runs every query and counts them.
        assert "$__timeFilter(Timestamp)" in query
        assert "TimestampTime" not in query  # a column only tables made before 0.151 have
        assert "EventName = 'flask_usage.request'" in query  # only the sink's records, not other logs
        assert "$__conditionalAll(ServiceName IN (${service}), $service)" in query
    # Every attribute a panel reads is one the sink writes: a renamed attribute would leave a blank column.
    from flask_usage_otel.otel.logs import EVENT_NAME, log_attributes
    from flask_usage_otel.record import UsageRecord

    assert EVENT_NAME == "flask_usage.request"
    record = UsageRecord(
        timestamp=0.0,
        speed=0.1,
        method="GET",
        scheme="http",
        host="example.org",
        script_root="",
        path="/a",
        query_string="q=1",
        route="/a",
        endpoint="a",
        blueprint=None,
        view_args={},
        status=200,
        content_length=None,
        response_size=5,
        remote_addr="192.0.2.0",
        xforwardedfor=None,
        user_agent="Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0",
        accept_language=None,
        authorization=False,
        username="ada",
        server_name="app",
        protocol="HTTP/1.1",
        track_var={},
    )
    written = set(log_attributes(record))
    read = set(re.findall(r"LogAttributes\['([^']+)'\]", json.dumps(dashboard)))
    assert read, "the dashboard reads no attribute"
    assert read <= written, sorted(read - written)


def _exposed_sample_names() -> set[str]:
    """Every sample name the metrics can ever produce, children or not."""
    from prometheus_client import CollectorRegistry

    from flask_usage_otel.config import load_settings
    from flask_usage_otel.prometheus import metrics_for

    registry = CollectorRegistry()
    metrics_for(registry, load_settings({})).add_storage_metrics()  # an app with a storage has them
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


def test_every_metric_a_dashboard_queries_exists() -> None:
    # `or vector(0)` and empty panels hide a misspelt or renamed metric; names must match the code.
    known = _exposed_sample_names()
    dashboard = load(REPO / "grafana" / "dashboards" / "flask-usage.json")
    queried = set(re.findall(r"\bflask_usage_[a-z_]+", json.dumps(dashboard)))
    assert queried, "the dashboard queries no flask_usage_ metric"
    assert queried <= known, sorted(queried - known)
