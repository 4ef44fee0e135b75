"""Time to first byte: exact for streams and files, the duration itself for bodies in memory."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

from flask import Flask, Response, send_file
from prometheus_client import CollectorRegistry
from werkzeug.wsgi import FileWrapper

from flask_usage_otel import TrackUsage
from flask_usage_otel.sinks import RequestState, Sink

PAUSE = 0.2


class Seen(Sink):
    """A sink that keeps each finished request's (duration, first byte), as the OTel sink would read them."""

    uses_record = False

    def __init__(self) -> None:
        self.timings: list[tuple[float, float]] = []

    def finish(self, state: RequestState) -> None:
        self.timings.append((state.speed, state.first_byte))


def tracked() -> tuple[Flask, CollectorRegistry]:
    app = Flask(__name__)

    @app.route("/memory")
    def memory() -> str:
        time.sleep(PAUSE / 4)
        return "in memory"

    @app.route("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            yield "first"
            time.sleep(PAUSE)
            yield "second"

        return Response(chunks())

    @app.route("/file")
    def file() -> Response:
        return send_file(io.BytesIO(b"x" * 5000), mimetype="application/octet-stream")

    registry = CollectorRegistry()
    TrackUsage(app, registry=registry)
    return app, registry


def values(registry: CollectorRegistry, route: str) -> tuple[float, float, float]:
    """(duration sum, first byte sum, first byte count) of one route's GETs."""
    labels = {"method": "GET", "route": route, "blueprint": ""}
    duration = registry.get_sample_value("flask_usage_request_duration_seconds_sum", {**labels, "status": "200"})
    first = registry.get_sample_value("flask_usage_time_to_first_byte_seconds_sum", labels)
    count = registry.get_sample_value("flask_usage_time_to_first_byte_seconds_count", labels)
    assert duration is not None, route
    assert first is not None, route
    assert count is not None, route
    return duration, first, count


def test_a_streamed_body_is_timed_to_its_first_chunk() -> None:
    app, registry = tracked()
    assert app.test_client().get("/stream").get_data() == b"firstsecond"
    duration, first, count = values(registry, "/stream")
    assert count == 1
    assert duration >= PAUSE
    assert first < PAUSE / 2  # the first chunk went out before the pause
    scraped = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'flask_usage_time_to_first_byte_seconds_bucket{blueprint="",le="0.1",method="GET",route="/stream"} 1.0' in (
        scraped
    )


def test_a_body_in_memory_has_its_duration_as_first_byte() -> None:
    app, registry = tracked()
    client = app.test_client()
    for _ in range(3):
        client.get("/memory")
    duration, first, count = values(registry, "/memory")
    assert count == 3
    assert first == duration >= 3 * PAUSE / 4  # the same clock read: exactly equal


def test_a_file_is_timed_to_its_hand_over_to_the_server() -> None:
    app, registry = tracked()
    client = app.test_client()
    made: list[FileWrapper] = []

    class ServerFileWrapper(FileWrapper):  # a server's wsgi.file_wrapper, which it may send with sendfile()
        def __init__(self, *args: object) -> None:
            super().__init__(*args)  # type: ignore[arg-type]
            made.append(self)

    response = client.get("/file", buffered=False, environ_overrides={"wsgi.file_wrapper": ServerFileWrapper})
    assert len(made) == 1
    time.sleep(PAUSE)  # the server is still sending it
    assert len(response.get_data()) == 5000
    response.close()
    duration, first, count = values(registry, "/file")
    assert count == 1
    assert duration >= PAUSE
    assert first < PAUSE / 2


def test_sinks_read_the_first_byte_from_the_request_state() -> None:
    app, _ = tracked()
    seen = Seen()
    tracker = app.extensions["track_usage"]._trackers[app]
    tracker._finishers.append(seen)
    client = app.test_client()
    client.get("/stream").get_data()
    client.get("/memory")
    (stream_speed, stream_first), (memory_speed, memory_first) = seen.timings
    assert stream_first < PAUSE / 2 <= stream_speed
    assert memory_first == memory_speed
