"""Erasure finds exactly a person's rows, as the app wrote them, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, request
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.cli import usage
from flask_usage_otel.ftu_names import LegacyNameWarning
from flask_usage_otel.privacy import ErasureRefused
from flask_usage_otel.storage.sql import SQLStorage
from flask_usage_otel.summarization import sumRemote, sumUrl

from .conftest import MARIADB_URL, POSTGRES_URL, drop_table, make_record, require_server

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


def _app(
    storage: SQLStorage, mode: str | None, requests: list[tuple[str, str | None, str | None]] = REQUESTS
) -> tuple[Flask, TrackUsage]:
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
    for remote, forwarded, user in requests:
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


# -- every table keyed by the person, every spelling, a refusal instead of nothing -------------


@pytest.fixture
def summarised(db_url: str, table_name: str) -> Iterator[SQLStorage]:
    """A storage with summary tables keyed by the client address (sumRemote) and by URL."""
    store = SQLStorage(db_url, table_name=table_name, hooks=[sumRemote, sumUrl])
    try:
        yield store
    finally:
        with store.engine.begin() as conn:
            for table in store.sum_tables.values():
                table.drop(conn, checkfirst=True)
        drop_table(store.engine, table_name)
        store.engine.dispose()


def _remote_keys(storage: SQLStorage) -> dict[str, set[str]]:
    """The keys of each sumRemote table (hourly, daily, monthly)."""
    keys: dict[str, set[str]] = {}
    with storage.engine.connect() as conn:
        for name, table in storage.sum_tables.items():
            if name.startswith("remote_"):
                keys[name] = set(conn.execute(sa.select(table.c.remote)).scalars())
    return keys


@pytest.mark.parametrize("mode", [None, "hash"])
def test_forget_deletes_the_summary_rows_keyed_by_the_address(summarised: SQLStorage, mode: str | None) -> None:
    app, track = _app(summarised, mode)
    before = _remote_keys(summarised)
    assert set(before) == {"remote_hourly", "remote_daily", "remote_monthly"}
    # The person's own requests are the first two (192.0.2.1 and ::ffff:192.0.2.1): their stored keys.
    person = {row["remote_addr"] for row in sorted(_rows(summarised), key=lambda r: r["id"])[:2]}
    assert len(person) == (2 if mode is None else 1)
    assert all(person <= keys and len(keys - person) == 4 for keys in before.values())
    with app.app_context():
        assert track.forget(remote_addr=PERSON) == PERSONS_ROWS
    after = _remote_keys(summarised)
    assert after == {name: keys - person for name, keys in before.items()}
    # Keys that are not a person stay whole: the URL summary still counts every request.
    (url_row,) = summarised.get_sum(sumUrl, period="monthly")
    assert url_row["hits"] == len(REQUESTS)


# A gateway that writes its client's port into X-Forwarded-For; the others are different clients.
PORTED = "198.51.100.23"
PORTED_REQUESTS: list[tuple[str, str | None, str | None]] = [
    ("10.0.0.2", f"{PORTED}:51234", None),
    ("10.0.0.2", f"{PORTED}:51234, 10.0.0.2", None),
    ("10.0.0.2", f"203.0.113.5, {PORTED}:443", None),
    ("10.0.0.2", f"[::ffff:{PORTED}]:8080", None),
    ("10.0.0.2", "198.51.100.230:51234", None),
    ("10.0.0.2", "198.51.100.2:3, 10.0.0.2", None),
]


@pytest.mark.parametrize("mode", [None, "hash"])
def test_forwarded_entries_with_a_port_are_forgotten(storage: SQLStorage, mode: str | None) -> None:
    app, track = _app(storage, mode, PORTED_REQUESTS)
    ids = [row["id"] for row in sorted(_rows(storage), key=lambda r: r["id"])]
    with app.app_context():
        assert track.forget(remote_addr=PORTED) == 4
    assert sorted(row["id"] for row in _rows(storage)) == ids[4:]


IPV6_REQUESTS: list[tuple[str, str | None, str | None]] = [
    ("2001:db8::1", None, None),
    ("2001:db8::1", None, None),
    ("10.0.0.2", "2001:DB8:0:0:0:0:0:1", None),
    ("10.0.0.2", "[2001:db8::1]:443, 10.0.0.2", None),
    ("2001:db8::10", "2001:db8::11", None),
]


@pytest.mark.parametrize("mode", [None, "hash"])
@pytest.mark.parametrize("spelling", ["2001:DB8::1", "2001:0db8:0000:0000:0000:0000:0000:0001", "[2001:db8::1]:8443"])
def test_every_spelling_of_an_ipv6_address_finds_its_rows(storage: SQLStorage, mode: str | None, spelling: str) -> None:
    app, track = _app(storage, mode, IPV6_REQUESTS)
    with app.app_context():
        assert track.forget(remote_addr=spelling) == 4
    assert [row["remote_addr"] for row in _rows(storage)] in (["2001:db8::10"], [_hashed("2001:db8::10")])


def _hashed(address: str) -> str | None:
    from flask_usage_otel.privacy import Anonymizer

    return Anonymizer("hash", b"erasure-key").address(address)


def test_the_storage_of_an_app_with_hashed_addresses_hashes_them_itself(storage: SQLStorage) -> None:
    _app(storage, "hash")
    assert storage.forget(remote_addr=PERSON) == PERSONS_ROWS
    assert len(_rows(storage)) == len(REQUESTS) - PERSONS_ROWS


def test_hashed_rows_and_no_key_at_hand_are_refused(storage: SQLStorage, db_url: str) -> None:
    _app(storage, "hash")
    unbound = SQLStorage(db_url, table_name=storage.table.name)  # the same table, no app to ask for the key
    try:
        with pytest.raises(ErasureRefused, match="hashed"):
            unbound.forget(remote_addr=PERSON)
        assert len(_rows(storage)) == len(REQUESTS)
        assert unbound.forget(username="erin") == 1  # a user id needs no key
    finally:
        unbound.engine.dispose()


def test_forget_does_not_wait_on_a_log_collector_that_never_answers(storage: SQLStorage) -> None:
    """Erasure flushes the storages it erases from, nothing else: a hung OTLP collector holds up nothing."""
    import socket
    import time

    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    from flask_usage_otel.otel import build_logger_provider

    with socket.socket() as collector:  # accepts connections (the kernel's backlog), never reads or answers
        collector.bind(("127.0.0.1", 0))
        collector.listen(64)
        port = collector.getsockname()[1]
        exporter = OTLPLogExporter(endpoint=f"http://127.0.0.1:{port}/v1/logs", timeout=5)
        logger_provider = build_logger_provider("svc", exporter=exporter)
        app = Flask("hung-collector")
        app.config.update(
            TRACK_USAGE_FLUSH_INTERVAL=0.05,
            TRACK_USAGE_OTEL=False,
            TRACK_USAGE_OTEL_LOGS=True,
            TRACK_USAGE_CAPTURE_USER=lambda: request.headers.get("X-Test-User"),
        )
        app.add_url_rule("/", "index", lambda: "ok")
        track = TrackUsage(app, storage, registry=CollectorRegistry(), logger_provider=logger_provider)
        try:
            client = app.test_client()
            for user in ["alice"] * 300 + ["bob"] * 20:
                assert client.get("/", headers={"X-Test-User": user}).status_code == 200
            time.sleep(0.5)  # the log records are on their way to the collector, which holds them
            started = time.monotonic()
            with app.app_context():
                deleted = track.forget(username="alice")
            elapsed = time.monotonic() - started
            assert deleted == 300
            assert elapsed < 2.0, f"forget took {elapsed:.1f} s"
            assert sorted({row["username"] for row in _rows(storage)}) == ["bob"]
            assert len(_rows(storage)) == 20
        finally:
            for sink in track._trackers[app].sinks:
                sink.shutdown(timeout=0.1)
            logger_provider.shutdown()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql+psycopg", marks=pytest.mark.integration),
        pytest.param("mysql+pymysql", marks=pytest.mark.integration),
        pytest.param("mariadb+pymysql", marks=pytest.mark.integration),
    ]
)
def any_scheme(request: pytest.FixtureRequest, tmp_path: Path, table_name: str) -> Iterator[SQLStorage]:
    """A storage on each database, MariaDB through both of its URL schemes (SQLAlchemy names the
    dialect ``mysql`` for one, ``mariadb`` for the other, and reads dialect options by that name)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'usage.db'}"
    elif request.param.startswith("postgresql"):
        require_server("postgresql", 5432)
        url = POSTGRES_URL
    else:
        require_server("mariadb", 3306)
        url = sa.make_url(MARIADB_URL).set(drivername=request.param).render_as_string(hide_password=False)
    store = SQLStorage(url, table_name=table_name)
    try:
        yield store
    finally:
        drop_table(store.engine, table_name)
        store.engine.dispose()


