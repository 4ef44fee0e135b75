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

:func:`describe` says what went wrong in a line fit for a log: the error's type and
code always, and the driver's own message only for connection errors, which carry
no row data, with any credentials masked. :func:`advice` says what to do about a
connection error (used by ``flask usage check``).
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import sqlalchemy as sa
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


def driver_error(
    conn: sa.Connection, exc: Exception, statement: str, cursor: Any = None, *, broken: bool = False
) -> sa_exc.DBAPIError:
    """What SQLAlchemy would raise for the driver's ``exc`` on ``conn`` (OperationalError, DataError, ...),
    for a statement sent on the driver's own cursor; ``conn`` is invalidated when the connection is dead.

    The writer then tells a database that is down (retry the batch) from a row it refuses as it does
    for SQLAlchemy's own statements. ``broken``: the caller knows the connection cannot be reused.
    """
    dialect = conn.dialect
    disconnected = broken or dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
    if disconnected:
        conn.invalidate(exc)
    return sa_exc.DBAPIError.instance(
        statement, None, exc, dialect.loaded_dbapi.Error, connection_invalidated=disconnected, dialect=dialect
    )


# -- saying what went wrong -------------------------------------------------------------------

# The scheme is optional: psycopg 3.1 cuts libpq's message about a host it could not resolve inside
# the quoted host, so a URL given as the host arrives without it ("connection is bad: //app:secret@[::1\"").
_URL_CREDENTIALS_RE = re.compile(r"(?P<head>(?:[a-zA-Z][a-zA-Z0-9+.-]*:)?//[^:/@\s'\"]*:)[^@\s'\"]*(?P<at>@)")
_DSN_PASSWORD_RE = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd)\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s;,&]+)", re.I
)
_MASK = "***"


def is_connection_error(exc: BaseException) -> bool:
    """The error is about reaching the database (connecting, or a connection lost), not a statement's data.

    Such an error's message is the driver's or the server's about the connection: it quotes
    no row value (a statement's errors can: a duplicate key, a value out of range).
    """
    if isinstance(exc, sa_exc.DisconnectionError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        # No statement: raised while connecting. Invalidated: the connection broke under a statement.
        return exc.statement is None or exc.connection_invalidated
    return False


def mask_credentials(text: str, url: sa.URL | str | None = None) -> str:
    """``text`` with the passwords of URLs (``scheme://user:***@host``) and DSNs (``password=***``) masked,
    and ``url``'s own password wherever it appears."""
    password = _url(url).password if url is not None else None
    if password:
        text = text.replace(str(password), _MASK)
    text = _URL_CREDENTIALS_RE.sub(rf"\g<head>{_MASK}\g<at>", text)
    return _DSN_PASSWORD_RE.sub(rf"\g<head>{_MASK}", text)


def describe(exc: BaseException, url: sa.URL | str | None = None, *, message: bool | None = None) -> str:
    """One line for a log about a failed database call: never a row's values, never a password.

    ``OperationalError (psycopg.OperationalError): connection failed: connection to server at
    "127.0.0.1", port 5433 failed: Connection refused ... [postgresql+psycopg://app:***@127.0.0.1:5433/shop]``

    The type and the database's code always; the driver's message for connection errors only
    (:func:`is_connection_error`), with credentials masked; ``url`` (the engine's), shown with its
    password hidden, says which database was meant. ``message=True`` gives the message of any
    error, for a statement that carried no row data (a look at the table's layout).
    """
    orig: Any = getattr(exc, "orig", None)
    kinds = [type(orig).__module__.split(".")[0] + "." + type(orig).__name__] if orig is not None else []
    code = database_code(exc)
    if code is not None:
        kinds.append(f"code {code}")
    line = type(exc).__name__ + (f" ({', '.join(kinds)})" if kinds else "")
    if message if message is not None else is_connection_error(exc):
        message = str(orig if orig is not None else exc)
        line += ": " + " ".join(mask_credentials(message, url).split())  # one line: libpq's hints come on new lines
    if url is not None:
        line += f" [{_url(url).render_as_string(hide_password=True)}]"
    return line


def advice(exc: BaseException, url: sa.URL | str | None = None) -> str | None:
    """What to do about a connection error, when its code or message says; None when it does not."""
    if not isinstance(exc, sa_exc.DBAPIError):
        return None
    where = _url(url) if url is not None else None
    message = str(exc.orig)
    code = database_code(exc)
    database = where.database if where is not None else None
    if isinstance(exc.orig, sqlite3.OperationalError) and "unable to open database file" in message:
        return f"SQLite cannot open {database!r}: does its directory exist, and may this process write there?"
    if "timeout expired" in message or "timed out" in message:
        return "the server did not answer in time: is the host right, and is a firewall dropping the packets?"
    if "Connection refused" in message or code == 2003 or "could not translate host name" in message:
        server = f"{where.host}:{where.port}" if where is not None and where.host else "the server"
        return f"nothing answers at {server}: is the database server running there, and is the host and port right?"
    if code == 1049 or re.search(r"database \"[^\"]*\" does not exist", message):
        return f"the database {database!r} does not exist: create it, or fix the database name in the URL"
    if code == 1045 or "password authentication failed" in message or re.search(r"role \"[^\"]*\" does not", message):
        return "the server refused the user name or password: fix them in the URL"
    return None


def _url(url: sa.URL | str) -> sa.URL:
    return url if isinstance(url, sa.URL) else sa.make_url(url)
