"""Flask-Track-Usage 2.0 code runs with only its imports renamed: storages, writers, hooks, settings."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import ConfigError, TrackUsage
from flask_usage_otel.storage import Storage, Writer
from flask_usage_otel.storage.compat import CallableStorage, LegacyUserAgent
from flask_usage_otel.storage.output import OutputWriter
from flask_usage_otel.storage.printer import PrintStorage, PrintWriter

WAIT = 10.0


def _app(storage: Any, **config: Any) -> tuple[Flask, TrackUsage, CollectorRegistry]:
    app = Flask("compat")
    app.config.update(TRACK_USAGE_OTEL=False, TRACK_USAGE_FLUSH_INTERVAL=0.05, **config)

    @app.route("/")
    def index() -> str:
        return "home"

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return str(item_id)

    registry = CollectorRegistry()
    return app, TrackUsage(app, storage, registry=registry), registry


def test_a_callable_storage_gets_ftus_dict_on_the_writer_thread() -> None:
    received: list[tuple[dict[str, Any], int]] = []

    def storage(data: dict[str, Any]) -> None:
        received.append((data, threading.get_ident()))

    app, track, _ = _app(storage)
    response = app.test_client().get("/items/3?x=1", headers={"User-Agent": "curl/8.5.0"})
    assert response.status_code == 200
    with app.app_context():
        assert track.flush(WAIT)
    [(data, thread)] = received
    assert thread != threading.get_ident(), "called on the request thread"
    assert data["url"] == "http://localhost/items/3?x=1"
    assert data["view_args"] == {"item_id": 3}
    assert data["url_args"] == {"x": "1"}
    assert data["request"] == "GET http://localhost/items/3?x=1 HTTP/1.1"
    assert data["content_length"] == 1
    assert isinstance(data["user_agent"], LegacyUserAgent)
    assert str(data["user_agent"]) == "curl/8.5.0"
    assert isinstance(data["date"], int)


def test_ftu_storage_subclass_stores_and_reads_back() -> None:
    class ListStorage(Storage):
        def set_up(self, prefix: str = "") -> None:
            self.prefix = prefix
            self.rows: list[dict[str, Any]] = []

        def store(self, data: dict[str, Any]) -> None:
            self.rows.append({"path": self.prefix + data["path"], "status": data["status"]})

        def _get_usage(self, start_date: Any = None, end_date: Any = None, limit: int = 500, page: int = 1) -> Any:
            return list(reversed(self.rows))[:limit]

    storage = ListStorage(prefix="app:")
    app, track, _ = _app([storage])
    client = app.test_client()
    client.get("/")
    client.get("/missing")
    with app.app_context():
        assert track.flush(WAIT)
        assert track.get_usage() == [{"path": "app:/missing", "status": 404}, {"path": "app:/", "status": 200}]


def test_print_and_output_writers(capsys: pytest.CaptureFixture[str]) -> None:
    assert PrintStorage is PrintWriter
    out = io.StringIO()
    app, track, _ = _app([PrintWriter(), OutputWriter(output=out, transform=lambda d: f"OUTPUT: {d['path']}\n")])
    app.test_client().get("/items/5")
    with app.app_context():
        assert track.flush(WAIT)
    assert out.getvalue() == "OUTPUT: /items/5\n"
    printed = capsys.readouterr().out
    assert "'path': '/items/5'" in printed
    assert "'status': 200" in printed


def test_output_writer_refuses_what_it_cannot_write_to() -> None:
    with pytest.raises(TypeError, match="write method"):
        OutputWriter(output=object())
    with pytest.raises(ValueError, match="not writable"):
        OutputWriter(output=io.BufferedReader(io.BytesIO(b"")))  # type: ignore[arg-type]


def test_a_failing_storage_costs_its_record_only_and_is_counted() -> None:
    calls: list[str] = []

    class Flaky(Writer):
        def store(self, data: dict[str, Any]) -> None:
            calls.append(data["path"])
            if data["path"] == "/items/2":
                raise RuntimeError("disk full")

    app, track, registry = _app([Flaky()])
    client = app.test_client()
    for item in (1, 2, 3):
        assert client.get(f"/items/{item}").status_code == 200
    with app.app_context():
        assert not track.flush(WAIT)  # every record was handed over, but one is lost: no success reported
        [wrapped] = track.storages()
    assert calls == ["/items/1", "/items/2", "/items/3"], "no record twice, none skipped"
    assert isinstance(wrapped, CallableStorage)
    assert wrapped.rows_failed == 1
    assert registry.get_sample_value("flask_usage_storage_rows_dropped_total") == 1
    assert registry.get_sample_value("flask_usage_storage_dropped_total", {"reason": "storage_error"}) == 1
    assert registry.get_sample_value("flask_usage_storage_rows_written_total") == 2


class _NotAStorage:
    pass


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ([None], "is None"),
        ([PrintWriter], "is a class, not an instance"),
        ([lambda: None], "cannot take it"),
        ([lambda a, b: None], "cannot take it"),
        ([_NotAStorage()], "neither callable"),
    ],
)
def test_unusable_storages_are_refused_at_init_app(storage: Any, message: str) -> None:
    app = Flask("refused")
    with pytest.raises(ConfigError, match=message):
        TrackUsage(app, storage, registry=CollectorRegistry())
    assert "track_usage" not in app.extensions
    assert not app.before_request_funcs
    assert "/metrics" not in {rule.rule for rule in app.url_map.iter_rules()}


def test_summary_hooks_belong_to_sqlstorage() -> None:
    from flask_usage_otel.summarization import sumUrl

    class Mine(Storage):
        def store(self, data: dict[str, Any]) -> None:
            pass

    with pytest.raises(TypeError, match="SQLStorage"):
        Mine(hooks=[sumUrl])


FTU_APP = """
from flask import Flask, g

