"""The hooks: one record per request, exactly once, with the right fields."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import pytest
from flask import Flask, Response, g, stream_with_context
from prometheus_client import CollectorRegistry

from flask_usage_otel import TrackUsage, UsageRecord
from tests.conftest import ListStorage, Requests, build_app


def _tracked(config: dict[str, Any] | None = None) -> tuple[Flask, ListStorage, Requests]:
    storage = ListStorage()
    registry = CollectorRegistry()
    app = build_app({"TRACK_USAGE_SYNC_WRITES": True, **(config or {})})
    TrackUsage(app, storage, registry=registry)
    return app, storage, Requests(registry)


def test_record_fields() -> None:
    app, storage, _ = _tracked()

    @app.route("/fill/<name>")
    def fill(name: str) -> str:
        g.track_var = {"campaign": "autumn"}
        return "filled " * 10

    before = time.time()
    response = app.test_client().get(
        "/fill/caf%C3%A9?q=1&q=2&lang=fr",
        headers={
            "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
            "Accept-Language": "fr-CH, fr;q=0.9, en;q=0.8",
            "X-Forwarded-For": "2001:db8::1, 10.0.0.2",
            "Authorization": "Basic " + base64.b64encode(b"alice:secret").decode(),
        },
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
    )
    assert response.status_code == 200
    (record,) = storage.records
    assert record.method == "GET"
    assert record.path == "/fill/café"
    assert record.url == "http://localhost/fill/café?q=1&q=2&lang=fr"  # request.url: the IRI form
    assert record.url_args == {"q": "1", "lang": "fr"}
    assert record.route == "/fill/<name>"
    assert record.endpoint == "fill"
    assert record.blueprint is None
    assert record.view_args == {"name": "café"}
    assert record.status == 200
    assert record.response_size == len("filled " * 10)
    assert record.remote_addr == "192.0.2.7"
    assert record.xforwardedfor == "2001:db8::1, 10.0.0.2"
    assert record.user_agent.startswith("Mozilla/5.0")
    assert (record.ua.browser, record.ua.platform, record.ua.version) == ("firefox", "linux", "128.0")
    assert record.language == "fr-CH"
    assert record.authorization is True
    assert record.username is None, "an unverified Basic-auth name is kept only when asked for"
    assert record.server_name == "tracked"
    assert record.track_var == {"campaign": "autumn"}
    assert record.exception is None
    assert 0 < record.speed < 5
    assert record.date.tzinfo is timezone.utc
    assert before - 1 <= record.timestamp <= time.time()
    assert isinstance(record.date, datetime)
    assert "secret" not in repr(record), "the Authorization header itself is never kept"


def test_blueprint_and_request_body_size() -> None:
    app, storage, _ = _tracked()
    app.test_client().get("/shop/cart", data=b"x" * 123)
    app.test_client().post("/shop/cart")
    assert [(r.blueprint, r.endpoint, r.route, r.status) for r in storage.records] == [
        ("shop", "shop.cart", "/shop/cart", 200),
        (None, None, "<unmatched>", 405),
    ]
    assert storage.records[0].content_length == 123


def test_flask_login_user_is_recorded() -> None:
    flask_login = pytest.importorskip("flask_login")
    app, storage, _ = _tracked()
    app.secret_key = "test"
    manager = flask_login.LoginManager(app)

    class User(flask_login.UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    manager.user_loader(User)

    @app.route("/login")
    def login() -> str:
        flask_login.login_user(User("42"))
        return "in"

    @app.route("/me")
    def me() -> str:
        return f"me {flask_login.current_user.get_id()}"

    client = app.test_client()
    client.get("/login")
    client.get("/me")
    client.get("/")
    # "/" never touched current_user: the user was never loaded, and tracking must not load it.
    assert [r.username for r in storage.records] == ["42", "42", None]


def test_basic_auth_user_only_when_asked_for() -> None:
    basic = {"Authorization": "Basic " + base64.b64encode(b"bob:pw").decode()}
    app, storage, _ = _tracked()
    app.test_client().get("/", headers=basic)
    app, asked, _ = _tracked({"TRACK_USAGE_CAPTURE_USER": "basic_auth"})
    app.test_client().get("/", headers=basic)
    app.test_client().get("/", headers={"Authorization": "Bearer bob"})
    assert [r.username for r in storage.records] == [None]
    assert [r.username for r in asked.records] == ["bob", None]


def test_capture_user_off_and_callable() -> None:
    basic = {"Authorization": "Basic " + base64.b64encode(b"bob:pw").decode()}
    app, storage, _ = _tracked({"TRACK_USAGE_CAPTURE_USER": "off"})
    app.test_client().get("/", headers=basic)
    assert storage.records[0].username is None

    app, storage, _ = _tracked({"TRACK_USAGE_CAPTURE_USER": lambda: g.get("who")})

    @app.before_request
    def who() -> None:
        g.who = "carol"

    app.test_client().get("/")
    assert storage.records[0].username == "carol"


@pytest.mark.parametrize("propagate", [False, True])
def test_unhandled_exception_counts_once_as_500(propagate: bool) -> None:
    app, storage, requests = _tracked({"PROPAGATE_EXCEPTIONS": propagate})
    client = app.test_client()
    if propagate:
        with pytest.raises(ValueError, match="deliberate"):
            client.get("/boom")
    else:
        assert client.get("/boom").status_code == 500
    assert [(r.status, r.exception) for r in storage.records] == [(500, "ValueError")]
    assert requests.count(route="/boom", status="500") == 1
    assert (
        requests.registry.get_sample_value(
            "flask_usage_request_exceptions_total", {"method": "GET", "route": "/boom", "exception": "ValueError"}
        )
        == 1
    )


def test_handled_exception_is_not_an_exception() -> None:
    app, storage, _ = _tracked()

    @app.errorhandler(KeyError)
    def handled(exc: KeyError) -> tuple[str, int]:
        return "handled", 409

    @app.route("/key")
    def key() -> str:
        raise KeyError("x")

    app.test_client().get("/key")
    assert [(r.status, r.exception) for r in storage.records] == [(409, None)]


def test_short_circuiting_before_request_counts_once() -> None:
    app, storage, requests = _tracked()

    @app.before_request
    def gate() -> tuple[str, int] | None:
        return ("maintenance", 503)

    app.test_client().get("/items/3")
    assert [(r.route, r.status) for r in storage.records] == [("/items/<int:item_id>", 503)]
    assert requests.count() == 1


def test_failing_after_request_hook_counts_once() -> None:
    app, storage, requests = _tracked()

    @app.after_request
    def broken(response: Response) -> Response:
        raise RuntimeError("after_request bug")

    response = app.test_client().get("/")
    assert [(r.status, r.exception) for r in storage.records] == [(500, "RuntimeError")]
    assert requests.count() == 1
    assert (response.status_code, response.data[:15]) == (500, b"<!doctype html>")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("DELETE", "/items/1", 405), ("GET", "/forbidden", 403)],
)
def test_error_responses_count_once_without_reading_the_body(method: str, path: str, status: int) -> None:
    app, storage, requests = _tracked()
    response = app.test_client().open(path, method=method)
    assert response.status_code == status
    assert [r.status for r in storage.records] == [status]
    assert requests.count(status=str(status)) == 1
    assert requests.registry.get_sample_value("flask_usage_requests_in_progress", {"method": method}) == 0


def test_streamed_response_is_timed_until_the_body_is_done() -> None:
    app, storage, requests = _tracked()

    @app.route("/slow-stream")
    def slow_stream() -> Response:
        def body() -> Any:
            yield "first"
            time.sleep(0.2)
            yield "second"

        return Response(body())

    response = app.test_client().get("/slow-stream", buffered=False)
    assert storage.records == [], "not finished while the body is still being sent"
    assert requests.registry.get_sample_value("flask_usage_requests_in_progress", {"method": "GET"}) == 1
    assert response.get_data() == b"firstsecond"
    response.close()
    (record,) = storage.records
    assert record.speed >= 0.2
    assert requests.count(route="/slow-stream") == 1


def test_stream_with_context_and_early_close() -> None:
    app, storage, _ = _tracked()

    @app.route("/ctx-stream")
    def ctx_stream() -> Response:
        def body() -> Any:
            for i in range(1000):
                yield f"{i}\n"

        return Response(stream_with_context(body()))

    response = app.test_client().get("/ctx-stream", buffered=False)
    iterator = iter(response.response)
    next(iterator)
    response.close()  # the client went away after the first chunk
    assert [(r.route, r.status) for r in storage.records] == [("/ctx-stream", 200)]


def test_send_file_keeps_its_passthrough_body(tmp_path: Any) -> None:
    app, storage, _ = _tracked()
    target = tmp_path / "data.txt"
    target.write_text("file body")

    @app.route("/file")
    def file() -> Response:
        from flask import send_file

        return send_file(target)

    response = app.test_client().get("/file")
    assert response.get_data() == b"file body"
    response.close()
    assert [(r.status, r.response_size) for r in storage.records] == [(200, 9)]


def test_a_failing_sink_never_fails_the_request(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(ListStorage):
        def store(self, records: Sequence[UsageRecord]) -> None:
            raise OSError("disk on fire")

    registry = CollectorRegistry()
    app = build_app({"TRACK_USAGE_SYNC_WRITES": True})
    TrackUsage(app, Broken(), registry=registry)
    with caplog.at_level(logging.ERROR, logger="flask_usage_otel"):
        for _ in range(3):
            assert app.test_client().get("/").status_code == 200
    assert Requests(registry).count(route="/") == 3
    failures = [r for r in caplog.records if "disk on fire" in (r.exc_text or "")]
    assert len(failures) <= 1, "a broken sink logs once per interval, not per request"


@pytest.mark.parametrize(
    ("method", "component"),
    [("_admit", "before_request"), ("_capture_details", "finish"), ("_callable_user", "after_request")],
)
def test_a_bug_in_the_tracking_never_fails_the_request(
    method: str, component: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_usage_otel.lifecycle import RequestTracker

    def broken(*args: Any) -> None:
        raise RuntimeError("tracking bug")

    monkeypatch.setattr(RequestTracker, method, broken)
    registry = CollectorRegistry()
    app = build_app({"TRACK_USAGE_CAPTURE_USER": lambda: "someone"})
    TrackUsage(app, ListStorage(), registry=registry)
    for path, status, body in [("/", 200, b"home"), ("/items/3", 200, b'{"id":3}\n'), ("/stream", 200, b"abc")]:
        response = app.test_client().get(path)
        assert (response.status_code, response.data) == (status, body)
    assert registry.get_sample_value("flask_usage_tracking_errors_total", {"component": component}) == 3


def test_one_extension_serves_several_apps() -> None:
    registry = CollectorRegistry()
    track = TrackUsage(registry=registry)
    first, second = ListStorage(), ListStorage()
    app_a, app_b = build_app({"TRACK_USAGE_SYNC_WRITES": True}), build_app({"TRACK_USAGE_SYNC_WRITES": True})
    track.init_app(app_a, first)
    track.init_app(app_b, second)
    app_a.test_client().get("/")
    app_b.test_client().get("/items/1")
    app_b.test_client().get("/items/2")
    assert app_a.extensions["track_usage"] is track
    with app_a.app_context():
        assert [row["path"] for row in track.get_usage()] == ["/"]
    with app_b.app_context():
        assert [row["path"] for row in track.get_usage()] == ["/items/2", "/items/1"]
    with pytest.raises(RuntimeError, match="app context"):
        track.get_usage()
    assert Requests(registry).count() == 3


def test_trackusage_app_then_init_app_with_storage_as_in_ftu() -> None:
    """Flask-Track-Usage's order: ``TrackUsage(app)`` (which did nothing there) then ``init_app(app, storage)``."""
    registry = CollectorRegistry()
    app = build_app({"TRACK_USAGE_SYNC_WRITES": True})
    track = TrackUsage(app, registry=registry)
    storage = ListStorage()
    track.init_app(app, storage)
    client = app.test_client()
    assert client.get("/items/3").status_code == 200
    # The first set-up is gone: one record, counted once, hooks and wrapper installed once.
    assert [r.path for r in storage.records] == ["/items/3"]
    assert Requests(registry).count() == 1
    assert len(app.before_request_funcs[None]) == 1
    assert len(app.after_request_funcs[None]) == 1
    with app.app_context():
        assert [row["path"] for row in track.get_usage()] == ["/items/3"]
    assert b"flask_usage_requests_total" in client.get("/metrics").data


