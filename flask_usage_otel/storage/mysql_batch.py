"""MariaDB and MySQL with PyMySQL: a batch, its id and its COMMIT in one round trip.

Through PyMySQL's API each statement waits for the server's answer: the batch id's INSERT,
the rows' INSERT, COMMIT and the pool's ROLLBACK when the connection is given back are four
round trips per batch, and a database 10 ms away caps the writer near 8k rows/s. A
connection opened with the client flag ``MULTI_STATEMENTS`` takes several statements in one
query, so a batch is one query,

    BEGIN; INSERT INTO t (...) VALUES (...),(...); INSERT INTO t_batches ...; COMMIT

whose answers are read in order (``nextset``). The server runs the statements one after the
other without waiting for this client, so the id is inserted after the rows, in the same
transaction, and the guarantee of ``sql_batches`` holds: a retry whose id is there already
was committed before, and the server never waits for this client while it holds the id's
lock. ``BEGIN`` is explicit, so the batch is one transaction whatever the session's
autocommit. With summary hooks the query ends after the id's INSERT; the hooks run in the
open transaction and the storage commits it.

The server stops at the first statement that fails and leaves the transaction open: the
error is raised as SQLAlchemy would raise it, and the pool's reset rolls the transaction
back when the connection is given back. A batch whose statement would pass PyMySQL's own
statement size (``Cursor.max_stmt_length``, as its ``executemany``) is cut into several
INSERTs, sent in as many queries.

The pool's ROLLBACK: an engine the storage makes gives connections back through
:func:`_reset` instead of SQLAlchemy's rollback-on-return (its documented ``reset`` event
with ``pool_reset_on_return=None``). It rolls back as before, except a connection whose last
statement was a batch's COMMIT, answered: that session has no transaction left.

Only engines the storage makes from a URL open their connections with ``MULTI_STATEMENTS``
(:func:`enable`); an engine the application gives keeps the statement-per-round-trip path.
Values reach the query only through PyMySQL's own escaping (``Cursor.mogrify``, what its
``execute`` and ``executemany`` use); identifiers are the table's, quoted by SQLAlchemy. That
engine also serves the storage's reads, which bind their values; SQL of the application's own on
``storage.engine`` must bind its values too, since a second statement smuggled into SQL built by
formatting would run (docs/sql.md says so). mysqlclient (``mysql+mysqldb://``) keeps the
statement-per-round-trip path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from .sql_batches import AlreadyWritten, utcnow
from .sql_errors import driver_error

_MULTI_STATEMENTS = "flask_usage_otel.multi_statements"
"""Set in a pooled connection's ``info`` when it was opened with ``MULTI_STATEMENTS``."""
_COMMITTED = "flask_usage_otel.committed"
"""Set in a pooled connection's ``info`` when its last statement was a batch's COMMIT, answered."""
_DUPLICATE_ENTRY = 1062
_MAX_STATEMENT = 1024000  # PyMySQL's Cursor.max_stmt_length, where a release lacks it
_SMALL = 4096  # room in a query for BEGIN, the batch id's INSERT and COMMIT next to a full INSERT


