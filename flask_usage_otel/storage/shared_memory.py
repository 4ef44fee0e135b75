"""One in-memory SQLite database shared by every thread of the process, lent to one user at a time.

An in-memory SQLite database lives in its connection, so the writer thread and the readers
must share one. SQLite allows that (``check_same_thread=False``), but not two users at once:
a reader's reset-on-return rollback would discard the writer's open batch.

Built on SQLAlchemy's public pool API only: a ``NullPool`` whose ``creator`` hands out the one
connection wrapped in a :class:`_Loan`. Taking a loan waits for the connection's turn; the pool
"closes" the loan when the connection comes back (after its rollback), which gives the turn to the
next user and leaves the database open. A thread may hold two loans at once (a nested checkout).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections import deque
from typing import Any


class _Turn:
    """Whose turn it is with the connection: one thread at a time, re-entrant, first come first served
    (a reader in a loop never starves the writer), given back by any thread (a loan the garbage
    collector returns is given back from whichever thread it runs on)."""

    __slots__ = ("_depth", "_guard", "_owner", "_waiting")

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._waiting: deque[tuple[int, threading.Lock]] = deque()

    def take(self) -> None:
        me = threading.get_ident()
        with self._guard:
            if self._owner is None or self._owner == me:
                self._owner = me
                self._depth += 1
                return
            handed = threading.Lock()
            handed.acquire()
            self._waiting.append((me, handed))
        handed.acquire()  # released by give() once the turn is this thread's

    def give(self) -> None:
        with self._guard:
            self._depth -= 1
            if self._depth > 0:
                return
            if self._waiting:
                self._owner, handed = self._waiting.popleft()
                self._depth = 1
                handed.release()
            else:
                self._owner = None
                self._depth = 0


class _Loan:
    """The shared connection as one user holds it: every DB-API call goes to the connection, and
    ``close()`` hands it back instead of closing it."""

    __slots__ = ("_connection", "_turn")

    def __init__(self, connection: sqlite3.Connection, turn: _Turn) -> None:
        object.__setattr__(self, "_connection", connection)
        object.__setattr__(self, "_turn", turn)

    def close(self) -> None:
        turn = self._turn
        if turn is not None:  # a second close (an invalidated loan) gives nothing back twice
            object.__setattr__(self, "_turn", None)
            turn.give()

    def cursor(self, *args: Any) -> sqlite3.Cursor:
        return self._connection.cursor(*args)

    def commit(self) -> None:
        self._connection.commit()

    def rollback(self) -> None:
        self._connection.rollback()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._connection, name, value)  # isolation_level, row_factory, ...


class SharedMemoryDatabase:
    """The ``creator`` of an engine's ``NullPool``: each call waits for its turn and lends the one connection."""

    def __init__(self) -> None:
        self._connection: sqlite3.Connection | None = None
        self._turn = _Turn()
        _databases.add(self)

    def __call__(self) -> _Loan:
        self._turn.take()
        try:
            if self._connection is None:
                self._connection = sqlite3.connect(":memory:", check_same_thread=False)
            return _Loan(self._connection, self._turn)
        except BaseException:
            self._turn.give()
            raise

    def close(self) -> None:
        """Closes the database itself (its rows are gone)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


_databases: weakref.WeakSet[SharedMemoryDatabase] = weakref.WeakSet()


def _free_after_fork() -> None:
    # The child's only thread starts with the database free; a loan taken before the fork gives
    # back to the old turn, which no one waits on any more.
    for database in list(_databases):
        database._turn = _Turn()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_free_after_fork)
