"""Addresses anonymized everywhere they are kept; secrets never kept; geolocation stays local."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import ConfigError, TrackUsage, UsageRecord
from flask_usage_otel.privacy import Anonymizer, truncate_address
from tests.conftest import ListStorage, build_app


def _record(config: dict[str, Any], **request: Any) -> UsageRecord:
    storage = ListStorage()
    app = build_app({"TRACK_USAGE_SYNC_WRITES": True, **config})
    TrackUsage(app, storage, registry=CollectorRegistry())
    app.test_client().get("/", **request)
    (record,) = storage.records
    return record


@pytest.mark.parametrize(
    ("address", "truncated"),
    [
        ("192.0.2.123", "192.0.2.0"),
        ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"),
        ("::ffff:198.51.100.77", "198.51.100.0"),
        ("fe80::1%eth0", "fe80::"),
        ("not-an-address", "unknown"),
        ("", "unknown"),
    ],
)
def test_truncate(address: str, truncated: str) -> None:
    assert truncate_address(address) == truncated


def test_keyed_hash_is_stable_per_key_and_hides_the_address() -> None:
    first, second = Anonymizer("hash", b"key-one"), Anonymizer("hash", b"key-two")
    hashed = first.address("192.0.2.1")
    assert hashed == first.address("192.0.2.1")
    assert hashed != first.address("192.0.2.2")
    assert hashed != second.address("192.0.2.1")
    assert hashed is not None
    assert hashed.startswith("h:")
    assert "192" not in hashed


def test_forwarded_chain_keeps_order_and_is_bounded() -> None:
    anonymizer = Anonymizer("truncate")
    assert anonymizer.chain("203.0.113.9, 2001:db8::1 ,garbage") == "203.0.113.0, 2001:db8::, unknown"
    long_chain = ", ".join(f"10.0.{i % 250}.1" for i in range(1000))
    assert len((anonymizer.chain(long_chain) or "").split(", ")) == 32


@pytest.mark.parametrize("mode", ["truncate", "hash"])
def test_records_carry_only_anonymized_addresses(mode: str) -> None:
    record = _record(
        {"TRACK_USAGE_ANONYMIZE_IP": mode, "TRACK_USAGE_ANONYMIZE_IP_KEY": "k"},
        environ_base={"REMOTE_ADDR": "198.51.100.77"},
        headers={"X-Forwarded-For": "203.0.113.9, 2001:db8:1:2::7"},
    )
    assert "198.51.100.77" not in repr(record)
    assert "203.0.113.9" not in repr(record)
    assert "2001:db8:1:2::7" not in repr(record)
    if mode == "truncate":
        assert record.remote_addr == "198.51.100.0"
        assert record.xforwardedfor == "203.0.113.0, 2001:db8:1::"
    else:
        assert record.remote_addr is not None
        assert record.remote_addr.startswith("h:")


def test_secrets_cookies_and_bodies_are_never_kept() -> None:
    record = _record(
        {},
        headers={"Authorization": "Bearer top-secret-token", "Cookie": "session=cookie-secret"},
        data=b"body-secret",
    )
    kept = repr(record.as_dict())
    assert record.authorization is True
    for secret in ("top-secret-token", "cookie-secret", "body-secret"):
        assert secret not in kept


def _geo_db(path: Path) -> Path:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
    writer.insert_network(
        IPSet(["81.2.69.0/24"]),
        {
            "country": {"iso_code": "GB"},
            "continent": {"code": "EU"},
            "city": {"names": {"en": "London"}},
            "location": {"latitude": 51.5, "longitude": -0.12},
        },
    )
    writer.insert_network(IPSet(["2001:db8::/32"]), {"country": {"iso_code": "SE"}})
    target = path / "geo.mmdb"
    writer.to_db_file(str(target))
    return target


def test_geoip_fills_ip_info_locally_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("maxminddb")
    pytest.importorskip("mmdb_writer")
    database = _geo_db(tmp_path)

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a request made a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    config = {"TRACK_USAGE_GEOIP_DB": str(database), "TRACK_USAGE_ANONYMIZE_IP": "truncate"}
    london = _record(config, environ_base={"REMOTE_ADDR": "81.2.69.160"})
    assert london.ip_info == {
        "country": "GB",
        "continent": "EU",
        "city": "London",
        "latitude": 51.5,
        "longitude": -0.12,
    }
    assert london.remote_addr == "81.2.69.0", "located first, then anonymized"
    assert _record(config, environ_base={"REMOTE_ADDR": "2001:db8::5"}).ip_info == {"country": "SE"}
    assert _record(config, environ_base={"REMOTE_ADDR": "192.0.2.1"}).ip_info is None


def test_unreadable_geoip_database_fails_at_init_app(tmp_path: Path) -> None:
    pytest.importorskip("maxminddb")
    bogus = tmp_path / "not-a-db.mmdb"
    bogus.write_bytes(b"this is not a maxmind database")
    for path in (bogus, tmp_path / "missing.mmdb"):
        app = Flask("geo")
        app.config["TRACK_USAGE_GEOIP_DB"] = str(path)
        with pytest.raises(ConfigError, match="TRACK_USAGE_GEOIP_DB"):
            TrackUsage(app, registry=CollectorRegistry())


def test_span_client_address_is_anonymized_too() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = build_app({"TRACK_USAGE_OTEL": True, "TRACK_USAGE_ANONYMIZE_IP": "truncate"})
    TrackUsage(app, registry=CollectorRegistry(), tracer_provider=provider)
    app.test_client().get("/", environ_base={"REMOTE_ADDR": "198.51.100.77"})
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["client.address"] == "198.51.100.0"


# -- secrets in query strings -------------------------------------------------------------

SECRET_QUERY = "token=s3cret-1&next=%2Fhome&Pass%77ord=s3cret-2&X-Amz-Signature=s3cret-3&SIG=s3cret-4&Api_Key=s3cret-5"
SECRETS = ("s3cret-1", "s3cret-2", "s3cret-3", "s3cret-4", "s3cret-5")


def test_secret_query_values_never_reach_the_record() -> None:
    record = _record({}, query_string=SECRET_QUERY)
    everything = repr(record) + repr(record.as_dict())
    assert not any(secret in everything for secret in SECRETS)
    assert record.query_string == (
        "token=REDACTED&next=%2Fhome&Pass%77ord=REDACTED&X-Amz-Signature=REDACTED&SIG=REDACTED&Api_Key=REDACTED"
    )
    # url is Werkzeug's request.url (an IRI: %2F shown as /), built from the redacted query.
    assert record.url == (
        "http://localhost/?token=REDACTED&next=/home&Password=REDACTED&X-Amz-Signature=REDACTED&SIG=REDACTED&Api_Key=REDACTED"
    )
    assert record.url_args["next"] == "/home"
    assert record.url_args["token"] == "REDACTED"


def test_query_redaction_is_configurable() -> None:
    record = _record({"TRACK_USAGE_REDACT_QUERY_PARAMS": ["next"]}, query_string="token=t&next=n")
    assert record.query_string == "token=t&next=REDACTED"
    assert _record({"TRACK_USAGE_REDACT_QUERY_PARAMS": []}, query_string="token=t").query_string == "token=t"
    for bad in ("token", ["ok", ""], ["a=b"], [3]):
        app = Flask("bad")
        app.config["TRACK_USAGE_REDACT_QUERY_PARAMS"] = bad
        with pytest.raises(ConfigError, match="TRACK_USAGE_REDACT_QUERY_PARAMS"):
            TrackUsage(app, registry=CollectorRegistry())


@pytest.mark.parametrize(
    ("query", "redacted"),
    [
        ("", ""),
        ("a=1&b=2", "a=1&b=2"),
        ("token", "token"),  # no value: nothing to hide
        ("token=", "token="),
        ("access+token=x&access_token=y", "access+token=x&access_token=REDACTED"),
        ("%74oken=x", "%74oken=REDACTED"),
        ("mytoken=x&token_type=bearer", "mytoken=x&token_type=bearer"),  # whole names only
        ("a=token&b=password", "a=token&b=password"),  # the names as values are not secrets
        ("code=abc&state=xyz", "code=REDACTED&state=xyz"),
    ],
)
def test_redactor_cases(query: str, redacted: str) -> None:
    from flask_usage_otel.privacy import DEFAULT_REDACTED_QUERY_PARAMS, QueryRedactor

    assert QueryRedactor(DEFAULT_REDACTED_QUERY_PARAMS).query(query) == redacted


def test_rows_and_every_export_format_hold_no_secret(tmp_path: Path) -> None:
    from flask_usage_otel import SQLStorage
    from flask_usage_otel.cli import usage

    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}")
    app = build_app({"TRACK_USAGE_SYNC_WRITES": True})
    TrackUsage(app, storage, registry=CollectorRegistry())
    app.test_client().get(f"/items/3?{SECRET_QUERY}")
    (row,) = storage.get_usage()
    assert "token=REDACTED" in row["url"]
    assert not any(secret in repr(row) for secret in SECRETS)
    runner = app.test_cli_runner()
    outputs = [runner.invoke(usage, ["export", "--format", fmt]).output for fmt in ("csv", "json", "jsonl")] + [
        runner.invoke(usage, ["summary", "--by", "url", "--format", fmt]).output for fmt in ("csv", "json", "table")
    ]
    assert all("REDACTED" in output for output in outputs)
    assert not any(secret in output for output in outputs for secret in SECRETS)


def test_a_failed_batch_logs_no_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from flask_usage_otel import SQLStorage

    # The table does not exist and is not created: every write fails and is logged.
    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}", create_tables=False)
    app = build_app({"TRACK_USAGE_FLUSH_INTERVAL": 0.05})
    track = TrackUsage(app, storage, registry=CollectorRegistry())
    caplog.set_level("DEBUG")
    app.test_client().get(f"/items/3?{SECRET_QUERY}")
    with app.app_context():
        assert track.flush(timeout=0.5) is False
    failures = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert failures
    for sink in track._trackers[app].sinks:  # stop the writer now, inside the captured logs
        sink.shutdown(timeout=0.1)
    logged = "\n".join(r.getMessage() + (caplog.handler.format(r)) for r in caplog.records)
    assert "rows not written" in logged
    assert not any(secret in logged for secret in SECRETS)


# -- exports neutralise formulas -------------------------------------------------------------

FORMULAS = ('=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1")


@pytest.mark.parametrize("value", [*FORMULAS, "\uff1d1+1"])
def test_spreadsheet_safe_prefixes_formulas(value: str) -> None:
    from flask_usage_otel.privacy import spreadsheet_safe

    assert spreadsheet_safe(value) == "'" + value
    assert spreadsheet_safe("/plain/path") == "/plain/path"
    assert spreadsheet_safe("") == ""


def test_csv_exports_neutralise_formulas(tmp_path: Path) -> None:
    import csv
    import io

    from flask_usage_otel import SQLStorage
    from flask_usage_otel.cli import usage

    storage = SQLStorage(f"sqlite:///{tmp_path / 'usage.db'}")
    app = build_app({"TRACK_USAGE_SYNC_WRITES": True, "TRACK_USAGE_CAPTURE_USER": lambda: "@admin"})
    app.add_url_rule("/<path:anything>", "anything", lambda anything: "ok")
    TrackUsage(app, storage, registry=CollectorRegistry())
    client = app.test_client()
    for formula in FORMULAS:
        client.get("/=cmd|calc", environ_base={"HTTP_USER_AGENT": formula})
    runner = app.test_cli_runner()
    export = runner.invoke(usage, ["export", "--format", "csv"]).output
    summaries = [
        runner.invoke(usage, ["summary", "--by", by, "--format", "csv"]).output
        for by in ("user_agent", "path", "username")
    ]
    for text in [export, *summaries]:
        rows = list(csv.reader(io.StringIO(text)))
        cells = [cell for row in rows[1:] for cell in row]
        assert cells
        assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r") or (c.startswith("-") and not _number(c))]
    header, *rows = list(csv.reader(io.StringIO(export)))
    agents = {row[header.index("user_agent_raw")] for row in rows}
    assert agents == {"'" + formula for formula in FORMULAS}
    assert {row[header.index("username")] for row in rows} == {"'@admin"}


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- /metrics bearer token --------------------------------------------------------------------


def test_non_ascii_bearer_token_matches_the_bytes_the_client_sent() -> None:
    import http.client
    import threading

    from werkzeug.serving import make_server

    token = "jeton-clé-€-密"
    app = Flask("auth")
    app.config["TRACK_USAGE_METRICS_AUTH"] = token
    TrackUsage(app, registry=CollectorRegistry())
    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:

        def status(value: bytes) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
            try:
                conn.putrequest("GET", "/metrics")
                conn.putheader("Authorization", value)  # raw bytes, as a client sends UTF-8
                conn.endheaders()
                return conn.getresponse().status
            finally:
                conn.close()

        assert status(b"Bearer " + token.encode("utf-8")) == 200
        assert status(b"Bearer " + token.encode("utf-8")[:-1]) == 401
        assert status(b"Bearer " + token.encode("latin-1", "replace")) == 401
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_privacy_doc_examples_run(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    doc = Path(__file__).resolve().parent.parent / "docs" / "privacy.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) == 4
    outputs = []
    for code in blocks:
        script = tmp_path / "example.py"
        script.write_text(code)
        result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[2:] == ["deleted 0 rows\n", "deleted 3 rows\n"]
