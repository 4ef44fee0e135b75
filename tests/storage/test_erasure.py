"""Erasure finds exactly a person's rows, as the app wrote them, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, request
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.cli import usage
from flask_usage_otel.privacy import ErasureRefused
from flask_usage_otel.storage.sql import SQLStorage

# (REMOTE_ADDR, X-Forwarded-For, user): the person is 192.0.2.1 / "erin"; the others share prefixes.
PERSON = "192.0.2.1"
REQUESTS: list[tuple[str, str | None, str | None]] = [
    (PERSON, None, None),
    ("::ffff:192.0.2.1", None, None),  # the same client, through a dual-stack socket
    ("10.0.0.2", f"{PERSON}, 10.0.0.2", None),  # the same client, behind a proxy
    ("10.0.0.2", f"203.0.113.5,{PERSON}", None),
    ("192.0.2.10", None, None),
    ("192.0.2.11", "192.0.2.100", None),
    ("10.0.0.2", "192.0.2.12, 10.0.0.2", "bob"),
    ("198.51.100.9", None, "erin"),
]
PERSONS_ROWS = 4  # by address


def _app(storage: SQLStorage, mode: str | None) -> tuple[Flask, TrackUsage]:
    app = Flask("erasure")
    app.config.update(
        TRACK_USAGE_SYNC_WRITES=True,
        TRACK_USAGE_ANONYMIZE_IP=mode,
        TRACK_USAGE_ANONYMIZE_IP_KEY="erasure-key",
        TRACK_USAGE_CAPTURE_USER=lambda: request.headers.get("X-Test-User"),
    )
    app.add_url_rule("/", "index", lambda: "ok")
    track = TrackUsage(app, storage, registry=CollectorRegistry())
    client = app.test_client()
    for remote, forwarded, user in REQUESTS:
        headers = {}
        if forwarded is not None:
            headers["X-Forwarded-For"] = forwarded
        if user is not None:
            headers["X-Test-User"] = user
        assert client.get("/", environ_base={"REMOTE_ADDR": remote}, headers=headers).status_code == 200
    return app, track


def _rows(storage: SQLStorage) -> list[dict[str, Any]]:
    with storage.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(storage.table))]


@pytest.mark.parametrize("mode", [None, "hash"])
def test_forget_by_address_deletes_exactly_the_persons_rows(storage: SQLStorage, mode: str | None) -> None:
    app, track = _app(storage, mode)
    before = _rows(storage)
    assert len(before) == len(REQUESTS)
    if mode == "hash":
        assert not any(PERSON in str(row["remote_addr"]) + str(row["xforwardedfor"]) for row in before)
    with app.app_context():
        assert track.forget(remote_addr=PERSON) == PERSONS_ROWS
    kept = _rows(storage)
    assert len(kept) == len(REQUESTS) - PERSONS_ROWS
    # Each remaining row is one of the other clients' (ids are in insertion order).
    assert sorted(r["id"] for r in kept) == sorted(r["id"] for r in before)[PERSONS_ROWS:]
    with app.app_context():
        assert track.forget(remote_addr=PERSON) == 0


def test_truncated_addresses_are_refused_and_nothing_is_deleted(storage: SQLStorage) -> None:
    app, track = _app(storage, "truncate")
    with app.app_context(), pytest.raises(ErasureRefused, match="truncated") as refused:
        track.forget(remote_addr=PERSON)
    assert "192.0.2.0" in str(refused.value)
    assert "username" in str(refused.value)
    assert len(_rows(storage)) == len(REQUESTS)
    result = app.test_cli_runner().invoke(usage, ["forget", "--remote-addr", PERSON])
    assert result.exit_code == 1
    assert "nothing was deleted" in result.output
    assert len(_rows(storage)) == len(REQUESTS)


def test_cli_forget_applies_the_apps_hash(storage: SQLStorage) -> None:
    app, _ = _app(storage, "hash")
    result = app.test_cli_runner().invoke(usage, ["forget", "--remote-addr", PERSON, "--username", "erin"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"deleted {PERSONS_ROWS + 1} rows"
    assert len(_rows(storage)) == len(REQUESTS) - PERSONS_ROWS - 1


def test_a_user_id_cut_at_the_column_width_is_found(storage: SQLStorage) -> None:
    app = Flask("long-users")
    app.config.update(TRACK_USAGE_SYNC_WRITES=True, TRACK_USAGE_CAPTURE_USER=lambda: request.headers.get("X-Test-User"))
    app.add_url_rule("/", "index", lambda: "ok")
    track = TrackUsage(app, storage, registry=CollectorRegistry())
    long_id = "u" * 300
    for user in (long_id, long_id, "u" * 254, "someone"):
        app.test_client().get("/", headers={"X-Test-User": user})
    assert {len(r["username"]) for r in _rows(storage)} == {255, 254, 7}
    with app.app_context():
        assert track.forget(username=long_id) == 2
    assert sorted(len(r["username"]) for r in _rows(storage)) == [7, 254]


def test_storage_forget_without_the_anonymizer_matches_stored_values(storage: SQLStorage) -> None:
    _app(storage, None)
    assert storage.forget(remote_addr="::ffff:192.0.2.1") == PERSONS_ROWS  # any spelling of the address
    with pytest.raises(ValueError, match="needs a username"):
        storage.forget()


def test_nothing_is_deleted_when_queued_rows_cannot_be_written_first(tmp_path: Any) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}", create_tables=False)
    app = Flask("queued")
    app.config.update(TRACK_USAGE_FLUSH_INTERVAL=0.05)
    app.add_url_rule("/", "index", lambda: "ok")
    track = TrackUsage(app, storage, registry=CollectorRegistry())
    app.test_client().get("/", environ_base={"REMOTE_ADDR": PERSON})  # queued; its table does not exist
    track.flush = lambda timeout=10.0: False  # type: ignore[method-assign]  # as if the database were down
    with app.app_context(), pytest.raises(RuntimeError, match="nothing was deleted"):
        track.forget(remote_addr=PERSON)
    for sink in track._trackers[app].sinks:
        sink.shutdown(timeout=0.1)
