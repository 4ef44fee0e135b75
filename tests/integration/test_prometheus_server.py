"""A real Prometheus scrapes a tracked app on loopback and sees exactly what was sent."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from examples.demo_app import create_app
from tests.integration.servers import http_get, promtool_check_metrics, run_prometheus, serve_app, wait_until

pytestmark = pytest.mark.integration

SENT = {"/": 7, "/api/items/5": 4, "/api/items/77": 3, "/no/such/page": 5, "/error": 2, "/healthz": 6}


def test_prometheus_scrapes_per_route_counts() -> None:
    app = create_app(registry=CollectorRegistry())
    with serve_app(app) as base_url:
        for path, times in SENT.items():
            for _ in range(times):
                http_get(base_url + path)
        exposition = http_get(base_url + "/metrics")[1]
        with run_prometheus([base_url.removeprefix("http://")]) as prometheus:
            wait_until(prometheus.targets_up, 30, "the app target to be scraped")
            expected = {
                ("/", "200"): 7,
                ("/api/items/<int:item_id>", "200"): 7,
                ("<unmatched>", "404"): 5,
                ("/error", "500"): 2,
            }

            seen: list[dict[tuple[str, str], float]] = [{}]

            def counts_match() -> bool:
                result = prometheus.query('sum by (route, status) (flask_usage_requests_total{job="app"})')
                seen[0] = {(r["metric"]["route"], r["metric"]["status"]): float(r["value"][1]) for r in result}
                return seen[0] == expected

            try:
                wait_until(counts_match, 30, "Prometheus to report the sent counts")
            finally:
                assert seen[0] == expected
            assert prometheus.query('count(flask_usage_requests_total{route="/healthz"})') == []
            assert prometheus.query('flask_usage_request_exceptions_total{exception="RuntimeError"}')

    check = promtool_check_metrics(exposition)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "", check.stdout
    assert check.stderr.strip() == "", check.stderr
