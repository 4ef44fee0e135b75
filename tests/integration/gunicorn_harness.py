"""Run the demo app under real gunicorn (examples/gunicorn.conf.py) on loopback, and scrape it.

Shared by the gunicorn and dashboard integration tests. Every wait is bounded and
every process started here is stopped by the context manager, even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.servers import free_port, unavailable, wait_until

REPO = Path(__file__).resolve().parents[2]
GUNICORN_CONF = REPO / "examples" / "gunicorn.conf.py"
APP = "examples.demo_app:create_app()"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def gunicorn_command() -> list[str]:
    """The gunicorn of this interpreter's environment, or skip (fail under CI) when missing."""
    exe = Path(sys.executable).with_name("gunicorn")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("gunicorn")
    if found:
        return [found]
    unavailable("gunicorn is not installed (pip install -e '.[dev]')")
    raise AssertionError("unreachable")


@dataclass
class Gunicorn:
    """A running gunicorn master and how to reach it."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The master's current child processes (the workers)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return sorted(int(c) for c in children)

    def stop(self) -> int:
        """SIGTERM (graceful stop) and wait; the master's exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(f"gunicorn did not stop within {STOP_TIMEOUT}s of SIGTERM:\n{self.log()}") from None


@contextlib.contextmanager
def run_gunicorn(
    tmp_path: Path,
    *,
    workers: int,
    multiproc_dir: Path,
    extra_env: dict[str, str] | None = None,
    app: str = APP,
) -> Iterator[Gunicorn]:
    """Start the demo app under gunicorn with the example config; stop it (SIGTERM) on exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"USAGE_DB_URL", "PROMETHEUS_MULTIPROC_DIR"}}
    env.update(
        PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir),
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS=str(workers),
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env or {})
    log_path = tmp_path / f"gunicorn-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*gunicorn_command(), "--config", str(GUNICORN_CONF), "--chdir", str(REPO), app],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    server = Gunicorn(process, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_until_serving(server, workers)
        yield server
    finally:
        if process.poll() is None:
            with contextlib.suppress(AssertionError):
                server.stop()


def _wait_until_serving(server: Gunicorn, workers: int) -> None:
    def serving() -> str | None:
        if server.process.poll() is not None:
            return "exited"
        healthy = requests.get(server.base_url + "/healthz", timeout=2).status_code == 200
        # Every worker booted, so no request lands on a worker still importing the app.
        return "serving" if healthy and server.log().count("Booting worker") >= workers else None

    if wait_until(serving, START_TIMEOUT, f"gunicorn to serve with {workers} workers") == "exited":
        raise AssertionError(f"gunicorn exited with {server.process.returncode} at start-up:\n{server.log()}")


Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base_url: str, session: requests.Session | None = None) -> tuple[str, Sample]:
    """GET /metrics: the exposition text and every sample keyed by (name, sorted labels)."""
    response = (session or requests).get(base_url + "/metrics", timeout=10)
    response.raise_for_status()
    samples: Sample = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def request_counts(samples: Sample, name: str = "flask_usage_requests_total") -> dict[tuple[str, str, str], float]:
    """``flask_usage_requests_total`` by (method, route, status)."""
    counts: dict[tuple[str, str, str], float] = {}
    for (sample_name, labels), value in samples.items():
        if sample_name == name:
            label = dict(labels)
            counts[(label["method"], label["route"], label["status"])] = value
    return counts


@contextlib.contextmanager
def temporary_postgres_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database of its own (``prefix_<random>``) on 127.0.0.1:5432; dropped on exit."""
    import sqlalchemy

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    # pool_pre_ping: a test may restart PostgreSQL, and the DROP at the end must still work.
    admin = sqlalchemy.create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT", pool_pre_ping=True
    )
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        unavailable(f"PostgreSQL at 127.0.0.1:5432 is not usable ({exc}); run `make services`")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextlib.contextmanager
def postgres_usage_database(prefix: str) -> Iterator[str]:
    """A database of its own (see ``temporary_postgres_database``) with the ``flask_usage`` table created."""
    from flask_usage_otel.storage.sql import SQLStorage

    with temporary_postgres_database(prefix) as url:
        storage = SQLStorage(url)
        storage.create_table()
        storage.engine.dispose()
        yield url
