"""deploy/loadgen.py drives every kind of response the dashboards show."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from examples.demo_app import create_app
from tests.conftest import Requests
from tests.integration.servers import serve_app

LOADGEN = Path(__file__).resolve().parents[1] / "deploy" / "loadgen.py"


def load_loadgen():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("loadgen", LOADGEN)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loadgen_sends_a_mix_of_routes_and_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    loadgen = load_loadgen()
    registry = CollectorRegistry()
    with serve_app(create_app(registry=registry)) as base_url:
        assert loadgen.main(["--base-url", base_url, "--rate", "400", "--duration", "1.5", "--seed", "7"]) == 0
    requests = Requests(registry)
    sent = requests.count()
    assert sent > 50
    for status in ("200", "201", "404", "405", "500"):
        assert requests.count(status=status) > 0, status
    assert requests.count(route="/api/items/<int:item_id>") > 0
    assert "loadgen: done" in capsys.readouterr().out


def test_loadgen_refuses_a_rate_of_zero() -> None:
    with pytest.raises(SystemExit):
        load_loadgen().main(["--rate", "0"])