def test_prune_and_forget_delete_chunk_size_rows_per_transaction(any_scheme: SQLStorage) -> None:
    storage = any_scheme
    now = datetime.now(timezone.utc)
    old = [make_record(timestamp=(now - timedelta(days=40, minutes=i)).timestamp()) for i in range(25)]
    storage.store(old + [make_record(timestamp=(now - timedelta(minutes=i)).timestamp()) for i in range(12)])
    events: list[str] = []

    def statement(conn: Any, cursor: Any, text: str, *args: Any) -> None:
        if text.lstrip().upper().startswith("DELETE") and storage.table.name in text and "_batches" not in text:
            events.append(f"DELETE {cursor.rowcount}")

    sa.event.listen(storage.engine, "after_cursor_execute", statement)
    sa.event.listen(storage.engine, "commit", lambda conn: events.append("COMMIT"))
    assert storage.prune(timedelta(days=30), chunk_size=7) == 25
    # One transaction per chunk, each at most chunk_size rows; the last, short one ends the loop.
    assert events[:8] == ["DELETE 7", "COMMIT"] * 3 + ["DELETE 4", "COMMIT"]
    assert len(storage.read_usage()) == 12
    events.clear()
    assert storage.forget(username="alice", chunk_size=5) == 12  # make_record's user
    assert [e for e in events if e.startswith("DELETE")] == ["DELETE 5", "DELETE 5", "DELETE 2"]
    assert storage.read_usage() == []


