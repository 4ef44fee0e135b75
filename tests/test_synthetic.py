"""Synthetic traffic (``user_agent.synthetic.type``): the column, excluding probes, tables of earlier releases."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from flask_usage_otel import ConfigError, SQLStorage, TrackUsage
from flask_usage_otel.useragent import synthetic_type
from tests.conftest import build_app

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
KUBE_PROBE = "kube-probe/1.29"
ELB = "ELB-HealthChecker/2.0"
AGENTS = {FIREFOX: None, GOOGLEBOT: "bot", KUBE_PROBE: "test", ELB: "test", "curl/8.5.0": None}


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        *AGENTS.items(),
        ("GoogleHC/1.0", "test"),
        ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "bot"),
        ("AlwaysOn", "test"),  # opentelemetry-util-http's own test pattern
        ("Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)", "test"),  # a checker first, though it says bot
        ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2)", "bot"),
        ("python-requests/2.32.3", None),
        ("", None),
        (None, None),
        ("x" * 600 + "Googlebot", None),  # past the part that is read
    ],
)
def test_classification(agent: str | None, expected: str | None) -> None:
    assert synthetic_type(agent) == expected


def tracked(tmp_path: Path, table: str, **config: object) -> tuple[object, SQLStorage, CollectorRegistry]:
    registry = CollectorRegistry()
    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}", table_name=table)
    app = build_app({"TRACK_USAGE_SYNC_WRITES": True, **config})
    TrackUsage(app, storage, registry=registry)
    return app, storage, registry


def test_each_row_says_whether_it_was_a_bot_or_a_probe(tmp_path: Path) -> None:
    app, storage, _ = tracked(tmp_path, "synthetic_rows")
    client = app.test_client()  # type: ignore[attr-defined]
    for agent in AGENTS:
        client.get("/items/1", headers={"User-Agent": agent})
    client.get("/items/1", environ_overrides={"HTTP_USER_AGENT": ""})
    rows = storage.read_usage(limit=10)
    got = {row["user_agent_raw"]: row["synthetic_type"] for row in rows}
    assert {agent: got[agent] for agent in AGENTS} == AGENTS
    assert len(rows) == len(AGENTS) + 1


def test_probes_can_be_left_out_of_every_sink(tmp_path: Path) -> None:
    app, storage, registry = tracked(tmp_path, "synthetic_excluded", TRACK_USAGE_EXCLUDE_SYNTHETIC=("test",))
    client = app.test_client()  # type: ignore[attr-defined]
    for agent in (KUBE_PROBE, ELB, KUBE_PROBE, GOOGLEBOT, FIREFOX):
        assert client.get("/items/1", headers={"User-Agent": agent}).status_code == 200  # served all the same
    labels = {"method": "GET", "route": "/items/<int:item_id>", "blueprint": "", "status": "200"}
    assert registry.get_sample_value("flask_usage_requests_total", labels) == 2
    assert sorted(row["synthetic_type"] or "human" for row in storage.read_usage()) == ["bot", "human"]


def test_bots_and_probes_can_both_be_left_out(tmp_path: Path) -> None:
    app, storage, _ = tracked(tmp_path, "synthetic_both", TRACK_USAGE_EXCLUDE_SYNTHETIC=["bot", "test"])
    client = app.test_client()  # type: ignore[attr-defined]
    for agent in AGENTS:
        client.get("/", headers={"User-Agent": agent})
    assert [row["synthetic_type"] for row in storage.read_usage()] == [None, None]


@pytest.mark.parametrize("value", ["test", ("probe",), 1])
def test_the_exclusion_is_checked_at_init_app(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        TrackUsage(build_app({"TRACK_USAGE_EXCLUDE_SYNTHETIC": value}), registry=CollectorRegistry())
    assert caught.value.key == "TRACK_USAGE_EXCLUDE_SYNTHETIC"


def test_a_table_of_an_earlier_release_keeps_working_and_is_upgraded(tmp_path: Path) -> None:
    app, storage, _ = tracked(tmp_path, "synthetic_old")
    storage.read_usage()  # creates the table; then take the column away, as an earlier release made it
    with storage.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE synthetic_old DROP COLUMN synthetic_type"))

    app, storage, _ = tracked(tmp_path, "synthetic_old")
    assert storage.missing_columns() == ["synthetic_type"]
    client = app.test_client()  # type: ignore[attr-defined]
    client.get("/items/1", headers={"User-Agent": KUBE_PROBE})
    [old_row] = storage.read_usage()
    assert old_row["path"] == "/items/1"  # written within the columns the table has

    assert "added column synthetic_type" in storage.upgrade_table()
    client.get("/items/2", headers={"User-Agent": KUBE_PROBE})
    newest = storage.read_usage()[0]
    assert (newest["path"], newest["synthetic_type"]) == ("/items/2", "test")
