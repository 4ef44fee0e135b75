"""A deadline on database calls that a silent network would otherwise let hang for ever.

Driver timeouts do not cover every case: a peer that accepts bytes and never
answers (a stuck proxy, a NAT that lost its mapping but still acknowledges) keeps
TCP keepalives happy, a server-side ``statement_timeout`` never starts because the
statement never arrives, and psycopg has no client-side read timeout. So one
watchdog thread per process cuts the socket (``shutdown``) of a call that outlived
its deadline: the driver's blocked read returns at once with a connection error,
SQLAlchemy invalidates the connection, and the caller raises :class:`WriteTimeout`
so the writer counts the attempt and retries it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..internals import pymysql_socket

WATCHDOG_TICK = 0.25
"""Seconds between the watchdog's checks: how late past its deadline a stuck call is cut."""


class WriteTimeout(TimeoutError):
    """A write attempt got no answer within its deadline and was abandoned (it is retried)."""


class _Attempt:
    __slots__ = ("connections", "deadline", "expired", "ping")

    def __init__(self, deadline: float, ping: bool) -> None:
        self.deadline = deadline
        self.connections: list[Any] = []
        self.expired = False
        self.ping = ping


class Watchdog:
    """Cuts the connections of attempts that pass their deadline (one thread, started on first use)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._attempts: set[_Attempt] = set()
        self._thread: threading.Thread | None = None
        self._local = threading.local()

    @contextlib.contextmanager
    def guard(self, seconds: float | None, *, ping: bool = True) -> Iterator[_Attempt]:
        """Run the block under a deadline; connections it uses are registered with :meth:`attach`.

        :param ping: whether a pooled connection the block takes is checked first; a caller
            that retries a failed block itself (the writer) skips that round trip.
        """
        attempt = _Attempt(time.monotonic() + seconds if seconds else float("inf"), ping)
        if seconds:
            with self._lock:
                self._attempts.add(attempt)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="flask-usage-otel-deadline", daemon=True)
                    self._thread.start()
        previous = getattr(self._local, "attempt", None)
        self._local.attempt = attempt
        try:
            yield attempt
        finally:
            self._local.attempt = previous
            if seconds:
                with self._lock:
                    self._attempts.discard(attempt)

    def wants_ping(self) -> bool:
        """Whether the current thread's guarded block (if any) wants pooled connections checked."""
        attempt = getattr(self._local, "attempt", None)
        return attempt is None or attempt.ping

    def attach(self, dbapi_connection: Any) -> None:
        """The current thread's guarded block now waits on this connection."""
        attempt = getattr(self._local, "attempt", None)
        if attempt is not None and attempt.deadline != float("inf"):
            attempt.connections.append(dbapi_connection)
            if attempt.expired:  # checked out after the deadline passed
                cut(dbapi_connection)

    def _run(self) -> None:
        while True:
            time.sleep(WATCHDOG_TICK)
            now = time.monotonic()
            with self._lock:
                late = [a for a in self._attempts if not a.expired and a.deadline <= now]
                for attempt in late:
                    attempt.expired = True
            for attempt in late:
                for connection in list(attempt.connections):
                    cut(connection)

    def after_fork_in_child(self) -> None:
        self._reset()


def cut(dbapi_connection: Any) -> None:
    """Shut down the connection's socket so a read blocked on it returns (an error) at once."""
    sock: Any = None
    with contextlib.suppress(Exception):
        pgconn = getattr(dbapi_connection, "pgconn", None)  # psycopg 3
        if pgconn is not None:
            sock = socket.socket(fileno=os.dup(pgconn.socket))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()  # closes the duplicate only; the driver still owns its descriptor
            return
    with contextlib.suppress(Exception):
        if type(dbapi_connection).__module__.startswith("pymysql"):
            sock = pymysql_socket(dbapi_connection)
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)


watchdog = Watchdog()
"""The process's watchdog."""

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=watchdog.after_fork_in_child)