def _tracked(storage: SQLStorage, **options: Any) -> tuple[Flask, TrackUsage]:
    """An app whose requests reach ``storage`` through the real background writer, all made by "alice"."""
    app = Flask("chunks")
    app.config.update(
        TRACK_USAGE_FLUSH_INTERVAL=0.05, TRACK_USAGE_BATCH_SIZE=5, TRACK_USAGE_CAPTURE_USER=lambda: "alice"
    )
    app.add_url_rule("/<int:n>", "hit", lambda n: "ok")
    return app, TrackUsage(app, storage, registry=CollectorRegistry(), **options)


def test_the_cli_prune_and_the_apps_forget_delete_in_chunks_of_what_the_writer_wrote(
    any_scheme: SQLStorage, table_name: str
) -> None:
    """The chunked DELETE (a derived table of ids on MariaDB, through either scheme) on rows that requests
    wrote through the writer; the old ones through Flask-Track-Usage's fixed time, the new ones through
    the app that erases."""
    old_storage = SQLStorage(any_scheme.engine.url.render_as_string(hide_password=False), table_name=table_name)
    with pytest.warns(LegacyNameWarning, match="_fake_time"):
        old_app, old_tracker = _tracked(old_storage, _fake_time=datetime.now(timezone.utc) - timedelta(days=40))
    app, tracker = _tracked(any_scheme)
    for sent, count in ((old_app, 25), (app, 12)):
        client = sent.test_client()
        assert all(client.get(f"/{n}").status_code == 200 for n in range(count))
    with old_app.app_context():
        assert old_tracker.flush(20)
    with app.app_context():
        assert tracker.flush(20)
    old_storage.engine.dispose()
    events: list[str] = []

    def statement(conn: Any, cursor: Any, text: str, *args: Any) -> None:
        if text.lstrip().upper().startswith("DELETE") and table_name in text and "_batches" not in text:
            events.append(f"DELETE {cursor.rowcount}")

    sa.event.listen(any_scheme.engine, "after_cursor_execute", statement)
    sa.event.listen(any_scheme.engine, "commit", lambda conn: events.append("COMMIT"))
    result = app.test_cli_runner().invoke(usage, ["prune", "--older-than", "30d", "--chunk-size", "7"])
    assert result.exit_code == 0, result.output
    assert "deleted 25 rows" in result.output
    assert events[:8] == ["DELETE 7", "COMMIT"] * 3 + ["DELETE 4", "COMMIT"]
    events.clear()
    with app.app_context():
        assert tracker.forget(username="alice") == 12
    assert [e for e in events if e.startswith("DELETE")] == ["DELETE 12"]
    assert _rows(any_scheme) == []
