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
