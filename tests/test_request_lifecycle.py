"""Each request is tracked exactly once, from the environ to the close of its body, whatever Flask
features the app uses, and tracking never changes what the client receives or when.

Every case runs the real app with every sink on (Prometheus, an OTel SDK tracer, a storage) and
checks the counter, the in-progress gauge, the rows and the ended spans.
"""

from __future__ import annotations

import http.client
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Blueprint, Flask, Response, abort, copy_current_request_context, g, request, stream_with_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from werkzeug.test import EnvironBuilder

from flask_usage_otel import TrackUsage
from tests.conftest import ListStorage, Requests, build_app
from tests.integration.servers import serve_app


@dataclass
class Tracked:
    app: Flask
    storage: ListStorage
    registry: CollectorRegistry
    exporter: InMemorySpanExporter
    end_threads: list[int]

    @property
    def requests(self) -> Requests:
        return Requests(self.registry)

    def count(self, **labels: str) -> float:
        return self.requests.count(**labels)

    def in_progress(self) -> float:
        return sum(
            s.value for m in self.registry.collect() for s in m.samples if s.name == "flask_usage_requests_in_progress"
        )

    def server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.kind is SpanKind.SERVER]

    def statuses(self) -> list[int]:
        return [r.status for r in self.storage.records]


class _EndThreads(SimpleSpanProcessor):
    """Remembers which thread ended each span."""

    def __init__(self, exporter: InMemorySpanExporter, threads: list[int]) -> None:
        super().__init__(exporter)
        self._threads = threads

    def on_end(self, span: ReadableSpan) -> None:
        self._threads.append(threading.get_ident())
        super().on_end(span)


def track(app: Flask, config: dict[str, Any] | None = None) -> Tracked:
    app.config.update({"TRACK_USAGE_SYNC_WRITES": True, **(config or {})})
    exporter = InMemorySpanExporter()
    threads: list[int] = []
    provider = TracerProvider()
    provider.add_span_processor(_EndThreads(exporter, threads))
    storage = ListStorage()
    registry = CollectorRegistry()
    TrackUsage(app, storage, registry=registry, tracer_provider=provider)
    return Tracked(app, storage, registry, exporter, threads)


def assert_settled(tracked: Tracked, requests: int) -> None:
    """Every request finished once: gauge at 0, one row and one ended server span each."""
    assert tracked.in_progress() == 0
    assert tracked.count() == requests
    assert len(tracked.storage.records) == requests
    spans = tracked.server_spans()
    assert len(spans) == requests
    assert [s.attributes["http.response.status_code"] for s in spans] == tracked.statuses()
    assert trace.get_current_span() is trace.INVALID_SPAN, "no span context is left attached"


# -- 1. a raising teardown -----------------------------------------------------------------


def teardown_app() -> Flask:
    app = build_app()
    fragile = Blueprint("fragile", __name__, url_prefix="/fragile")

    @fragile.route("/page")
    def page() -> str:
        return "page"

    @fragile.teardown_request
    def broken_teardown(exc: BaseException | None) -> None:
        raise RuntimeError("teardown bug")

    app.register_blueprint(fragile)
    return app


def test_a_raising_teardown_is_counted_and_breaks_nothing_after_it() -> None:
    """A raising teardown finishes no request early, twice or never (``RequestTracker.finish``'s guard)."""
    tracked = track(teardown_app())
    client = tracked.app.test_client()
    for _ in range(5):
        # The exception leaves the app: a server answers 500 (the test client re-raises it).
        with pytest.raises(RuntimeError, match="teardown bug"):
            client.get("/fragile/page")
    assert tracked.count(route="/fragile/page", status="500") == 5
    assert_settled(tracked, 5)
    assert {r.exception for r in tracked.storage.records} == {"RuntimeError"}

    for _ in range(50):
        assert client.get("/").data == b"home"
        # A streamed body is finished at its last byte and asked to finish again when the
        # server closes it: the request still counts once.
        streamed = client.get("/stream")
        assert streamed.data
        streamed.close()
    assert tracked.count(route="/", status="200") == 50
    assert tracked.count(route="/stream", status="200") == 50
    assert_settled(tracked, 105)
    spans = tracked.server_spans()
    assert all(s.parent is None for s in spans), "no request borrows a leaked span as its parent"
    assert len({s.context.trace_id for s in spans}) == 105
    failed = spans[:5]
    assert all(s.status.status_code is StatusCode.ERROR for s in failed)
    assert all([e.name for e in s.events] == ["exception"] for s in failed)


