"""The record's ``url`` is Werkzeug's ``request.url`` (Flask-Track-Usage stored that), byte for byte."""

from __future__ import annotations

from urllib.parse import quote

from flask import Flask, request
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage
from flask_usage_otel.storage.sql_rows import record_url
from tests.conftest import ListStorage


def _app() -> tuple[Flask, ListStorage, list[str]]:
    app = Flask("urls")
    app.config.update(TRACK_USAGE_SYNC_WRITES=True)
    seen: list[str] = []

    @app.before_request
    def grab() -> None:  # runs for unmatched paths (404) too
        seen.append(request.url)

    @app.route("/", defaults={"rest": ""})
    @app.route("/<path:rest>")
    def any_path(rest: str) -> str:
        return "ok"

    storage = ListStorage()
    TrackUsage(app, storage, registry=CollectorRegistry())
    return app, storage, seen


APP, STORAGE, SEEN = _app()
CLIENT = APP.test_client()


def _check(path: str, query: str, host: str, scheme: str = "http", script_root: str = "") -> None:
    STORAGE.records.clear()
    SEEN.clear()
    environ = {"HTTP_HOST": host, "wsgi.url_scheme": scheme, "SCRIPT_NAME": script_root}
    CLIENT.get(quote(path, safe="/%") + ("?" + query if query else ""), environ_overrides=environ)
    [record] = STORAGE.records
    assert record.url == SEEN[0]
    assert record_url(record) == SEEN[0]


def test_the_examples_of_the_issue() -> None:
    _check("/host", "", "Example.COM:80")
    _check("/café/日本", "q=é&x=a%20b", "example.com")
    _check("/a", "", "EX.com:443", scheme="https")
    _check("/p", "a=1", "ex.com:8080")
    _check("/x y/;z", "a=%E2%82%AC&b=<>\"'", "[::1]:80")
    _check("/mounted/here", "", "example.com", script_root="/app")


TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00#?/"), min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)


@settings(max_examples=150, deadline=None)
@given(
    segments=st.lists(TEXT, max_size=3),
    query=st.text(st.characters(codec="utf-8", exclude_characters="\x00#"), max_size=12),
    host=st.sampled_from(["example.com", "Example.COM:80", "EXAMPLE.com:8080", "127.0.0.1:80", "[::1]:8000"]),
    scheme=st.sampled_from(["http", "https"]),
)
def test_any_url_equals_request_url(segments: list[str], query: str, host: str, scheme: str) -> None:
    _check("/" + "/".join(segments), quote(query, safe="=&%+"), host, scheme)


def test_a_host_that_cannot_be_split_keeps_the_script_root() -> None:
    # Werkzeug 2.3 (the floor) refuses to split such a Host, Werkzeug 3 drops it: either way the
    # mounted application's root and the path stay in the stored URL.
    from flask_usage_otel.request_text import full_url

    for host in ("[", "[::1", "ex[ample.com"):
        assert full_url("http", host, "/app", "/x", "q=1").endswith("/app/x?q=1")
        assert full_url("https", host, "", "//x", "").endswith("/x")
