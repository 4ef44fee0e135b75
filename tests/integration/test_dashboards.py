"""Every query of the Grafana dashboard, run by a real Prometheus that scraped the demo app under gunicorn.

No Grafana server is needed: Grafana sends a panel's ``expr`` to Prometheus after replacing the
template variables, which is what this test does. A query that does not parse, or that selects
nothing from what the app exports, fails here instead of showing "No data" on a dashboard.

The same Prometheus remote-writes every sample to a VictoriaMetrics (Debian's package), the store
docs/scaling.md scales out to, and every query must give the same answer there.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from flask_usage_otel.config import DEFAULT_BUCKETS
from tests.integration.gunicorn_harness import REPO, Gunicorn, run_gunicorn, temporary_postgres_database
from tests.integration.servers import (
    Prometheus,
    http_get,
    promtool_check_metrics,
    require_binary,
    run_prometheus,
    run_victoria_metrics,
    wait_until,
)

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "grafana" / "dashboards" / "flask-usage.json"
COMPOSE_PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus.yml"
JOB = "app"  # the job name run_prometheus gives the scraped app
TRAFFIC_SECONDS = 4.0
# Prometheus scrapes every second; a 30s window holds every sample of the run.
RATE_INTERVAL = "30s"
RANGE = "1m"
# The series must be older than the rate window when the two engines are compared: for a series
# younger than its window, rate() in VictoriaMetrics is the slope over the series' life and in
# Prometheus the increase over the whole window (issue 24). So every series is made first, then
# the traffic comes a window later.
SERIES_AGE_BEFORE_TRAFFIC = 28.0
# Prometheus extrapolates the first-to-last sample increase to the window (30/29 of it at a 1 s
# scrape), VictoriaMetrics divides by the time since the last sample before the window: up to 3.4%.
ENGINES_REL_TOLERANCE = 0.05
# Set to a Markdown file to append the number of series each query returned.
NOTE = os.environ.get("DASHBOARD_QUERY_NOTE")

# Grafana's "All" for a multi-value variable with allValue ".*".
ALL_VALUES = {"job": ".*", "instance": ".*", "route": ".*", "blueprint": ".*", "method": ".*"}
LABEL_VALUES_RE = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


@dataclass
class Stack:
    app: Gunicorn
    prometheus: Prometheus
    app_target: str
    victoria: Prometheus
    settled_at: float  # every sample up to here is scraped; the engines are compared at this time

    def api(self, path: str, params: dict[str, object]) -> object:
        """GET one Prometheus HTTP API endpoint; its ``data`` after checking the call succeeded."""
        status, body = http_get(f"{self.prometheus.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        payload = json.loads(body)
        assert payload["status"] == "success", f"{path} {params}: {payload}"
        assert status == 200
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, object]]:
        return self.prometheus.query(expr)

    def label_values(self, label: str, selector: str | None) -> list[str]:
        return self.api(f"label/{label}/values", {"match[]": selector} if selector else {})  # type: ignore[return-value]

    def exemplars(self, expr: str) -> list[dict[str, object]]:
        end = time.time()
        return self.api("query_exemplars", {"query": expr, "start": end - 300, "end": end})  # type: ignore[return-value]


PATHS = [
    ("GET", "/"),
    ("GET", "/api/items/7"),
    ("GET", "/api/items/4242"),  # 404 from the view
    ("POST", "/api/items"),
    ("GET", "/error"),
    ("GET", "/stream"),
    ("GET", "/slow"),
    ("GET", "/no/such/page"),  # unmatched 404
    ("PUT", "/"),  # 405
]


def drive_traffic(base_url: str, seconds: float) -> int:
    """Requests over every route (200s, 201s, 404s, 405s, 500s, streams) for ``seconds``."""
    paths = PATHS
    deadline = time.monotonic() + seconds
    sent = 0

    def loop(offset: int) -> int:
        count = 0
        while time.monotonic() < deadline and count < 10_000:
            method, path = paths[(offset + count) % len(paths)]
            requests.request(method, base_url + path, timeout=10)
            count += 1
        return count

    with ThreadPoolExecutor(max_workers=4) as pool:
        sent = sum(pool.map(loop, range(4)))
    return sent


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp_path = tmp_path_factory.mktemp("dashboards")
    multiproc_dir = tmp_path / "metrics"
    multiproc_dir.mkdir()
    # With SQL storage, so the storage health panels show real numbers.
    with (
        temporary_postgres_database("usage_dashboards") as db_url,
        run_gunicorn(tmp_path, workers=2, multiproc_dir=multiproc_dir, extra_env={"USAGE_DB_URL": db_url}) as app,
    ):
        target = app.base_url.removeprefix("http://")
        with (
            run_victoria_metrics() as victoria,
            run_prometheus([target], remote_write=victoria.url + "/api/v1/write") as prometheus,
        ):
            up = f'up{{job="{JOB}"}} == 1'
            wait_until(lambda: prometheus.query(up), 30, "Prometheus to scrape the app")
            # Every series of every route and status is born (twice, so each worker has most).
            for method, path in PATHS * 2:
                requests.request(method, app.base_url + path, timeout=10)
            time.sleep(SERIES_AGE_BEFORE_TRAFFIC)
            assert drive_traffic(app.base_url, TRAFFIC_SECONDS) > 0
            # Scraped a few times, the last time after the traffic ended.
            up = f'count_over_time(up{{job="{JOB}"}}[1m]) >= 6 and up{{job="{JOB}"}} == 1'
            wait_until(lambda: prometheus.query(up), 30, "Prometheus to scrape the app")
            time.sleep(2.5)  # two more scrapes, so rates over the window see the traffic's end
            yield Stack(app, prometheus, target, victoria, settled_at=time.time())


def dashboard_queries(dashboard: dict[str, object]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every target of every panel, rows' nested panels included."""
    found = []

    def walk(panels: list[dict[str, object]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                if target.get("expr"):
                    found.append((panel["title"], target["refId"], target["expr"]))
            walk(panel.get("panels", []))  # type: ignore[arg-type]

    walk(dashboard["panels"])  # type: ignore[arg-type]
    return found


def substitute(expr: str, values: dict[str, str], range_: str = RANGE) -> str:
    """Replace Grafana's variables as Grafana would before sending the query."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", range_)
    expr = expr.replace("$__interval", "1s")
    for name, value in values.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, f"a variable was left unreplaced in {expr!r}"
    return expr


def promql_regex(value: str) -> str:
    """A value as Grafana puts it into a PromQL regex matcher: regex-escaped, inside a string literal."""
    return re.escape(value).replace("\\", "\\\\")


def load_dashboard() -> dict[str, object]:
    return json.loads(DASHBOARD.read_text())


RESULTS: dict[str, list[str]] = {"panels": [], "variables": []}


def test_every_template_variable_query_has_values(stack: Stack) -> None:
    dashboard = load_dashboard()
    concrete = {}
    for variable in dashboard["templating"]["list"]:  # type: ignore[index]
        if variable["type"] != "query":
            continue
        definition = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = LABEL_VALUES_RE.match(definition)
        assert match, f"variable {variable['name']}: only label_values(...) queries are expected, got {definition!r}"
        selector = match["selector"]
        if selector is not None:
            selector = substitute(selector, ALL_VALUES)
        values = stack.label_values(match["label"], selector)
        RESULTS["variables"].append(f"| `${variable['name']}` | `{definition}` | {len(values)}: {values} |")
        assert values, f"variable {variable['name']}: {definition!r} found no values"
        concrete[variable["name"]] = values
    assert concrete["job"] == [JOB]
    assert concrete["instance"] == [stack.app_target]
    assert {"/", "/error", "/api/items/<int:item_id>"} <= set(concrete["route"])
    # Prometheus drops empty labels: views outside a blueprint match only "All" (.*), not a value.
    assert concrete["blueprint"] == ["api"]


def test_every_panel_query_parses_and_returns_series(stack: Stack) -> None:
    queries = dashboard_queries(load_dashboard())
    assert len(queries) >= 20
    empty = []
    # One concrete choice of the variables, as a user picking a route would send it.
    instance = promql_regex(stack.app_target)
    picked = {"job": JOB, "instance": instance, "route": "/error", "blueprint": "", "method": "GET"}
    for title, ref, expr in queries:
        all_series = stack.query(substitute(expr, ALL_VALUES))
        picked_series = stack.query(substitute(expr, picked))
        RESULTS["panels"].append(f"| {title} | {ref} | `{expr}` | {len(all_series)} | {len(picked_series)} |")
        if not all_series:
            empty.append(f"{title} [{ref}]: {expr}")
    assert not empty, "queries that returned no series:\n" + "\n".join(empty)
    # The storage panels show the rows the workers wrote, not only zeros.
    written = stack.query(f'sum(flask_usage_storage_rows_written_total{{job="{JOB}"}})')
    assert float(written[0]["value"][1]) > 0


def series_values(result: list[dict[str, object]]) -> dict[tuple[tuple[str, str], ...], float]:
    """A query result as {labels: value}; NaN dropped (VictoriaMetrics never returns NaN series)."""
    values = {}
    for series in result:
        labels = tuple(sorted((k, v) for k, v in series["metric"].items() if k != "__name__"))  # type: ignore[union-attr]
        value = float(series["value"][1])  # type: ignore[index]
        if not math.isnan(value):
            values[labels] = value
    return values


def engines_differ(stack: Stack, query: str) -> str | None:
    """None when both engines give the same series with values within the tolerance, else both answers."""
    at = stack.settled_at
    want = series_values(stack.prometheus.query(query, at))
    got = series_values(stack.victoria.query(query, at))
    if "histogram_quantile" in query:
        # A quantile interpolates inside one bucket, and a route with a few requests in the window has
        # a p99 that one request at the edge of either engine's window moves by a bucket or two.
        def agree(a: float, b: float) -> bool:
            return abs(bisect.bisect_left(DEFAULT_BUCKETS, a) - bisect.bisect_left(DEFAULT_BUCKETS, b)) <= 2
    else:

        def agree(a: float, b: float) -> bool:
            return math.isclose(a, b, rel_tol=ENGINES_REL_TOLERANCE, abs_tol=1e-9)

    close = want.keys() == got.keys() and all(agree(want[k], got[k]) for k in want)
    return None if close else f"{query}\n  prometheus: {want}\n  victoria:   {got}"


@pytest.fixture(scope="module")
def written(stack: Stack) -> Stack:
    """The stack once everything Prometheus scraped up to ``settled_at`` is in VictoriaMetrics."""
    samples = f'count_over_time(up{{job="{JOB}"}}[2m])'
    scraped = series_values(stack.prometheus.query(samples, stack.settled_at))
    wait_until(lambda: series_values(stack.victoria.query(samples, stack.settled_at)) == scraped, 30, "remote write")
    return stack


def test_every_panel_query_gives_the_same_answer_on_victoria_metrics(written: Stack) -> None:
    """Fed by remote write, VictoriaMetrics answers every panel as Prometheus does (within 5%).

    ``$__range`` is the rate window here: over series older than it, as a dashboard's range
    mostly is. The next test takes a range longer than the series' lives.
    """
    picked = {"job": JOB, "instance": promql_regex(written.app_target), "route": "/error", "blueprint": ""}
    picked["method"] = "GET"
    differ, compared = [], 0
    for title, ref, expr in dashboard_queries(load_dashboard()):
        for choice in (ALL_VALUES, picked):
            query = substitute(expr, choice, range_=RATE_INTERVAL)
            compared += len(series_values(written.prometheus.query(query, written.settled_at)))
            if difference := engines_differ(written, query):
                differ.append(f"{title} [{ref}] {difference}")
    assert not differ, "VictoriaMetrics answers differently:\n" + "\n".join(differ)
    assert compared >= 60  # series, not only empty answers, were compared


def test_top_routes_agree_for_routes_younger_than_the_range(written: Stack) -> None:
    """Requests in the range (increase) agree on both engines when the route was born inside the
    range, as after a deploy; the average rate over the range the panel showed before does not."""
    ((expr,),) = [[e for t, _, e in dashboard_queries(load_dashboard()) if t == "Top routes by traffic"]]
    query = substitute(expr, ALL_VALUES)  # $__range = 1m, the series are about 35 s old
    assert "increase(" in query
    assert len(series_values(written.prometheus.query(query, written.settled_at))) >= 8
    assert engines_differ(written, query) is None
    assert engines_differ(written, query.replace("increase(", "rate(")) is not None


def test_latency_panels_ask_for_exemplars_and_prometheus_accepts_the_query(stack: Stack) -> None:
    dashboard = load_dashboard()
    exemplar_targets = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]  # type: ignore[attr-defined]
        for target in panel.get("targets", [])
        if target.get("exemplar")
    ]
    assert exemplar_targets, "no panel asks for exemplars"
    assert all(
        "request_duration_seconds_bucket" in expr or "time_to_first_byte_seconds_bucket" in expr
        for _, expr in exemplar_targets
    )
    for _title, expr in exemplar_targets:
        # Under gunicorn (multiprocess mode) prometheus_client exports no exemplars, so the
        # answer is empty; what is proven here is that the exemplar API takes the query.
        assert isinstance(stack.exemplars(substitute(expr, ALL_VALUES)), list)


def test_multiprocess_exposition_passes_promtool(stack: Stack) -> None:
    status, body = http_get(stack.app.base_url + "/metrics")
    assert status == 200
    result = promtool_check_metrics(body)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    # The config names its rules where docker-compose.yml mounts them; here they are checked from the repository.
    rules = REPO / "grafana" / "alerts" / "flask-usage-rules.yml"
    mounted = "/etc/prometheus/rules/flask-usage-rules.yml"
    text = COMPOSE_PROMETHEUS_CONFIG.read_text()
    assert mounted in text
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace(mounted, str(rules)))
    result = subprocess.run(
        [require_binary("promtool"), "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module", autouse=True)
def write_note() -> Iterator[None]:
    """Record how many series every query returned (for the deployment notes)."""
    yield
    if not NOTE or not RESULTS["panels"]:
        return
    lines = [
        "",
        "## Dashboard queries against a real Prometheus (series returned)",
        "",
        f"`$__rate_interval`={RATE_INTERVAL}, `$__range`={RANGE}; 'all' = every variable `.*`; "
        "'picked' = job/instance of the run, route=/error, blueprint='', method=GET.",
        "",
        "| variable | query | values |",
        "| --- | --- | --- |",
        *RESULTS["variables"],
        "",
        "| panel | ref | expr | series (all) | series (picked) |",
        "| --- | --- | --- | --- | --- |",
        *RESULTS["panels"],
        "",
    ]
    with open(NOTE, "a") as note:
        note.write("\n".join(lines))
