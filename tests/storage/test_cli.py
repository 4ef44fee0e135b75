"""``flask usage ...`` commands, run through Flask's CLI test runner against a real SQLite storage."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.cli import CSV_COLUMNS, usage
from flask_usage_otel.storage.sql import SQLStorage

from .conftest import make_record

NOW = datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture
def storage(tmp_path: Path) -> SQLStorage:
    return SQLStorage(f"sqlite:///{tmp_path / 'cli.db'}")


@pytest.fixture
def app(storage: SQLStorage) -> Flask:
    app = Flask("cli-app")
    TrackUsage(app, storage=storage, registry=CollectorRegistry())
    return app


def run(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(usage, list(args))


def fill(storage: SQLStorage) -> None:
    storage.store(
        [
            make_record(timestamp=(NOW - timedelta(days=d)).timestamp(), route=f"/r{(d // 10) % 2}")
            for d in range(0, 60, 10)
        ]
    )


def test_usage_group_is_registered_for_flask() -> None:
    from importlib.metadata import entry_points

    [entry] = [e for e in entry_points(group="flask.commands") if e.name == "usage"]
    assert entry.load() is usage


def test_create_tables_and_upgrade_table(app: Flask, storage: SQLStorage) -> None:
    result = run(app, "create-tables")
    assert result.exit_code == 0, result.output
    assert "is ready" in result.output
    assert storage.get_usage() == []
    result = run(app, "upgrade-table")
    assert result.exit_code == 0, result.output
    assert "is up to date" in result.output


def test_export_jsonl_json_and_csv(app: Flask, storage: SQLStorage, tmp_path: Path) -> None:
    fill(storage)
    result = run(app, "export", "--since", "25d", "--chunk-size", "2")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["route"] for r in rows] == ["/r0", "/r1", "/r0"]
    assert [datetime.fromisoformat(r["date"]) for r in rows] == [NOW - timedelta(days=d) for d in (20, 10, 0)]
    assert rows[0]["user_agent"]["browser"] == "firefox"

    result = run(app, "export", "--format", "json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)) == 6

    out = tmp_path / "rows.csv"
    result = run(
        app, "export", "--format", "csv", "--output", str(out), "--until", (NOW - timedelta(days=35)).isoformat()
    )
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert tuple(table[0]) == CSV_COLUMNS
    assert [row["ua_browser"] for row in table] == ["firefox"] * 2
    assert json.loads(table[0]["track_var"]) == {"campaign": "spring", "n": 3}


def test_export_of_an_empty_range_is_valid_json(app: Flask, storage: SQLStorage) -> None:
    result = run(app, "export", "--format", "json", "--since", "2000-01-01", "--until", "2000-01-02")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == []


def test_prune_and_forget(app: Flask, storage: SQLStorage) -> None:
    fill(storage)
    result = run(app, "prune", "--older-than", "35d")
    assert result.exit_code == 0, result.output
    assert "deleted 2 rows older than 35 days" in result.output
    assert len(storage.get_usage()) == 4
    result = run(app, "forget", "--username", "alice")
    assert result.exit_code == 0, result.output
    assert "deleted 4 rows" in result.output


def test_summary_table_and_json(app: Flask, storage: SQLStorage) -> None:
    fill(storage)
    result = run(app, "summary", "--by", "route", "--period", "month", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert sum(r["hits"] for r in summary) == 6
    assert {r["route"] for r in summary} == {"/r0", "/r1"}
    result = run(app, "summary", "--since", "1d")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["period", "route", "hits", "request_bytes", "response_bytes", "avg_speed"]
    assert lines[1].split()[:3] == [NOW.strftime("%Y-%m-%d"), "/r0", "1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune"], "Missing option '--older-than'"),
        (["prune", "--older-than", "soon"], "is not a duration"),
        (["prune", "--older-than", "0d"], "must be longer than zero"),
        (["export", "--format", "xml"], "Invalid value for '--format'"),
        (["export", "--since", "yesterday"], "neither an ISO date"),
        (["export", "--since", "2024-02-01", "--until", "2024-01-01"], "is before --since"),
        (["summary", "--by", "colour"], "Invalid value for '--by'"),
        (["summary", "--period", "week"], "Invalid value for '--period'"),
        (["forget"], "give --username, --remote-addr or both"),
    ],
)
def test_bad_arguments_are_usage_errors(app: Flask, args: list[str], message: str) -> None:
    result = run(app, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_an_app_without_storage_gets_a_usage_error() -> None:
    app = Flask("bare")
    TrackUsage(app, registry=CollectorRegistry())
    result = run(app, "create-tables")
    assert result.exit_code == 2
    assert "has no storage" in result.output
    bare = Flask("untracked")
    result = run(bare, "summary")
    assert result.exit_code == 2
    assert "has no TrackUsage" in result.output


def test_flask_command_line_finds_the_group(tmp_path: Path, monkeypatch: Any) -> None:
    from flask.cli import FlaskGroup

    app = Flask("via-entry-point")
    TrackUsage(app, storage=SQLStorage(f"sqlite:///{tmp_path / 'ep.db'}"), registry=CollectorRegistry())
    cli = FlaskGroup(create_app=lambda: app)
    result = app.test_cli_runner().invoke(cli, ["usage", "create-tables"])
    assert result.exit_code == 0, result.output
    assert "is ready" in result.output
