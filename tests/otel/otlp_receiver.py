"""An OTLP/HTTP receiver on loopback that decodes the protobuf bodies POSTed to it (traces or logs)."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Received:
    """The decoded export requests and the paths they were POSTed to."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every received span."""
        with self.lock:
            return [
                (resource_attributes(resource_spans.resource), span)
                for request in self.requests
                for resource_spans in request.resource_spans
                for scope_spans in resource_spans.scope_spans
                for span in scope_spans.spans
            ]

    def records(self) -> list[tuple[dict[str, Any], str, Any]]:
        """(resource attributes, scope name, log record) for every received log record."""
        with self.lock:
            return [
                (resource_attributes(resource_logs.resource), scope_logs.scope.name, record)
                for request in self.requests
                for resource_logs in request.resource_logs
                for scope_logs in resource_logs.scope_logs
                for record in scope_logs.log_records
            ]


def value(any_value: Any) -> Any:
    """The Python value of an OTLP ``AnyValue``."""
    return getattr(any_value, any_value.WhichOneof("value"))


def attributes(item: Any) -> dict[str, Any]:
    """A span's or log record's attributes as a dict."""
    return {a.key: value(a.value) for a in item.attributes}


def resource_attributes(resource: Any) -> dict[str, Any]:
    return attributes(resource)


@contextmanager
def otlp_receiver(request_type: type, response_type: type) -> Iterator[tuple[Received, str]]:
    """Serve OTLP/HTTP on a free loopback port: (what was received, the endpoint URL)."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = request_type()
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":  # a collector forwarding (rotel always gzips)
                body = gzip.decompress(body)
            request.ParseFromString(body)
            with received.lock:
                received.paths.append(self.path)
                received.requests.append(request)
            payload = response_type().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield received, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
