"""Background HTTP load for the fault and soak tests: numbered requests from a few threads.

Each request carries its number in the query string (``?n=17``), so the stored rows can be
matched one to one with what was sent. Every loop is bounded by a request limit.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class Sent:
    """One request: its number, when it started (monotonic), how long it took, status and body."""

    n: int
    started: float
    seconds: float
    status: int
    body: str


class Load:
    """Sends ``GET {base_url}{path}?n=<n>`` for n from ``first`` from ``threads`` threads, until stopped or n reaches
    ``limit``."""

    def __init__(
        self, base_url: str, path: str = "/pid", threads: int = 4, first: int = 0, limit: int = 100_000
    ) -> None:
        self.url = base_url + path
        self.limit = limit
        self.sent: list[Sent] = []
        self.errors: list[BaseException] = []
        self._numbers = itertools.count(first)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                with self._lock:
                    n = next(self._numbers)
                if n >= self.limit:
                    return
                started = time.monotonic()
                try:
                    response = session.get(self.url, params={"n": n}, timeout=30)
                except requests.RequestException as exc:
                    self.errors.append(exc)
                    continue
                self.sent.append(Sent(n, started, time.monotonic() - started, response.status_code, response.text))

    def count(self) -> int:
        return len(self.sent) + len(self.errors)

    def join(self, timeout: float = 60.0) -> None:
        """Wait until every request up to ``limit`` is done."""
        for thread in self._threads:
            thread.join(timeout)

    def wait_for(self, requests_done: int, timeout: float = 30.0) -> None:
        """Block until at least ``requests_done`` requests finished (or fail after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.count() < requests_done:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.count()} of {requests_done} requests done after {timeout}s")
            time.sleep(0.02)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)


def p99(seconds: list[float]) -> float:
    """The 99th percentile (nearest rank) of a list of durations."""
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
