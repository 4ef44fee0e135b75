"""The engines ``SQLStorage`` uses: deadlines per dialect, no parameters in errors, safe after ``fork``.

- Every database call has a deadline: connecting (``connect_timeout``), each
  statement (PostgreSQL ``statement_timeout``, PyMySQL ``read_timeout`` /
  ``write_timeout``, SQLite's busy timeout), TCP keepalives on PostgreSQL, and the
  watchdog (:mod:`.deadline`) for a peer that never answers at all. The pool's
  liveness check runs under the watchdog too (SQLAlchemy's own ``pool_pre_ping``
  has no deadline beyond the driver's).
- ``hide_parameters=True``: an error message never quotes a row's values.
- Fork: a pooled connection must not be used by two processes. Every engine a
  storage made or was given is disposed with ``close=False`` in a forked child
  (SQLAlchemy's documented recipe), so the child opens its own connections and
  leaves the parent's sockets alone.
- In-memory SQLite: one connection shared by every thread; a reader's rollback
  would discard the writer's open batch, so each use holds the connection alone
  (:mod:`.shared_memory`).
- MariaDB/MySQL through PyMySQL: connections take several statements in one query, so a
  batch, its id and its COMMIT cost one round trip (:mod:`.mysql_batch`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

from . import mysql_batch
from .deadline import watchdog
from .shared_memory import SharedMemoryDatabase

_engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
_shared_memory_engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def make_engine(
    conn_str: str,
    options: dict[str, Any],
    *,
    connect_timeout: float | None,
    statement_timeout: float | None,
    abandon_after: float | None = None,
) -> sa.Engine:
    """An engine for ``conn_str`` with the deadlines above; ``options`` (``create_engine`` keywords) win.

    ``abandon_after``: seconds after which the server itself gives up on a session that went silent
    in the middle of a transaction (the writer gave up on it at its deadline; its locks, the batch
    id's among them, must not outlive it): PostgreSQL's ``idle_in_transaction_session_timeout``,
    MariaDB's session ``wait_timeout``. Lock waits end with the statement deadline
    (``lock_timeout``, ``innodb_lock_wait_timeout``), so a retry never waits long behind one.

    MariaDB/MySQL through PyMySQL: the connections take several statements in one query, and the
    pool gives them back through ``mysql_batch``'s reset (unless ``options`` set
    ``pool_reset_on_return``), so a batch costs one round trip.

    :raises ValueError: the URL names a dialect or driver SQLAlchemy cannot load (``postgres://``,
        ``mysql://`` without mysqlclient): the message gives the URL to use instead.
    """
    url = sa.make_url(conn_str)
    backend = url.get_backend_name()
    try:
        driver = url.get_driver_name()
    except sa_exc.NoSuchModuleError as exc:  # postgres:// (Heroku's and libpq's spelling) is no SQLAlchemy dialect
        raise ValueError(_use_instead(url, exc)) from None
    options.setdefault("hide_parameters", True)
    connect_args: dict[str, Any] = dict(options.pop("connect_args", {}))
    multi_statements = backend in ("mysql", "mariadb") and driver == "pymysql"
    own_reset = multi_statements and "pool_reset_on_return" not in options
    if own_reset:
        options["pool_reset_on_return"] = None  # mysql_batch's reset does it, without a batch's needless ROLLBACK
    memory = backend == "sqlite" and url.database in (None, "", ":memory:")
    shared_memory = memory and "poolclass" not in options and "creator" not in options
    if shared_memory:
        # One shared connection, or the writer thread would get an empty database of its own.
        options.update(poolclass=NullPool, creator=SharedMemoryDatabase())
    elif memory:
        connect_args.setdefault("check_same_thread", False)
    elif backend == "postgresql" and driver == "psycopg":
        if connect_timeout:
            connect_args.setdefault("connect_timeout", max(2, math.ceil(connect_timeout)))  # libpq: whole seconds
        connect_args.setdefault("keepalives", 1)
        connect_args.setdefault("keepalives_idle", 10)
        connect_args.setdefault("keepalives_interval", 5)
        connect_args.setdefault("keepalives_count", 3)
        if "options" not in connect_args and "options" not in url.query:
            settings = {"statement_timeout": statement_timeout, "lock_timeout": statement_timeout}
            settings["idle_in_transaction_session_timeout"] = abandon_after
            given = " ".join(f"-c {name}={math.ceil(s * 1000)}" for name, s in settings.items() if s)
            if given:
                connect_args["options"] = given
    elif backend in ("mysql", "mariadb") and driver in ("pymysql", "mysqldb"):
        if connect_timeout:
            connect_args.setdefault("connect_timeout", max(1, math.ceil(connect_timeout)))
        if statement_timeout:
            connect_args.setdefault("read_timeout", max(1, math.ceil(statement_timeout)))
            connect_args.setdefault("write_timeout", max(1, math.ceil(statement_timeout)))
        session = []
        if statement_timeout:
            session.append(f"SESSION innodb_lock_wait_timeout = {max(1, math.ceil(statement_timeout))}")
        if abandon_after:
            # The server closes a connection silent this long, rolling its transaction back; the pool's
            # ping at checkout replaces one closed while idle.
            session.append(f"SESSION wait_timeout = {max(1, math.ceil(abandon_after))}")
        if session:
            connect_args.setdefault("init_command", "SET " + ", ".join(session))
    elif backend == "sqlite" and statement_timeout:
        connect_args.setdefault("timeout", statement_timeout)  # how long to wait for a lock
    try:
        engine = sa.create_engine(url, connect_args=connect_args, **options)
    except (sa_exc.NoSuchModuleError, ModuleNotFoundError) as exc:  # `mysql://` wants MySQLdb, not installed
        raise ValueError(_use_instead(url, exc)) from None
    if shared_memory:
        _shared_memory_engines.add(engine)
    if multi_statements:
        mysql_batch.enable(engine, reset=own_reset)
    if backend == "sqlite" and not memory:
        sa.event.listen(engine, "connect", _sqlite_write_ahead_log)
    elif "pool_pre_ping" not in options:  # the caller's own choice wins
        ping_timeout = statement_timeout or connect_timeout
        sa.event.listen(engine, "checkout", lambda dbapi, record, proxy: _ping(dbapi, ping_timeout))
    register_engine(engine)
    return engine


_DRIVERS = {"postgres": "postgresql+psycopg", "postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}
_DRIVERS["mariadb"] = "mariadb+pymysql"
_PACKAGES = {"psycopg": "psycopg[binary] (the extra 'postgres')", "pymysql": "PyMySQL (the extra 'mysql')"}


def _use_instead(url: sa.URL, error: Exception) -> str:
    """What went wrong, then the URL with a driver this package supports (its password hidden)."""
    problem = f"SQLAlchemy cannot load {url.drivername!r} ({error})"
    better = _DRIVERS.get(url.drivername.partition("+")[0])
    if better is None:
        return f"{problem}: check the URL's scheme and that its driver is installed"
    if better == url.drivername:
        return f"{problem}: install {_PACKAGES[better.partition('+')[2]]}"
    fixed = url.set(drivername=better).render_as_string(hide_password=True)
    return f"{problem}: use {fixed!r} (its driver: {_PACKAGES[better.partition('+')[2]]})"


def shares_memory_database(engine: sa.Engine) -> bool:
    """Whether ``engine`` is an in-memory SQLite engine made here: one database for every thread."""
    return engine in _shared_memory_engines


def register_engine(engine: sa.Engine) -> None:
    """Make ``engine`` safe to use after ``fork`` (its pool is emptied in the child)."""
    _engines.add(engine)


def _ping(dbapi_connection: Any, seconds: float | None) -> None:
    """A pooled connection's liveness check, under a deadline; a failure makes the pool reconnect."""
    watchdog.attach(dbapi_connection)
    if not watchdog.wants_ping():
        return
    try:
        with watchdog.guard(seconds):
            watchdog.attach(dbapi_connection)
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
                cursor.fetchall()
            finally:
                cursor.close()
    except Exception as exc:
        raise sa_exc.DisconnectionError(f"connection check failed: {type(exc).__name__}") from None


def _sqlite_write_ahead_log(dbapi_connection: Any, connection_record: Any) -> None:
    """WAL journal and fsync at checkpoints.

    With SQLite's defaults every batch costs several fsyncs, readers (``get_usage``)
    block the writer, and two gunicorn workers writing one file fail with "database is
    locked". WAL with ``synchronous=NORMAL`` is SQLite's own advice for this: a
    committed batch survives a crash of the app; a power cut may lose the last ones.
    The busy timeout (wait instead of failing when locked) comes from the driver's
    ``timeout``, the storage's ``statement_timeout``.
    """
    cursor = dbapi_connection.cursor()
    try:
        # WAL is kept in the file: switch only when it is not set yet. The switch needs an
        # exclusive lock, and SQLite can refuse it at once ("database is locked") while
        # another process opening the same file (a gunicorn worker) is switching it too;
        # that process leaves the file in WAL, so the refusal is harmless.
        mode = cursor.execute("PRAGMA journal_mode").fetchone()
        if not mode or str(mode[0]).lower() != "wal":
            with contextlib.suppress(sqlite3.OperationalError):
                cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _dispose_after_fork() -> None:
    for engine in list(_engines):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_dispose_after_fork)
