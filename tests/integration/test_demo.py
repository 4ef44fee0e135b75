"""``make demo``: its figures add up, and every command of its "What next" works as printed.

The commands are taken from the demo's own output and run with ``bash -c`` from the
checkout, as a reader would paste them; only the port and the database file are this
test's own (the demo's ``--port`` and ``--db``), so parallel runs never meet.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.servers import free_port, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REQUESTS = 40


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, int]:
    db = tmp_path_factory.mktemp("demo") / "usage.db"
    port = free_port()
    command = [sys.executable, "examples/demo.py", "--requests", str(REQUESTS), "--db", str(db), "--port", str(port)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, db, port


def printed_commands(output: str) -> list[str]:
    return [line.removeprefix("  $ ") for line in output.splitlines() if line.startswith("  $ ")]


def command_with(output: str, word: str) -> str:
    (command,) = [c for c in printed_commands(output) if word in c]
    return command


def shell_env(tmp_path: Path, command: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS_", "OTEL_"))}
    if "gunicorn" in command:
        # A private multiprocess directory: the packaged gunicorn config would otherwise use a shared default.
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    return env


def run_printed(command: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=REPO,
        env=shell_env(tmp_path, command),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@contextlib.contextmanager
def running(command: str, tmp_path: Path, stop: signal.Signals) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp_path / "output.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=REPO,
            env=shell_env(tmp_path, command),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, stop)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_every_request_is_accounted_for(demo: tuple[str, Path, int]) -> None:
    output, db, _ = demo
    assert f"sent {REQUESTS} requests" in output
    excluded = sum(int(n) for n in re.findall(r"^  (\d+) to \S+: excluded by TRACK_USAGE_EXCLUDE_PATHS", output, re.M))
    assert excluded >= 1  # the demo sends its health check at least once
    tracked, counted = map(int, re.search(r"(\d+) tracked; Prometheus counted (\d+)", output).groups())  # type: ignore[union-attr]
    assert tracked + excluded == REQUESTS
    assert counted == tracked
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM flask_usage").fetchone()[0] == tracked
        assert conn.execute("SELECT count(*) FROM flask_usage WHERE path = '/healthz'").fetchone()[0] == 0
    assert f"{db} now holds {tracked} rows: {tracked} from this run" in output


def test_database_path_is_stable_and_rows_add_up_over_runs(demo: tuple[str, Path, int]) -> None:
    output, db, port = demo
    tracked = int(re.search(r"(\d+) tracked;", output).group(1))  # type: ignore[union-attr]
    again = subprocess.run(
        [sys.executable, "examples/demo.py", "--requests", "10", "--db", str(db), "--port", str(port)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    tracked_again = int(re.search(r"(\d+) tracked;", again.stdout).group(1))  # type: ignore[union-attr]
    assert f"now holds {tracked + tracked_again} rows: {tracked_again} from this run" in again.stdout


def test_default_database_is_in_the_checkout() -> None:
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import demo as demo_module
    finally:
        sys.path.remove(str(REPO / "examples"))
    assert demo_module.DEFAULT_DB == REPO / "demo-data" / "usage.db"
    assert "demo-data/" in (REPO / ".gitignore").read_text().splitlines()


def test_printed_cli_commands_read_the_demo_rows(demo: tuple[str, Path, int], tmp_path: Path) -> None:
    output, db, _ = demo
    with sqlite3.connect(db) as conn:  # other tests of this module may have added runs: count now
        stored = conn.execute("SELECT count(*) FROM flask_usage").fetchone()[0]
    summary = run_printed(command_with(output, "usage summary"), tmp_path)
    assert summary.returncode == 0, summary.stderr
    assert "/api/items/<int:item_id>" in summary.stdout
    export = run_printed(command_with(output, "usage export"), tmp_path)
    assert export.returncode == 0, export.stderr
    csv_path = Path(re.search(r"--output (\S+)", command_with(output, "usage export")).group(1))  # type: ignore[union-attr]
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == stored
    assert "/healthz" not in {row["path"] for row in rows}


def test_printed_check_command_finds_the_demo_storage_in_order(demo: tuple[str, Path, int], tmp_path: Path) -> None:
    output, db, _ = demo
    assert "rows missing? check that the database answers" in output
    result = run_printed(command_with(output, "usage check"), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok       connected to sqlite:///{db} (sqlite " in result.stdout
    assert "ok       table 'flask_usage' has every column" in result.stdout
    assert result.stdout.endswith("everything checked is in order\n")


@pytest.mark.parametrize("shell", ["interactive", "ignoring-sigint"])
def test_printed_serve_command_keeps_the_app_serving(demo: tuple[str, Path, int], tmp_path: Path, shell: str) -> None:
    output, _, _ = demo
    serve = command_with(output, "--serve")
    if shell == "ignoring-sigint":
        # A shell's background job (`cmd &`) or a runner that ignores SIGINT passes that on: Ctrl-C must still stop it.
        serve = f"trap '' INT; {serve}"
    scrape = command_with(output, "curl")
    with running(serve, tmp_path, signal.SIGINT) as (process, log):
        wait_until(lambda: "until Ctrl-C" in log.read_text(), timeout=120, what="the demo's tour to end")
        result = wait_until(
            lambda: (r := run_printed(scrape, tmp_path)).returncode == 0 and r.stdout,
            timeout=90,
            what="the served demo app's metrics",
        )
        assert 'route="/api/items/<int:item_id>"' in result
        assert process.poll() is None  # still serving after the tour
    assert process.returncode == 0, log.read_text()


def test_printed_gunicorn_command_serves_the_demo_app(demo: tuple[str, Path, int], tmp_path: Path) -> None:
    output, _, _ = demo
    gunicorn = command_with(output, "gunicorn")
    scrape = command_with(output, "curl")
    base_url = re.search(r"http://[^/]+", scrape).group(0)  # type: ignore[union-attr]
    with running(gunicorn, tmp_path, signal.SIGTERM) as (process, log):
        try:
            wait_until(
                lambda: run_printed(f"curl -sf {base_url}/", tmp_path).returncode == 0,
                timeout=60,
                what="gunicorn serving the demo app",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()}") from None
        # No request tracked yet by this server but the probe: the metric exists once that is counted.
        result = wait_until(
            lambda: (r := run_printed(scrape, tmp_path)).returncode == 0 and r.stdout,
            timeout=30,
            what="gunicorn's metrics",
        )
        assert 'route="/"' in result
        assert process.poll() is None, log.read_text()
    assert process.returncode == 0, log.read_text()


def test_printed_compose_command_names_the_compose_file(demo: tuple[str, Path, int]) -> None:
    # No container engine here: tests/test_compose.py checks the stack's files; this checks the command.
    assert command_with(demo[0], "docker") == "docker compose up --build"
    assert (REPO / "docker-compose.yml").is_file()
