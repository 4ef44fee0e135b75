"""The Prometheus alerting rules shipped with the dashboards (grafana/alerts/).

``promtool test rules`` runs their unit tests (each alert fires on a series that should page and stays
quiet on one just under its threshold); the other tests hold the rules to the metrics a tracked app
really exposes, so a renamed metric cannot leave an alert that never fires.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import SQLStorage, TrackUsage
from flask_usage_otel.config import DEFAULT_BUCKETS
from tests.integration.servers import require_binary

yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extra: pip install -e '.[dev]'")

ALERTS = Path(__file__).resolve().parents[1] / "grafana" / "alerts"
RULES = ALERTS / "flask-usage-rules.yml"
RULE_TESTS = ALERTS / "flask-usage-rules.test.yml"
EXPECTED_ALERTS = {
    "FlaskUsageHighErrorRatio",
    "FlaskUsageLatencyBudgetBurn",
    "FlaskUsageLatencyBudgetBurnSlow",
    "FlaskUsageRowsDropped",
    "FlaskUsageStorageQueueSaturated",
    "FlaskUsageScrapeSlowing",
}
# Series Prometheus makes itself for every target, not the app.
PROMETHEUS_SERIES = {"scrape_duration_seconds"}


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args], capture_output=True, text=True, timeout=300, cwd=ALERTS, check=False
    )


def exposed_names() -> set[str]:
    """Every sample name on the /metrics page of a real tracked app with a storage that has served a request."""
    app = Flask("alerts")
    app.config["TRACK_USAGE_SYNC_WRITES"] = True

    @app.get("/")
    def index() -> str:
        return "ok"

    TrackUsage(app, SQLStorage("sqlite://"), registry=CollectorRegistry())
    client = app.test_client()
    assert client.get("/").status_code == 200
    page = client.get("/metrics").get_data(as_text=True)
    names = {line.split()[2] for line in page.splitlines() if line.startswith("# TYPE ")}
    samples = {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)[0] for line in page.splitlines() if line[:1].isalpha()}
    return names | samples


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b(?:flask_usage_[a-z_]+|scrape_[a-z_]+)\b", text))


@pytest.mark.integration
def test_the_rules_are_valid_and_their_unit_tests_pass() -> None:
    check = promtool("check", "rules", RULES.name)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts == EXPECTED_ALERTS
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        fed = {tuple(re.findall(r'(job|instance)="([^"]*)"', s["series"])) for s in test["input_series"]}
        for case in test["alert_rule_test"]:
            expected = case["exp_alerts"]
            alerting = {
                tuple((k, a["exp_labels"][k]) for k in ("job", "instance") if k in a["exp_labels"]) for a in expected
            }
            if expected:
                fired.add(case["alertname"])
            # Quiet: nothing fires at that time, or a series fed to the test is not among the alerts.
            if not expected or any(not any(set(a) <= set(f) for a in alerting) for f in fed):
                quiet.add(case["alertname"])
            for alert in expected:
                assert alert["exp_labels"]["severity"] in {"page", "ticket", "warning"}, case
                assert alert["exp_annotations"]["summary"], case  # the annotations are checked too
    assert fired == alerts, f"never fires in a test: {sorted(alerts - fired)}"
    assert quiet == alerts, f"never tested quiet: {sorted(alerts - quiet)}"


def test_the_rules_and_their_tests_use_the_metrics_a_tracked_app_exposes() -> None:
    exposed = exposed_names()
    used = metric_names(" ".join(rule["expr"] for rule in rules()))
    assert "flask_usage_storage_dropped_total" in used
    assert "flask_usage_storage_queue_rows" in used
    assert used - PROMETHEUS_SERIES <= exposed, sorted(used - PROMETHEUS_SERIES - exposed)
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fed = metric_names(" ".join(series["series"] for test in tests for series in test["input_series"]))
    assert fed - PROMETHEUS_SERIES <= exposed, sorted(fed - PROMETHEUS_SERIES - exposed)
    # The latency SLO's threshold must be a bucket boundary, or the ratio has nothing to count.
    thresholds = set(re.findall(r'le="([^"]+)"', RULES.read_text()))
    assert thresholds == {"0.5"}
    assert 0.5 in DEFAULT_BUCKETS


def test_labels_the_rules_group_by_are_on_the_series() -> None:
    text = RULES.read_text()
    for grouping in re.findall(r"by \(([^)]*)\)", text):
        labels = {label.strip() for label in grouping.split(",")}
        assert labels <= {"job", "instance", "reason"}, grouping
    # The queue bound is one number to tune, recorded once.
    (capacity,) = [rule for rule in rules() if rule.get("record") == "flask_usage:storage_queue_capacity_rows"]
    assert capacity["expr"] == "vector(10000)"