def enable(engine: sa.Engine, *, reset: bool) -> None:
    """Open ``engine``'s PyMySQL connections with ``MULTI_STATEMENTS``, each marked for :func:`can_write`.

    :param reset: give connections back through :func:`_reset` (the engine was made with
        ``pool_reset_on_return=None``).
    """
    from pymysql.constants import CLIENT

    def multi_statements(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        # Added to the dialect's own flags (SQLAlchemy sets FOUND_ROWS there), not in place of them.
        cparams["client_flag"] = int(cparams.get("client_flag", 0)) | CLIENT.MULTI_STATEMENTS
        if record is not None:
            record.info[_MULTI_STATEMENTS] = True  # an engine with a `creator` of its own never gets here

    sa.event.listen(engine, "do_connect", multi_statements)
    if reset:
        sa.event.listen(engine, "reset", _reset)


def _reset(dbapi_connection: Any, record: Any, state: Any) -> None:
    """SQLAlchemy's rollback-on-return, skipped when the last statement was a batch's COMMIT."""
    committed = record is not None and record.info.pop(_COMMITTED, False)
    if committed or state.transaction_was_reset or not state.asyncio_safe:
        return
    dbapi_connection.rollback()


def can_write(conn: sa.Connection) -> bool:
    """Whether ``conn`` takes a batch in one query (an engine made by :func:`enable`)."""
    return bool(conn.connection.info.get(_MULTI_STATEMENTS))


def write_batch(
    conn: sa.Connection,
    insert: tuple[str, str],
    rows: Sequence[tuple[Any, ...]],
    claim: tuple[str, str] | None,
    *,
    commit: bool,
) -> None:
    """Insert ``rows`` and then record the batch id, committing when ``commit``, in one query.

    :param insert: the rows' INSERT up to ``VALUES`` (identifiers quoted as they are, no ``%`` doubled)
        and one row's markers, ``(%s, ...)``.
    :param claim: the INSERT of the batch id up to its values (``... VALUES ``) and the id; None: no id.
    :raises AlreadyWritten: the batch id was recorded already (a retry of a committed batch).
    :raises sqlalchemy.exc.DBAPIError: what SQLAlchemy would raise for the driver's error.
    """
    proxied = conn.connection
    proxied.info.pop(_COMMITTED, None)
    raw: Any = proxied.dbapi_connection
    dbapi = conn.dialect.loaded_dbapi
    cursor = raw.cursor()
    at = claim_at = 0  # the statement whose answer is awaited; the batch id's
    sent = False
    try:
        limit = int(getattr(cursor, "max_stmt_length", _MAX_STATEMENT))
        statements = ["BEGIN", *(_inserts(cursor, insert, rows, limit) if rows else [])]
        claim_at = len(statements)
        if claim is not None:
            statements.append(claim[0] + cursor.mogrify("(%s, %s)", (claim[1], utcnow())))
        if commit:
            statements.append("COMMIT")
        for query in _queries(statements, limit + _SMALL):
            sent = True
            cursor.execute(";".join(query))
            at += 1
            for _ in query[1:]:
                if not cursor.nextset():
                    raise RuntimeError(f"the server answered {at} of the batch's {len(statements)} statements")
                at += 1
    except dbapi.Error as exc:
        if at == claim_at and claim is not None and exc.args and exc.args[0] == _DUPLICATE_ENTRY:
            # The rows inserted before it are rolled back by the pool's reset.
            raise AlreadyWritten(claim[1]) from None
        shown = "; ".join(["BEGIN", "".join(insert), *(["INSERT INTO <batch ids>"] if claim else [])])
        raise driver_error(conn, exc, shown, cursor) from exc
    except BaseException as exc:
        if sent:  # interrupted between answers: the connection cannot be reused
            conn.invalidate(exc)
        raise
    finally:
        with contextlib.suppress(Exception):
            cursor.close()
    if commit:
        proxied.info[_COMMITTED] = True


def _inserts(cursor: Any, insert: tuple[str, str], rows: Sequence[tuple[Any, ...]], limit: int) -> list[str]:
    """The rows' multi-row INSERTs, each at most ``limit`` bytes (a row longer than that goes alone)."""
    prefix, markers = insert
    mogrify = cursor.mogrify
    statements: list[str] = []
    values: list[str] = []
    start = size = len(prefix.encode())
    for row in rows:
        text = mogrify(markers, row)
        length = (len(text) if text.isascii() else len(text.encode())) + 1  # UTF-8's length bounds any client charset's
        if values and size + length > limit:
            statements.append(prefix + ",".join(values))
            values, size = [], start
        values.append(text)
        size += length
    statements.append(prefix + ",".join(values))
    return statements


def _queries(statements: list[str], limit: int) -> list[list[str]]:
    """``statements`` in as few queries as keep each within ``limit`` bytes."""
    queries: list[list[str]] = [[]]
    size = 0
    for statement in statements:
        length = (len(statement) if statement.isascii() else len(statement.encode())) + 1
        if queries[-1] and size + length > limit:
            queries.append([])
            size = 0
        queries[-1].append(statement)
        size += length
    return queries
