"""Hostile requests over raw sockets to a real gunicorn: a tracked server answers each exactly as the
same app untracked does, and afterwards ``/metrics`` passes ``promtool check metrics`` with a bounded
number of series.

The requests are bytes, not what an HTTP library would agree to send: invalid UTF-8 and NUL in the
request line, 8 KB paths, ``..``, arbitrary methods, 100 KB user agents, long X-Forwarded-For
chains, garbage Accept-Language and Authorization, and label-injection strings. Some of them
gunicorn refuses itself (400, 414): then both servers must refuse them alike.
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flask_usage_otel import SQLStorage
from tests.integration.gunicorn_harness import run_gunicorn, scrape
from tests.integration.servers import promtool_check_metrics

pytestmark = pytest.mark.integration

WORKERS = 2
APP = "tests.integration.fault_app:create_app(tracked={tracked})"
INJECTION = [b'"', b"\\", b'"} 1\nevil_metric{a="', b"'; DROP TABLE flask_usage; --", b'\\n\\"', b"\r", b"{}=,"]
# Known routes of the test app; everything else is <unmatched>.
ROUTES = {"/", "/items/<int:item_id>", "/boom", "/forbidden", "/stream", "/shop/cart", "/echo/<path:rest>"}
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "_OTHER"}


def pct(raw: bytes) -> bytes:
    return b"".join(b"%%%02X" % byte for byte in raw)


def hostile_requests(seed: int = 7) -> list[bytes]:
    """A few hundred raw HTTP/1.1 requests, each on its own connection (``Connection: close``)."""
    rng = random.Random(seed)
    paths = [
        b"/",
        b"/echo/plain",
        b"/echo/\xff\xfe\xc3\x28",  # invalid UTF-8, raw
        b"/echo/" + pct(b"\xff\xfe\xc3\x28"),  # invalid UTF-8, percent-encoded
        "/echo/é😀\U0001d518".encode(),
        b"/echo/" + pct("😀".encode()),
        b"/echo/../../etc/passwd",
        b"/../../etc/passwd",
        b"/echo/%2e%2e/%2e%2e/secret",
        b"/echo/a%00b",  # NUL, percent-encoded
        b"/echo/a\x00b",  # NUL, raw: gunicorn refuses it
        b"/echo/" + b"a" * 3900,  # long, under gunicorn's 4094-byte request line limit
        b"/echo/" + b"a" * 8192,  # 8 KB: gunicorn answers 414
        b"/no/such/" + b"x" * 2000,
        b"/items/99999999999999999999",
        b"/items/-1",
        b"/boom",
        b"/stream",
        b"/shop/cart?" + b"&".join(b"k%d=v" % i for i in range(300)),
        b"//double//slash",
        b"/echo/q?a=1&a=2&=&&b=%ZZ&c=%ff",
        *(b"/echo/" + pct(s) for s in INJECTION),
        *(b"/echo/x?v=" + pct(s) for s in INJECTION),
        *(b"/echo/" + s for s in INJECTION),  # raw: some are not valid in a request line
        b"*",
        b"http://example.org/echo/absolute",
    ]
    methods = [b"GET", b"POST", b"HEAD", b"PROPFIND", b"FOO", b"M-SEARCH", b"get", b"DELETE", b"X" * 40, b"G\xc3\xa9T"]
    header_values = [
        b"Mozilla/5.0",
        b"x" * 100_000,  # 100 KB: over gunicorn's 8190-byte field limit
        b"y" * 8000,
        bytes(range(0x20, 0x7F)),
        bytes(range(0x80, 0x100)),  # latin-1 / invalid UTF-8 bytes
        "😀 é \U0001d518".encode(),
        *INJECTION,
    ]
    forwarded = [
        b", ".join(b"10.0.%d.%d" % (i // 256, i % 256) for i in range(500)),  # 6 KB chain
        b", ".join(b"2001:db8::%x" % i for i in range(300)),
        b"unknown, , ,,; garbage",
        b"'; DROP TABLE flask_usage; --",
    ]
    languages = [b"*", b"de-CH,de;q=0.9,en;q=0.8", b";;;q=abc,,-,", b"x" * 5000, b"\xff\xfe", b"en;q=1e999"]
    authorizations = [b"Basic !!!", b"Bearer", b"Basic " + b"A" * 6000, b"Digest \xff", b"Basic Og=="]

    requests_: list[bytes] = []
    for index in range(260):
        path = paths[index % len(paths)]
        method = methods[index % len(methods)] if index % 3 else b"GET"
        headers = [b"Host: 127.0.0.1", b"Connection: close"]
        headers.append(b"User-Agent: " + rng.choice(header_values))
        if rng.random() < 0.6:
            headers.append(b"X-Forwarded-For: " + rng.choice(forwarded + header_values))
        if rng.random() < 0.6:
            headers.append(b"Accept-Language: " + rng.choice(languages))
        if rng.random() < 0.4:
            headers.append(b"Authorization: " + rng.choice(authorizations))
        if rng.random() < 0.1:
            headers.append(b"Content-Length: 99999999999999999999")  # a size no BIGINT holds, no body
        requests_.append(method + b" " + path + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n")
    return requests_


def exchange(port: int, raw: bytes) -> tuple[bytes, list[bytes], bytes]:
    """Send one raw request, read until the server closes; (status line, headers without Date, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        # The server may refuse the request before reading all of it: its answer is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    status, *headers = head.split(b"\r\n")
    return status, sorted(normal_header(h) for h in headers if not h.lower().startswith(b"date:")), body


def normal_header(header: bytes) -> bytes:
    """``Allow`` lists a set, in an order that changes with each process's hash seed."""
    name, _, value = header.partition(b": ")
    if name.lower() == b"allow":
        return name + b": " + b", ".join(sorted(value.split(b", ")))
    return header


def send_all(port: int, raws: list[bytes]) -> list[tuple[bytes, list[bytes], bytes]]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda raw: exchange(port, raw), raws))


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