def test_init_app_again_after_middleware_wrapped_the_app_is_refused_and_changes_nothing() -> None:
    from werkzeug.middleware.proxy_fix import ProxyFix

    registry = CollectorRegistry()
    app = build_app({"TRACK_USAGE_SYNC_WRITES": True})
    track = TrackUsage(app, registry=registry)
    app.wsgi_app = ProxyFix(app.wsgi_app)  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="wrapped after TrackUsage"):
        track.init_app(app, ListStorage())
    app.test_client().get("/")
    assert Requests(registry).count() == 1


def test_list_of_storages_all_receive_the_record() -> None:
    first, second = ListStorage(), ListStorage()
    app = build_app({"TRACK_USAGE_SYNC_WRITES": True})
    TrackUsage(app, [first, second], registry=CollectorRegistry())
    app.test_client().get("/")
    assert len(first.records) == len(second.records) == 1


def test_get_usage_without_storage_explains() -> None:
    app = build_app()
    track = TrackUsage(app, registry=CollectorRegistry())
    with app.app_context(), pytest.raises(RuntimeError, match="no storage"):
        track.get_usage()


def test_non_utf8_and_odd_headers_are_kept_readable() -> None:
    app, storage, _ = _tracked()
    environ = {
        "HTTP_USER_AGENT": b"bot \xff\xfe".decode("latin-1"),
        "HTTP_ACCEPT_LANGUAGE": "*;q=0.1,\x00garbage",
        "QUERY_STRING": b"x=\xe9".decode("latin-1"),
    }
    assert app.test_client().get("/", environ_overrides=environ).status_code == 200
    (record,) = storage.records
    assert record.user_agent == "bot \ufffd\ufffd"
    assert record.language is None
    assert record.url_args == {"x": "\ufffd"}


def test_queued_rows_are_built_off_the_request_and_release_it() -> None:
    import gc
    import weakref

    from flask import request

    storage = ListStorage()
    app = build_app({"TRACK_USAGE_FLUSH_INTERVAL": 3600, "TRACK_USAGE_BATCH_SIZE": 100})
    track = TrackUsage(app, storage, registry=CollectorRegistry())
    requests_seen: list[weakref.ref[Any]] = []

    @app.after_request
    def remember(response: Response) -> Response:
        requests_seen.append(weakref.ref(request._get_current_object()))  # type: ignore[attr-defined]
        return response

    app.test_client().get("/items/5?x=1", headers={"User-Agent": "curl/8.5.0", "Authorization": "Bearer s"})
    gc.collect()
    assert storage.records == [], "nothing is written on the request path"
    assert requests_seen[0]() is None, "the queued row must not keep the request alive"
    with app.app_context():
        assert track.flush()
    (record,) = storage.records
    assert (record.path, record.route, record.url_args, record.view_args) == (
        "/items/5",
        "/items/<int:item_id>",
        {"x": "1"},
        {"item_id": 5},
    )
    assert (record.user_agent, record.authorization, record.status) == ("curl/8.5.0", True, 200)
