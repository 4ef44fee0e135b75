"""flask-usage-otel against real Flask-Track-Usage 2.0.0, on the same table, field by field.

Flask-Track-Usage runs in its own interpreter (``ftu_runner.py``); both serve the requests of
``scenario.py``. Dates are whole seconds in its rows (it stored ``int`` timestamps), so rows
are compared as sorted lists, and the newest-first order is checked on its own.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from flask_usage_otel.storage.sql import SQLStorage
from flask_usage_otel.useragent import parse_user_agent
from tests.ftu import scenario
from tests.ftu.conftest import Database, our_app, run_ftu

pytestmark = pytest.mark.integration

FTU_KEYS = [
    "url",
    "user_agent",
    "blueprint",
    "view_args",
    "status",
    "remote_addr",
    "xforwardedfor",
    "authorization",
    "ip_info",
    "path",
    "speed",
    "date",
    "username",
    "track_var",
]
JSON_FIELDS = ("view_args", "track_var", "ip_info")


def _typed(rows: list[dict[str, Any]]) -> list[Any]:
    return json.loads(scenario.dumps(rows))


def _sorted(rows: list[Any]) -> list[Any]:
    return sorted(rows, key=lambda row: json.dumps(row, sort_keys=True, ensure_ascii=False))


def _plain(row: Any) -> dict[str, Any]:
    """A typed row back to plain values, JSON text decoded (its spacing aside, the same data)."""
    out: dict[str, Any] = scenario.decode(row)
    for key in JSON_FIELDS:
        if out.get(key) is not None:
            with contextlib.suppress(ValueError):  # Flask-Track-Usage cut view_args to 64 characters
                out[key] = json.loads(out[key])
    return out


def _storage(db: Database, table: str) -> SQLStorage:
    return SQLStorage(db.url, table_name=table)


def test_a_table_ftu_filled_reads_as_ftu_reads_it(ftu: Path, database: Database) -> None:
    table = database.table()
    run_ftu(ftu, "fill", database, table)
    theirs = run_ftu(ftu, "read", database, table)
    storage = _storage(database, table)
    rows = storage.get_usage(limit=1000)
    assert len(theirs) == len(rows) == len(scenario.REQUESTS)
    assert [list(row) for row in rows] == [FTU_KEYS] * len(rows)
    assert _sorted(_typed(rows)) == _sorted(theirs)  # every field, with its type
    dates = [row["date"] for row in rows]
    assert dates == sorted(dates, reverse=True)
    # What Flask-Track-Usage users do with these fields keeps working.
    [item] = [row for row in rows if row["path"] == "/items/7"]
    assert json.loads(item["track_var"]) == {"optional": "something", "item": 7}
    assert json.loads(item["view_args"]) == {"item_id": 7}
    # And the decoded reader reads the same table.
    decoded = {row["path"]: row for row in storage.read_usage(limit=1000)}
    assert decoded["/items/7"]["track_var"] == {"optional": "something", "item": 7}
    storage.engine.dispose()


def test_rows_we_write_into_ftus_table_are_read_back_by_ftu(ftu: Path, database: Database) -> None:
    reference = database.table()
    run_ftu(ftu, "fill", database, reference)
    expected = [_plain(row) for row in run_ftu(ftu, "read", database, reference)]

    table = database.table()
    run_ftu(ftu, "create", database, table)  # Flask-Track-Usage's own table, narrow columns and all
    storage = _storage(database, table)
    scenario.run(our_app(storage), scenario.REQUESTS)
    theirs = run_ftu(ftu, "read", database, table)
    ours = _typed(storage.get_usage(limit=1000))
    assert len(theirs) == len(scenario.REQUESTS)
    # Both read our rows alike (JSON spacing aside: ours is compact).
    assert _sorted([_plain(row) for row in ours]) == _sorted([_plain(row) for row in theirs])

    # And our rows hold what Flask-Track-Usage's own rows hold for the same requests, except the
    # timing, and the user agent that Werkzeug 2.1+ no longer parsed for it (None) and we parse.
    ua = parse_user_agent(scenario.USER_AGENT)
    got = []
    for row in (_plain(r) for r in theirs):
        assert isinstance(row.pop("speed"), float)
        assert isinstance(row.pop("date"), str)
        assert row.pop("user_agent") == {
            "browser": ua.browser,
            "language": "fr-CH",
            "platform": ua.platform,
            "version": ua.version,
        }
        got.append(row)
    for row in expected:
        del row["speed"], row["date"]
        assert row.pop("user_agent") == dict.fromkeys(("browser", "language", "platform", "version"))
    assert _sorted(got) == _sorted(expected)
    storage.engine.dispose()


def test_ftu_still_works_after_upgrade_table_and_long_values_stay_whole(ftu: Path, database: Database) -> None:
    table = database.table()
    run_ftu(ftu, "fill", database, table)
    storage = _storage(database, table)
    assert storage.missing_columns()
    if database.name == "postgresql":
        # The reason for the upgrade: Flask-Track-Usage's columns refuse these values there.
        with pytest.raises(AssertionError, match="value too long"):
            run_ftu(ftu, "fill_long", database, table)
    changes = storage.upgrade_table()
    assert "added column route" in changes
    assert storage.missing_columns() == []

    run_ftu(ftu, "fill_long", database, table)  # Flask-Track-Usage writes into the upgraded table
    scenario.run(our_app(storage), scenario.LONG_REQUESTS)  # the storage that upgraded it
    fresh = _storage(database, table)  # and one made afterwards (another process)
    scenario.run(our_app(fresh), scenario.LONG_REQUESTS)

    theirs = run_ftu(ftu, "read", database, table)
    ours = storage.get_usage(limit=1000)
    assert len(ours) == len(theirs) == len(scenario.REQUESTS) + 3 * len(scenario.LONG_REQUESTS)
    # The same rows read alike (our rows' JSON is compact: Flask-Track-Usage gives it back as stored).
    assert _sorted([_plain(row) for row in _typed(ours)]) == _sorted([_plain(row) for row in theirs])

    long_path = f"/long/{scenario.LONG}"
    long_rows = [row for row in ours if row["path"] == long_path]
    assert len(long_rows) == 3
    for row in long_rows:  # whole: Flask-Track-Usage's and ours
        assert row["url"] == f"http://localhost{long_path}?q={'y' * 200}"
        assert row["xforwardedfor"] == scenario.IPV6_CHAIN
        assert json.loads(row["track_var"]) == {"note": "n" * 200}
    decoded = [row for row in fresh.read_usage(limit=1000) if row["path"] == long_path and row["route"] is not None]
    assert len(decoded) == 2
    assert all(row["user_agent_raw"] == scenario.USER_AGENT for row in decoded)
    storage.engine.dispose()
    fresh.engine.dispose()


def test_the_dict_given_to_storages_is_ftus(ftu: Path, tmp_path: Path) -> None:
    nowhere = Database("sqlite", f"sqlite:///{tmp_path / 'unused.db'}", f"sqlite:///{tmp_path / 'unused.db'}", [])
    theirs = [scenario.decode(row) for row in run_ftu(ftu, "dicts", nowhere, "unused")]
    received: list[dict[str, Any]] = []

    def keep(data: dict[str, Any]) -> None:
        data = dict(data)
        data["user_agent"] = str(data["user_agent"])
        received.append(data)

    scenario.run(our_app(keep), scenario.REQUESTS)
    ours = [scenario.decode(row) for row in _typed(received)]
    assert len(ours) == len(theirs) == len(scenario.REQUESTS)
    for mine, reference in zip(ours, theirs, strict=True):
        assert list(mine) == list(reference)
        assert isinstance(mine.pop("speed"), float)
        assert isinstance(reference.pop("speed"), float)
        assert abs(mine.pop("date") - reference.pop("date")) < 600
        assert mine == reference


def test_a_running_app_sees_an_upgrade_made_elsewhere(ftu: Path, database: Database) -> None:
    table = database.table()
    run_ftu(ftu, "create", database, table)
    running = _storage(database, table)
    running.legacy_recheck_interval = 0.0  # look at every write (60 s by default)
    app = our_app(running)
    scenario.run(app, scenario.LONG_REQUESTS[:1])
    [before] = running.get_usage()
    cut = database.name != "sqlite"  # the old widths hold where the database enforces them
    assert (before["xforwardedfor"] != scenario.IPV6_CHAIN) is cut

    elsewhere = _storage(database, table)  # `flask usage upgrade-table` in another process
    assert elsewhere.upgrade_table()
    scenario.run(app, scenario.LONG_REQUESTS[:1])
    after = running.get_usage()[0]
    assert after["xforwardedfor"] == scenario.IPV6_CHAIN
    assert after["url"] == f"http://localhost/long/{scenario.LONG}?q={'y' * 200}"
    assert running.read_usage()[0]["route"] == "/long/<path:rest>"
    running.engine.dispose()
    elsewhere.engine.dispose()


def test_unmatched_requests_in_ftus_table_hold_null_view_args_as_ftu_wrote(ftu: Path, database: Database) -> None:
    """A 404 or 405 matched no URL rule: FTU stored ``json.dumps(None)``, and a table without our ``route``
    column can tell those rows from a view without arguments only by that."""
    reference = database.table()
    run_ftu(ftu, "fill", database, reference)
    table = database.table()
    run_ftu(ftu, "create", database, table)
    storage = _storage(database, table)
    scenario.run(our_app(storage), scenario.REQUESTS)
    assert storage.missing_columns(), "still Flask-Track-Usage's table"

    def view_args(rows: list[dict[str, Any]]) -> dict[tuple[str, int], Any]:
        return {(row["path"], row["status"]): row["view_args"] for row in rows}

    unmatched = [("/missing", 404), ("/items/8", 405)]
    ftu_rows = view_args([scenario.decode(row) for row in run_ftu(ftu, "read", database, reference)])
    ftu_reads_ours = view_args([scenario.decode(row) for row in run_ftu(ftu, "read", database, table)])
    ours = view_args(storage.get_usage(limit=1000))
    for key in unmatched:
        assert ours[key] == ftu_reads_ours[key] == ftu_rows[key] == "null", key
    assert ours[("/", 200)] is None  # a matched view without arguments
    storage.engine.dispose()