# -- 2. url_value_preprocessor ends the request ------------------------------------------------


def test_requests_ended_by_a_url_value_preprocessor_are_counted() -> None:
    app = build_app()

    # Registered before TrackUsage, and it ends some requests before any before_request hook runs.
    @app.url_value_preprocessor
    def check_item(endpoint: str | None, values: dict[str, Any] | None) -> None:
        item_id = (values or {}).get("item_id")
        if item_id == 404:
            abort(404)
        if item_id == 500:
            raise LookupError("preprocessor bug")

    tracked = track(app)
    client = tracked.app.test_client()
    assert [client.get(f"/items/{i}").status_code for i in (1, 404, 500)] == [200, 404, 500]
    route = "/items/<int:item_id>"
    assert [tracked.count(route=route, status=s) for s in ("200", "404", "500")] == [1, 1, 1]
    assert_settled(tracked, 3)
    assert [(r.route, r.status, r.exception) for r in tracked.storage.records] == [
        (route, 200, None),
        (route, 404, None),
        (route, 500, "LookupError"),
    ]
    assert [s.name for s in tracked.server_spans()] == [f"GET {route}"] * 3


def test_requests_ended_before_our_hook_keep_their_user_and_track_var() -> None:
    """A blueprint's URL value preprocessor that aborts, and an app ``before_request`` hook put
    ahead of ours after ``init_app`` that answers itself: our first hook never runs, yet the
    record has its route, the ``g.track_var`` the app's hook set and the user."""
    app = build_app()
    vault = Blueprint("vault", __name__, url_prefix="/vault")

    @vault.url_value_preprocessor
    def guard(endpoint: str | None, values: dict[str, Any] | None) -> None:
        g.track_var = {"guard": "ran"}
        if (values or {}).get("box") == "locked":
            abort(403)

    @vault.route("/<box>")
    def box(box: str) -> str:
        return box

    app.register_blueprint(vault)
    tracked = track(app, {"TRACK_USAGE_CAPTURE_USER": "basic_auth"})

    def gate() -> tuple[str, int] | None:
        g.track_var = {"gate": "closed"}
        return ("gated", 401) if request.args.get("closed") else None

    app.before_request_funcs[None].insert(0, gate)
    client = tracked.app.test_client()
    assert client.get("/vault/locked", auth=("ann", "pw")).status_code == 403
    assert client.get("/items/3?closed=1", auth=("bob", "pw")).status_code == 401
    assert client.get("/items/3", auth=("cid", "pw")).status_code == 200
    assert [(r.route, r.status, r.track_var, r.username) for r in tracked.storage.records] == [
        ("/vault/<box>", 403, {"guard": "ran"}, "ann"),
        ("/items/<int:item_id>", 401, {"gate": "closed"}, "bob"),
        ("/items/<int:item_id>", 200, {"gate": "closed"}, "cid"),
    ]
    assert_settled(tracked, 3)


