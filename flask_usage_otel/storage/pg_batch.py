"""PostgreSQL with psycopg 3: a batch, its id and its COMMIT in two round trips.

Through psycopg's own API each statement waits for the server's answer: BEGIN, the batch
id's INSERT, COPY's start, COPY's data, COMMIT are five round trips per batch, and a
database 10 ms away caps the writer near 8k rows/s. libpq does better with one simple query
holding several statements, COPY among them: the server runs the statements after COPY once
the data has arrived. So a batch is

1. ``BEGIN; COPY t (...) FROM STDIN; INSERT INTO t_batches ...; COMMIT``: the server begins,
   and asks for the rows;
2. the rows in COPY's text format: the server answers COPY, the id's INSERT and COMMIT at once.

The rows are made while the query travels, so at a long round trip their cost is hidden in it.

The id is inserted after the rows, in the same transaction, so the guarantee of
``sql_batches`` holds (a retry whose id is there already was committed before), and the server
never waits for this client while it holds the id's lock: a session that goes silent waiting
for the rows holds no lock a retry needs. With summary hooks the query ends after the id's
INSERT; the hooks run in the open transaction and the storage commits it.

The rows are formatted by psycopg's COPY formatter (a ``Copy`` with a writer that collects
the bytes: psycopg's documented way to make COPY data without running a COPY) and sent with
libpq's calls on the connection's ``pgconn`` (``psycopg.pq``, psycopg's public libpq layer),
waiting in ``poll()`` with the interpreter lock released. A cut socket (the write deadline's
watchdog) wakes the wait with a connection error.
"""

from __future__ import annotations

import io
import select
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from psycopg import pq
from psycopg.copy import Copy, FileWriter

from ..internals import psycopg_error
from .sql_batches import AlreadyWritten, utcnow
from .sql_errors import driver_error

_UNIQUE_VIOLATION = b"23505"
_SQLSTATE = pq.DiagnosticField.SQLSTATE
_TABLE_NAME = pq.DiagnosticField.TABLE_NAME
_IDLE = pq.TransactionStatus.IDLE
_ACTIVE = pq.TransactionStatus.ACTIVE
_COPY_IN = pq.ExecStatus.COPY_IN
_FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
_READ = getattr(select, "POLLIN", 1) | getattr(select, "POLLERR", 8) | getattr(select, "POLLHUP", 16)
_WRITE = getattr(select, "POLLOUT", 4)


def write_batch(
    conn: sa.Connection,
    copy_sql: str,
    rows: Callable[[], Iterable[Sequence[Any]]],
    claim: tuple[str, str, str] | None,
    *,
    commit: bool,
) -> None:
    """COPY what ``rows()`` gives with ``copy_sql`` and then record the batch id, committing when ``commit``, in
    two round trips; in ``conn``'s transaction when one is open already.

    :param rows: makes the rows; called once the query is on its way, so the rows are made while it travels.
    :param claim: the batch-id table (quoted, with its schema), its bare name and the batch's id; None: no id.
    :raises AlreadyWritten: the batch id was recorded already (a retry of a committed batch).
    :raises sqlalchemy.exc.DBAPIError: what SQLAlchemy would raise for the driver's error.
    """
    raw: Any = conn.connection.dbapi_connection
    pgconn = raw.pgconn
    encoding = raw.info.encoding
    statements = [copy_sql]
    if claim is not None:
        statements.append(_claim_sql(pgconn, claim[0], claim[2], encoding))
    if pgconn.transaction_status == _IDLE:
        statements = ["BEGIN", *statements, "COMMIT"] if commit else ["BEGIN", *statements]
    query = "; ".join(statements)
    dbapi = conn.dialect.loaded_dbapi
    try:
        results = _run(pgconn, query.encode(encoding), lambda: _copy_data(raw, rows()))
        for result in results:
            if result.status == _FATAL_ERROR:
                if claim is not None and _already_written(result, claim[1]):
                    raise AlreadyWritten(claim[2])
                raise psycopg_error(result, encoding)
    except dbapi.Error as exc:
        raise driver_error(conn, exc, query, broken=pgconn.transaction_status == _ACTIVE) from exc
    except BaseException as exc:
        if pgconn.transaction_status == _ACTIVE:  # interrupted mid-protocol: the connection cannot be reused
            conn.invalidate(exc)
        raise


def _already_written(result: Any, batches: str) -> bool:
    """Whether a failed result is the batch id's INSERT refused as a duplicate: the batch was committed before."""
    return result.error_field(_SQLSTATE) == _UNIQUE_VIOLATION and result.error_field(_TABLE_NAME) == batches.encode()


def _claim_sql(pgconn: Any, table: str, batch_id: str, encoding: str) -> str:
    """The batch id's INSERT with its values written in (a query of several statements takes no parameters),
    quoted by libpq for this connection's settings."""
    literal = bytes(pq.Escaping(pgconn).escape_literal(batch_id.encode(encoding))).decode(encoding)  # memoryview < 3.2
    return f"INSERT INTO {table} (batch_id, written_at) VALUES ({literal}, '{utcnow().isoformat(' ')}')"


def _copy_data(raw: Any, rows: Iterable[Sequence[Any]]) -> list[bytes]:
    """``rows`` as COPY's text format, by psycopg's formatter (C), nothing sent."""
    buffer = io.BytesIO()
    cursor = raw.cursor()
    try:
        with Copy(cursor, writer=FileWriter(buffer)) as copy:
            write_row = copy.write_row
            for row in rows:
                write_row(row)
    finally:
        cursor.close()
    return [buffer.getvalue()]


def _run(pgconn: Any, query: bytes, make_data: Callable[[], list[bytes]]) -> list[Any]:
    """Send ``query``, make the COPY data meanwhile, send it when the server asks for it; every result of the
    query's statements.

    After an error the server skips the rest of the query (its COPY included): the results
    are read to the end either way, so the connection is ready for the ROLLBACK. When the data
    cannot be made, the COPY is failed and that error raised.
    """
    pgconn.send_query(query)
    _flush(pgconn)
    failed: BaseException | None = None
    try:
        data = make_data()
    except BaseException as exc:
        failed, data = exc, []
    results = []
    while (result := _next_result(pgconn)) is not None:
        if result.status != _COPY_IN:
            results.append(result)
            continue
        for chunk in data:
            while not pgconn.put_copy_data(chunk):
                _wait(pgconn.socket, _WRITE)
        while not pgconn.put_copy_end(None if failed is None else b"the rows could not be formatted"):
            _wait(pgconn.socket, _WRITE)
        _flush(pgconn)
    if failed is not None:
        raise failed
    return results


def _next_result(pgconn: Any) -> Any:
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            return pgconn.get_result()
        _wait(pgconn.socket, _READ)


def _flush(pgconn: Any) -> None:
    while pgconn.flush():
        if _wait(pgconn.socket, _READ | _WRITE) & _READ:
            pgconn.consume_input()  # the server may answer (an error) before taking everything


def _wait(fd: int, events: int) -> int:
    """Block until ``fd`` is ready for ``events`` (or failed); the interpreter lock is released meanwhile."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, events)
        return int(poller.poll()[0][1])
    readable, writable, failed = select.select([fd], [fd] if events & _WRITE else [], [fd])
    return (_READ if readable or failed else 0) | (_WRITE if writable else 0)
