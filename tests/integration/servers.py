"""Real servers on loopback for integration tests: the app, Prometheus, promtool, VictoriaMetrics.

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


def require_binary(name: str, package: str = "prometheus") -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if path is None:
        unavailable(f"{name} is not installed (.ci/ensure-services.sh installs Debian's {package} package)")
    return str(path)


class Prometheus:
    """A Prometheus server (or one that speaks its query API) on loopback with its own data directory."""

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
def _serving(what: str, command: list[str], port: int, workdir: str, ready_path: str) -> Iterator[Prometheus]:
    """Run ``command`` (listening on ``port``) until the block ends, once ``ready_path`` answers 200.

    The server's log tail is printed when the block fails.
    """
    url = f"http://127.0.0.1:{port}"
    log = Path(workdir, "server.log")
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: http_get(url + ready_path)[0] == 200, 30, f"{what} to be ready")
        yield Prometheus(url, process, log)
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


@contextmanager
def run_prometheus(
    targets: list[str], scrape_interval: str = "1s", metrics_path: str = "/metrics", remote_write: str | None = None
) -> Iterator[Prometheus]:
    """Start ``prometheus`` on a free loopback port scraping ``targets`` (``host:port``).

    ``remote_write``: a URL every scraped sample is also sent to, flushed within a second.
    """
    binary = require_binary("prometheus")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="prom-") as workdir:
        config = Path(workdir, "prometheus.yml")
        text = (
            "global:\n"
            f"  scrape_interval: {scrape_interval}\n"
            f"  evaluation_interval: {scrape_interval}\n"
            "scrape_configs:\n"
            "  - job_name: app\n"
            f"    metrics_path: {metrics_path}\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        if remote_write:
            # The default deadline (5 s) would leave the last samples unsent for seconds.
            text += f"remote_write:\n  - url: {remote_write}\n    queue_config:\n      batch_send_deadline: 500ms\n"
        config.write_text(text)
        command = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir}/data",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--enable-feature=exemplar-storage",
        ]
        with _serving("Prometheus", command, port, workdir, "/-/ready") as prometheus:
            yield prometheus


@contextmanager
def run_victoria_metrics() -> Iterator[Prometheus]:
    """Start Debian's single-node ``victoria-metrics`` on a free loopback port (Prometheus query API).

    It takes remote write at ``url + "/api/v1/write"``. Samples are visible to queries at once
    (the default hides the last 30 s) and no response is cached, so a test reads what was written.
    """
    binary = require_binary("victoria-metrics", package="victoria-metrics")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vm-") as workdir:
        flags = [f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={workdir}/data"]
        flags += ["-search.latencyOffset=0s", "-search.disableCache"]
        with _serving("VictoriaMetrics", [binary, *flags], port, workdir, "/health") as victoria:
            yield victoria


def promtool_check_metrics(exposition: bytes) -> subprocess.CompletedProcess[str]:
    """Run ``promtool check metrics`` on an exposition; returns the finished process."""
    binary = require_binary("promtool")
    return subprocess.run(
        [binary, "check", "metrics"], input=exposition.decode(), capture_output=True, text=True, timeout=30
    )