def test_without_a_record_requests_ended_before_our_hook_are_matched_again() -> None:
    """Only Prometheus and spans: no ``after_request`` hook of ours, so a request our first hook
    never saw is admitted as it unwinds, under the rule its URL matches."""
    app = build_app()

    @app.url_value_preprocessor
    def check_item(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if (values or {}).get("item_id") == 404:
            abort(404)

    registry = CollectorRegistry()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    TrackUsage(app, registry=registry, tracer_provider=provider)
    app.before_request_funcs[None].insert(0, lambda: ("gated", 401) if request.args.get("closed") else None)
    assert not app.after_request_funcs.get(None), "the unwind path is the one under test"
    client = app.test_client()
    assert [client.get(path).status_code for path in ("/items/404", "/shop/cart?closed=1", "/nowhere")] == [
        404,
        401,
        404,
    ]
    counts = Requests(registry)
    assert counts.count(route="/items/<int:item_id>", status="404") == 1
    assert counts.count(route="/shop/cart", status="401", blueprint="shop") == 1
    assert counts.count(status="404") == 2  # the unmatched path too
    assert [s.name for s in exporter.get_finished_spans()] == ["GET /items/<int:item_id>", "GET /shop/cart", "GET"]


# -- 3. a thread with a copy of the request context ----------------------------------------


@pytest.mark.parametrize("thread_ends", ["before_the_response", "after_the_response"])
def test_a_copied_request_context_does_not_rewrite_the_request(thread_ends: str) -> None:
    app = build_app()
    release = threading.Event()
    threads: list[threading.Thread] = []
    failures: list[BaseException] = []

    @app.route("/background")
    def background() -> str:
        @copy_current_request_context
        def work() -> None:
            release.wait(5)
            raise RuntimeError("background job failed")  # reaches the copy's teardown

        def run() -> None:
            try:
                work()
            except RuntimeError as exc:
                failures.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        threads.append(thread)
        if thread_ends == "before_the_response":
            release.set()
            thread.join(5)
        return "started"

    tracked = track(app)
    request_thread = threading.get_ident()
    assert tracked.app.test_client().get("/background").data == b"started"
    release.set()
    threads[0].join(5)
    assert len(failures) == 1
    assert tracked.count(route="/background", status="200") == 1
    assert tracked.count(status="500") == 0
    assert_settled(tracked, 1)
    assert tracked.storage.records[0].exception is None
    assert tracked.end_threads == [request_thread], "the span ends in the request's thread"


# -- 4 and 5. streamed bodies: untouched, unbuffered, counted ---------------------------------


CHUNK = b"x" * 65536


def streaming_app(tracked: bool) -> Flask:
    """Streamed bodies for success and error statuses, as a view returns them and through abort()."""
    app = Flask("streaming")

    def events() -> Iterator[bytes]:
        yield b"data: first\n\n"
        time.sleep(1.0)
        yield b"data: second\n\n"

    @app.route("/events/<int:status>")
    def event_stream(status: int) -> Response:
        return Response(events(), status=status, mimetype="text/event-stream")

    @app.route("/aborted/<int:status>")
    def aborted(status: int) -> Response:
        # abort(Response) reaches the server through werkzeug's run_wsgi_app: still a stream.
        abort(Response(events(), status=status, mimetype="text/event-stream"))

    @app.route("/big/<int:status>/<int:chunks>")
    def big(status: int, chunks: int) -> Response:
        return Response((CHUNK for _ in range(chunks)), status=status)

    if tracked:
        app.config["TRACK_USAGE_SYNC_WRITES"] = True
        TrackUsage(app, ListStorage(), registry=CollectorRegistry())
    return app


def first_byte(base_url: str, path: str) -> tuple[float, bytes]:
    """Seconds from sending the request to the first body byte, and the whole body."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        start = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        first = response.read1(1)
        elapsed = time.perf_counter() - start
        return elapsed, first + response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/events/200", "/events/503", "/aborted/502"])
def test_streamed_bodies_go_out_unchanged_and_on_time(path: str) -> None:
    with serve_app(streaming_app(tracked=False)) as plain, serve_app(streaming_app(tracked=True)) as tracked:
        plain_first, plain_body = first_byte(plain, path)
        tracked_first, tracked_body = first_byte(tracked, path)
    assert tracked_body == plain_body == b"data: first\n\ndata: second\n\n"
    # The second event comes 1 s later: a buffered body would deliver its first byte after it.
    assert plain_first < 0.5
    assert tracked_first < 0.5, f"first byte after {tracked_first:.2f}s (untracked {plain_first:.2f}s)"
    assert abs(tracked_first - plain_first) < 0.3


def run_wsgi(app: Flask, path: str, **environ: Any) -> tuple[str, int]:
    """Call the app as a WSGI server does, consuming the body chunk by chunk; (status, bytes)."""
    statuses: list[str] = []
    env = EnvironBuilder(path=path).get_environ()
    env.update(environ)
    body = app(env, lambda status, headers, exc_info=None: statuses.append(status))
    size = 0
    try:
        for chunk in body:
            size += len(chunk)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return statuses[-1], size


@pytest.mark.parametrize("path", ["/big/200/320", "/big/502/320"])
def test_a_big_streamed_body_is_never_held_in_memory(path: str) -> None:
    app = streaming_app(tracked=True)
    tracemalloc.start()
    try:
        status, size = run_wsgi(app, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == 320 * len(CHUNK)  # 20 MiB
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB while streaming 21 MB"
    (record,) = app.extensions["track_usage"].storages()[0].records
    assert (record.status, record.response_size) == (int(status[:3]), size)


def test_streamed_and_file_bodies_count_the_bytes_sent(tmp_path: Any) -> None:
    target = tmp_path / "report.csv"
    target.write_bytes(b"a,b\n" * 1000)
    app = build_app()

    @app.route("/file")
    def file() -> Response:
        from flask import send_file

        return send_file(target)

    @app.route("/context-stream")
    def context_stream() -> Response:
        return Response(stream_with_context(f"{i}\n" for i in range(100)))

    tracked = track(app)
    client = tracked.app.test_client()
    assert client.get("/stream").data == b"abc"
    assert len(client.get("/file").data) == 4000
    assert len(client.get("/context-stream").data) == sum(len(f"{i}\n") for i in range(100))
    assert client.head("/file").data == b""
    assert [r.response_size for r in tracked.storage.records] == [3, 4000, 290, 0]
    assert_settled(tracked, 4)


def test_a_server_file_wrapper_is_passed_through_for_sendfile(tmp_path: Any) -> None:
    from gunicorn.http.wsgi import FileWrapper

    target = tmp_path / "big.bin"
    target.write_bytes(b"z" * 100_000)
    app = build_app()

    @app.route("/download")
    def download() -> Response:
        from flask import send_file

        return send_file(target)

    tracked = track(app)
    environ = EnvironBuilder(path="/download").get_environ()
    environ["wsgi.file_wrapper"] = FileWrapper
    body = tracked.app(environ, lambda *args: None)
    assert type(body) is FileWrapper, "the server still sees its own wrapper (and can use sendfile)"
    assert tracked.in_progress() == 1, "not finished before the server closes it"
    assert sum(len(chunk) for chunk in body) == 100_000
    body.close()
    assert [r.response_size for r in tracked.storage.records] == [100_000]
    assert_settled(tracked, 1)


def test_a_body_that_fails_mid_stream_is_counted_once() -> None:
    app = build_app()

    @app.route("/cut")
    def cut() -> Response:
        def body() -> Iterator[bytes]:
            yield b"partial"
            raise OSError("backend went away")

        return Response(body())

    tracked = track(app)
    response = tracked.app.test_client().get("/cut")
    with pytest.raises(OSError, match="backend went away"):
        response.get_data()
    response.close()
    assert [(r.status, r.response_size, r.exception) for r in tracked.storage.records] == [(200, 7, "OSError")]
    assert_settled(tracked, 1)


def test_a_streamed_body_dropped_unread_and_unclosed_still_finishes() -> None:
    """A server that breaks PEP 3333 (never iterates nor closes the body): the streamed request
    is finished when its body is collected, counted once, and leaves no gauge behind; a body in
    memory was finished before the app returned."""
    import gc

    tracked = track(build_app())
    statuses: list[str] = []
    for path in ("/stream", "/"):
        body = tracked.app(EnvironBuilder(path=path).get_environ(), lambda s, h, e=None: statuses.append(s))
        assert tracked.in_progress() == (1 if path == "/stream" else 0)
        del body
        gc.collect()
    assert statuses == ["200 OK", "200 OK"]
    assert [(r.route, r.status, r.response_size) for r in tracked.storage.records] == [
        ("/stream", 200, 0),
        ("/", 200, 4),
    ]
    assert_settled(tracked, 2)


# -- 6. the user -------------------------------------------------------------------------------


def test_reading_the_user_never_runs_the_apps_user_loaders() -> None:
    flask_login = pytest.importorskip("flask_login")
    app = build_app()
    app.secret_key = "test"
    manager = flask_login.LoginManager(app)
    loads: list[str] = []

    class User(flask_login.UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    @manager.request_loader
    def load_from_request(req: Any) -> User | None:
        loads.append(req.path)  # in a real app: a database query
        token = req.headers.get("X-Token")
        return User(token) if token else None

    @app.route("/whoami")
    def whoami() -> str:
        return str(flask_login.current_user.get_id())

    tracked = track(app)
    client = tracked.app.test_client()
    for _ in range(3):
        client.get("/", headers={"X-Token": "7"})
    assert loads == [], "a view that never touches current_user never loads the user"
    assert client.get("/whoami", headers={"X-Token": "7"}).data == b"7"
    assert loads == ["/whoami"]
    assert [r.username for r in tracked.storage.records] == [None, None, None, "7"]


def test_g_track_var_exists_in_every_request() -> None:
    app = build_app()

    @app.route("/campaign")
    def campaign() -> str:
        g.track_var["campaign"] = "autumn"  # Flask-Track-Usage's README does exactly this
        return "ok"

    @app.before_request
    def tag() -> None:
        g.track_var["seen"] = True

    tracked = track(app)
    assert tracked.app.test_client().get("/campaign").status_code == 200
    assert tracked.storage.records[0].track_var == {"seen": True, "campaign": "autumn"}


def test_track_var_exists_in_untracked_views_too() -> None:
    app = build_app()
    tracker = TrackUsage(registry=CollectorRegistry())

    @app.route("/quiet")
    @tracker.exclude
    def quiet() -> str:
        g.track_var["k"] = "v"
        return "quiet"

    tracker.init_app(app)
    assert app.test_client().get("/quiet").data == b"quiet"


# -- a queued request keeps neither its request nor its traceback alive -----------------------------


def test_a_queued_request_holds_no_request_or_traceback() -> None:
    import gc
    import weakref

    from flask import got_request_exception

    storage = ListStorage()
    app = build_app({"TRACK_USAGE_FLUSH_INTERVAL": 3600, "TRACK_USAGE_BATCH_SIZE": 100})
    app.logger.disabled = True
    tracker = TrackUsage(app, storage, registry=CollectorRegistry())
    raised: list[weakref.ref[BaseException]] = []

    class Boom(Exception):  # a Python subclass: weak references work on it
        pass

    @app.route("/weak-boom")
    def weak_boom() -> str:
        raise Boom("deliberate")

    def remember(sender: Flask, exception: BaseException, **extra: Any) -> None:
        raised.append(weakref.ref(exception))

    got_request_exception.connect(remember, app)
    assert app.test_client().get("/weak-boom").status_code == 500
    gc.collect()
    assert storage.records == [], "still queued"
    assert raised[0]() is None, "the queued state must not keep the exception (and its frames) alive"
    with app.app_context():
        assert tracker.flush()
    assert [(r.status, r.exception) for r in storage.records] == [(500, "Boom")]


# -- the wrapper survives whatever wraps it ------------------------------------------------------


def test_middleware_added_later_still_sees_every_request_tracked() -> None:
    from werkzeug.middleware.proxy_fix import ProxyFix

    tracked = track(build_app())
    tracked.app.wsgi_app = ProxyFix(tracked.app.wsgi_app)  # type: ignore[method-assign]
    client = tracked.app.test_client()
    client.get("/", headers={"X-Forwarded-For": "203.0.113.9"})
    assert tracked.storage.records[0].remote_addr == "203.0.113.9"
    assert_settled(tracked, 1)


def test_a_request_that_fails_before_dispatch_is_still_counted() -> None:
    from flask import request_started

    app = build_app()
    tracked = track(app)

    def refuse(sender: Flask, **extra: Any) -> None:
        raise ConnectionAbortedError("refused before dispatch")

    request_started.connect(refuse, app)
    try:
        app.logger.disabled = True
        assert tracked.app.test_client().get("/items/2").status_code == 500
    finally:
        request_started.disconnect(refuse, app)
    assert [(r.route, r.status, r.exception) for r in tracked.storage.records] == [
        ("/items/<int:item_id>", 500, "ConnectionAbortedError")
    ]
    assert_settled(tracked, 1)
