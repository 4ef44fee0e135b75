"""Hostile and odd requests: the response is what the app alone gives, metrics stay sane."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from flask_usage_otel import TrackUsage
from tests.conftest import ListStorage, Requests, build_app

BARE = build_app({"TESTING": False})
REGISTRY = CollectorRegistry()
STORAGE = ListStorage()
TRACKED = build_app({"TESTING": False, "TRACK_USAGE_SYNC_WRITES": True})
TrackUsage(TRACKED, STORAGE, registry=REGISTRY)

INJECTION = ['"', "\\", "\n", "'; DROP TABLE flask_usage; --", '"} 1\nevil_metric{a="', "\x00", "\r\n"]

raw_bytes = st.binary(min_size=0, max_size=300)
paths = st.one_of(
    st.sampled_from(["/", "/items/1", "/items/-1", "/items/99999999999999999999", "/shop/cart", "/boom", "/.."]),
    raw_bytes.map(lambda b: "/" + b.decode("latin-1")),
    st.text(max_size=200).map(lambda t: "/" + t.encode("utf-8", "surrogatepass").decode("latin-1")),
    st.sampled_from(INJECTION).map(lambda s: "/" + s),
    st.integers(1, 8192).map(lambda n: "/" + "a" * n),
)
methods = st.one_of(
    st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "DELETE", "get", "PROPFIND", "M-SEARCH"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
)
header_values = st.one_of(
    raw_bytes.map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ").decode("latin-1")),
    st.sampled_from([*INJECTION, "x" * 100000, ",".join(["10.0.0.1"] * 2000), "Basic !!!", "Bearer"]),
)


def _environ(path: str, method: str, headers: dict[str, str], query: str) -> dict[str, Any]:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": method, "QUERY_STRING": query}
    environ.update({f"HTTP_{name}": value for name, value in headers.items()})
    return environ


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=paths,
    method=methods,
    query=header_values,
    user_agent=header_values,
    forwarded=header_values,
    language=header_values,
    authorization=header_values,
)
def test_tracking_never_changes_the_response(
    path: str, method: str, query: str, user_agent: str, forwarded: str, language: str, authorization: str
) -> None:
    headers = {
        "USER_AGENT": user_agent,
        "X_FORWARDED_FOR": forwarded,
        "ACCEPT_LANGUAGE": language,
        "AUTHORIZATION": authorization,
    }
    environ = _environ(path, method, headers, query)
    bare = BARE.test_client().open(environ_overrides=dict(environ))
    before = len(STORAGE.records)
    tracked = TRACKED.test_client().open(environ_overrides=dict(environ))
    assert tracked.status_code == bare.status_code
    assert tracked.get_data() == bare.get_data()
    assert len(STORAGE.records) == before + 1
    record = STORAGE.records[-1]
    assert record.status == bare.status_code
    record.as_dict()  # every derived value can be computed


def test_metrics_stay_parseable_and_bounded_after_the_fuzzing() -> None:
    test_tracking_never_changes_the_response()
    exposition = TRACKED.test_client().get("/metrics").get_data(as_text=True)
    families = list(text_string_to_metric_families(exposition))
    assert families
    series = Requests(REGISTRY).series()
    routes = {s["route"] for s in series}
    assert routes <= {"/", "/items/<int:item_id>", "/shop/cart", "/boom", "<unmatched>"}
    assert {s["method"] for s in series} <= {"GET", "POST", "HEAD", "OPTIONS", "DELETE", "_OTHER"}
    assert len(series) <= 60


def test_a_content_length_of_unicode_digits_keeps_the_record() -> None:
    """``"²".isdigit()`` is true but ``int("²")`` fails: the record must still be built (without a size)."""
    client = TRACKED.test_client()
    cases = {"\xb2": None, "\u0661\u0662": None, "99999999999999999999999": 99999999999999999999999}
    for value, expected in cases.items():
        before = len(STORAGE.records)
        assert client.get("/", environ_overrides={"CONTENT_LENGTH": value}).status_code == 200
        assert len(STORAGE.records) == before + 1, f"no record for Content-Length {value!r}"
        assert STORAGE.records[-1].content_length == expected