def test_hostile_requests_get_the_untracked_answer_and_metrics_stay_valid(tmp_path: Path) -> None:
    raws = hostile_requests()
    db_url = f"sqlite:///{tmp_path / 'usage.db'}"
    (tmp_path / "tracked").mkdir()
    (tmp_path / "bare").mkdir()
    with (
        run_gunicorn(
            tmp_path,
            workers=WORKERS,
            multiproc_dir=tmp_path / "tracked",
            app=APP.format(tracked=True),
            extra_env={"USAGE_DB_URL": db_url},
        ) as tracked,
        run_gunicorn(tmp_path, workers=WORKERS, multiproc_dir=tmp_path / "bare", app=APP.format(tracked=False)) as bare,
    ):
        tracked_answers = send_all(port_of(tracked.base_url), raws)
        bare_answers = send_all(port_of(bare.base_url), raws)
        exposition, samples = scrape(tracked.base_url)
        assert tracked.stop() == 0  # SIGTERM: each worker writes out its queued rows
        log = tracked.log()

    mismatches = [
        (raw[:120], got[0], want[0])
        for raw, got, want in zip(raws, tracked_answers, bare_answers, strict=True)
        if got != want
    ]
    assert mismatches == [], f"{len(mismatches)} responses differ from the untracked app's: {mismatches[:5]}"
    statuses = Counter(answer[0].split(b" ")[1] if answer[0] else b"closed" for answer in bare_answers)
    print(f"\n{len(raws)} hostile requests, statuses: {dict(sorted(statuses.items()))}")
    # The set must really reach the app, and really be refused by gunicorn sometimes.
    assert statuses[b"200"] >= 50
    assert statuses[b"400"] >= 10
    assert statuses[b"414"] >= 5
    assert statuses[b"500"] >= 1  # /boom
    assert "flask-usage-otel" not in log, log[-3000:]  # no tracking failure was logged

    check = promtool_check_metrics(exposition.encode())
    assert check.returncode == 0, check.stdout + check.stderr
    requests_total = {
        labels: value for (name, labels), value in samples.items() if name == "flask_usage_requests_total"
    }
    served = sum(statuses[s] for s in statuses if s not in (b"400", b"414", b"431", b"closed"))
    assert sum(requests_total.values()) == served  # every request the app answered, once
    stored = SQLStorage(db_url)
    rows = list(stored.iter_usage())
    stored.engine.dispose()
    assert len(rows) == served  # every row stored, none refused by the database
    series = [dict(labels) for labels in requests_total]
    assert {s["route"] for s in series} <= ROUTES | {"<unmatched>"}
    assert {s["method"] for s in series} <= METHODS
    assert len(series) <= 40, series
    assert len(exposition.splitlines()) < 1500
    assert not [name for (name, _), value in samples.items() if name == "flask_usage_tracking_errors_total" and value]
