"""Real servers on loopback for integration tests: the app, Prometheus, promtool.

Every wait is bounded. Outside CI a missing server skips the test with the
reason; under CI=true it fails, because integration tests must run there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

IN_CI = os.environ.get("CI") == "true"


def unavailable(reason: str) -> None:
    """Skip (outside CI) or fail (in CI) because a real part is missing."""
    if IN_CI:
        pytest.fail(f"integration test cannot run in CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # the server may not be up yet
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last result: {last!r})")


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Serve a WSGI app with a threaded server on 127.0.0.1; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-app-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def require_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if path is None:
        unavailable(f"{name} is not installed (make test installs Debian's prometheus package)")
    return str(path)


class Prometheus:
    """A Prometheus server on loopback with its own config and data directory."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    def query(self, expr: str, time_: float | None = None) -> list[dict[str, Any]]:
        """Run an instant query; returns the result vector (raises on a query error)."""
        params = {"query": expr}
        if time_ is not None:
            params["time"] = str(time_)
        status, body = http_get(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {payload.get('error', body[:300])}")
        return list(payload["data"]["result"])

    def targets_up(self) -> bool:
        status, body = http_get(f"{self.url}/api/v1/targets")
        targets = json.loads(body)["data"]["activeTargets"] if status == 200 else []
        return bool(targets) and all(t["health"] == "up" for t in targets)


@contextmanager
def run_prometheus(
    targets: list[str], scrape_interval: str = "1s", metrics_path: str = "/metrics"
) -> Iterator[Prometheus]:
    """Start ``prometheus`` on a free loopback port scraping ``targets`` (``host:port``)."""
    binary = require_binary("prometheus")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="prom-") as workdir:
        config = Path(workdir, "prometheus.yml")
        config.write_text(
            "global:\n"
            f"  scrape_interval: {scrape_interval}\n"
            f"  evaluation_interval: {scrape_interval}\n"
            "scrape_configs:\n"
            "  - job_name: app\n"
            f"    metrics_path: {metrics_path}\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        log = Path(workdir, "prometheus.log")
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir}/data",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                    "--enable-feature=exemplar-storage",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log)
        try:
            wait_until(lambda: http_get(f"{prometheus.url}/-/ready")[0] == 200, 30, "Prometheus to be ready")
            yield prometheus
        except BaseException:
            print(log.read_text(errors="replace")[-3000:])
            raise
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def promtool_check_metrics(exposition: bytes) -> subprocess.CompletedProcess[str]:
    """Run ``promtool check metrics`` on an exposition; returns the finished process."""
    binary = require_binary("promtool")
    return subprocess.run(
        [binary, "check", "metrics"], input=exposition.decode(), capture_output=True, text=True, timeout=30
    )