app = Flask(__name__)
app.config["TRACK_USAGE_USE_FREEGEOIP"] = False
app.config["TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS"] = "include"
app.config["TRACK_USAGE_OTEL"] = False

from flask_track_usage import TrackUsage
from flask_track_usage.storage.output import OutputWriter
from flask_track_usage.storage.printer import PrintWriter
from flask_track_usage.storage.sql import SQLStorage
from flask_track_usage.summarization import sumUrl, sumServer
import sqlalchemy

engine = sqlalchemy.create_engine("sqlite:///legacy.db")
sql = SQLStorage(engine=engine, hooks=[sumUrl, sumServer])
t = TrackUsage(app, [PrintWriter(), OutputWriter(transform=lambda s: "OUTPUT: " + str(s) + "\\n"), sql])


@t.include
@app.route("/")
def index():
    g.track_var["optional"] = "something"
    return "Hello"
"""


def test_ftu_readme_app_runs_with_its_imports_renamed(tmp_path: Path) -> None:
    source = FTU_APP.replace("flask_track_usage", "flask_usage_otel")
    script = tmp_path / "legacy_app.py"
    script.write_text(
        source
        + textwrap.dedent(
            """
            import json
            response = app.test_client().get("/")
            assert response.status_code == 200, response.status_code
            with app.app_context():
                t.flush()
                rows = sql.get_usage()
            print("ROW", json.loads(rows[0]["track_var"]))
            print("SUM", sql.get_sum(sumUrl, period="daily")[0]["hits"])
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "ROW {'optional': 'something'}" in done.stdout
    assert "SUM 1" in done.stdout
    assert "OUTPUT: {" in done.stderr


def test_legacy_setting_warning_is_shown_at_the_users_line(tmp_path: Path) -> None:
    # A warning of the deprecation category would be hidden outside __main__ by Python's default filters;
    # this one must reach the user, pointing at their own file and line.
    (tmp_path / "myapp.py").write_text(
        "from flask import Flask\n"
        "from flask_usage_otel import TrackUsage\n"
        "app = Flask(__name__)\n"
        "app.config['TRACK_USAGE_USE_FREEGEOIP'] = None\n"
        "app.config['TRACK_USAGE_OTEL'] = False\n"
        "track = TrackUsage(app)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", "import myapp"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "myapp.py:6: LegacySettingWarning: TRACK_USAGE_USE_FREEGEOIP is obsolete" in done.stderr


def test_cli_finds_the_sql_storage_behind_writers(tmp_path: Path) -> None:
    from flask_usage_otel.cli import usage
    from flask_usage_otel.storage.sql import SQLStorage

    sql = SQLStorage(f"sqlite:///{tmp_path / 'cli.db'}", table_name="legacy_usage")
    app, _, _ = _app([PrintWriter(), sql])
    app.cli.add_command(usage)
    result = app.test_cli_runner().invoke(args=["usage", "upgrade-table"])
    assert result.exit_code == 0, result.output
    assert "table 'legacy_usage' is up to date" in result.output


def test_every_import_of_the_migration_guide_works() -> None:
    import re

    guide = (Path(__file__).parents[2] / "docs" / "migration.md").read_text()
    statements = re.findall(r"`(from flask_usage_otel[\w.]* import [\w, ]+)`", guide)
    assert len(statements) == 5
    for statement in statements:
        exec(statement, {})
    summarization = __import__("flask_usage_otel.summarization", fromlist=["x"])
    for name in ("sumUrl", "sumRemote", "sumUserAgent", "sumLanguage", "sumServer"):
        assert hasattr(summarization, name)
    for link in re.findall(r"\]\(([^)#]+)\)", guide):
        assert (Path(__file__).parents[2] / "docs" / link).exists(), link


def test_get_usage_filters_and_the_decoded_reader_of_trackusage(tmp_path: Path) -> None:
    from flask_usage_otel.storage.sql import SQLStorage

    sql = SQLStorage(f"sqlite:///{tmp_path / 'read.db'}")
    app, track, _ = _app([PrintWriter(), sql], TRACK_USAGE_SYNC_WRITES=True)
    client = app.test_client()
    client.get("/items/1")
    client.get("/missing")
    assert [row["path"] for row in sql.get_usage(route="/items/<int:item_id>", status=[200])] == ["/items/1"]
    with app.app_context():
        rows = track.read_usage(limit=5)
    assert [(row["path"], row["route"], row["view_args"]) for row in rows] == [
        ("/missing", "<unmatched>", {}),
        ("/items/1", "/items/<int:item_id>", {"item_id": 1}),
    ]
