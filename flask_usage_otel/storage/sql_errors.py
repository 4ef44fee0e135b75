"""What a database error means for the writer, decided by what the database said (its error code).

- **rejected**: this row's data is invalid (a value out of range or too long, a
  constraint, its encoding). Retrying cannot help: the batch is written row by row
  and the refused rows are dropped, counted.
- **missing table**: the table (or the batch-id table) is gone, e.g. after a restore
  or a botched migration. The storage forgets what it knew about the table, so the
  next attempt looks again (and recreates a table it created itself).
- everything else is **transient**: the connection, the server's state (read-only
  during a failover, shutting down, out of resources), permissions, locks,
  deadlines. The batch is retried with backoff within the queue's bounds.

Exception class names alone do not tell: PyMySQL raises a CHECK constraint failure
as ``OperationalError``, and PostgreSQL's read-only error is an ``InternalError``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import exc as sa_exc

_PG_REJECTED_CLASSES = frozenset({"22", "23", "54"})
"""SQLSTATE classes about the data: data exception, integrity constraint violation, program limit exceeded."""
_PG_UNDEFINED_TABLE = "42P01"

_MYSQL_REJECTED = frozenset(
    {
        1048,  # column cannot be null
        1062,  # duplicate entry (a unique key of the user's own)
        1118,  # row size too large
        1263,  # NULL supplied to a NOT NULL column
        1264,  # out of range value
        1265,  # data truncated
        1292,  # incorrect date/time value
        1300,  # invalid character string
        1366,  # incorrect string value (encoding)
        1367,  # illegal value
        1406,  # data too long
        1451,  # foreign key (parent)
        1452,  # foreign key (child)
        1690,  # value out of range
        3819,  # CHECK constraint failed (MySQL)
        4025,  # CHECK constraint failed (MariaDB)
    }
)
_MYSQL_NO_SUCH_TABLE = 1146


def database_code(exc: BaseException) -> str | int | None:
    """The SQLSTATE (PostgreSQL) or error number (MySQL/MariaDB) of a DBAPI error, if any."""
    orig: Any = getattr(exc, "orig", None)
    if orig is None:
        return None
    args = getattr(orig, "args", None)
    if _is_mysql(orig) and args and isinstance(args[0], int):
        return args[0]  # the error number: more precise than the SQLSTATE MySQL errors also carry
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate
    if args and isinstance(args[0], int):
        return args[0]
    return None


def is_rejected_row(exc: BaseException) -> bool:
    """The database refused the row's data (not the connection, the server's state or the table)."""
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return False
    code = database_code(exc)
    orig = exc.orig
    if isinstance(code, int) and _is_mysql(orig):
        return code in _MYSQL_REJECTED
    if isinstance(code, str):
        return code[:2] in _PG_REJECTED_CLASSES
    if isinstance(orig, sqlite3.Error):
        return isinstance(orig, sqlite3.IntegrityError | sqlite3.DataError)
    return isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError)


def is_missing_table(exc: BaseException) -> bool:
    """The statement failed because a table it names does not exist."""
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    code = database_code(exc)
    if code == _PG_UNDEFINED_TABLE:
        return True
    if code == _MYSQL_NO_SUCH_TABLE and _is_mysql(exc.orig):
        return True
    return isinstance(exc.orig, sqlite3.OperationalError) and "no such table" in str(exc.orig)


def is_transient(exc: BaseException) -> bool:
    """Retrying later may succeed: anything about the connection, the server, permissions or the table.

    Errors raised before the database saw anything (building a row's parameters:
    TypeError, ValueError, ...) are not transient: they belong to a row.
    """
    if isinstance(exc, sa_exc.DBAPIError):
        return not is_rejected_row(exc)
    if isinstance(exc, sa_exc.StatementError):  # a value SQLAlchemy could not bind: the row's
        return False
    return isinstance(exc, sa_exc.SQLAlchemyError | OSError | RuntimeError | TimeoutError)


def _is_mysql(orig: Any) -> bool:
    return type(orig).__module__.split(".")[0] in ("pymysql", "MySQLdb", "mysql", "mariadb")
