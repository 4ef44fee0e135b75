"""``flask usage check``: can a SQL storage reach its database, and are its tables as the writer needs them?

Each step says what it found and, when something is wrong, what to run or fix. The
check reads and never changes anything: the one write it tries (a batch id) is rolled
back. A database that cannot be reached is otherwise silent (requests are answered as
usual and the rows wait in the queue), so this is where to look first.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from ..columns import COLUMN_WIDTHS
from .deadline import WriteTimeout, watchdog
from .sql_errors import advice, describe
from .table import reflect

OK, NOTE, PROBLEM = "ok", "note", "problem"
_DEFAULT_DEADLINE = 30.0


@dataclass(frozen=True)
class Finding:
    level: str  # OK, NOTE or PROBLEM
    text: str
    todo: str | None = None
    """What to run or fix, for a note or a problem."""


def check_storage(storage: Any) -> list[Finding]:
    """What ``storage`` (an ``SQLStorage``) finds of its database, connection first; stops at the first
    problem the later steps depend on."""
    seconds = getattr(storage, "write_timeout", None) or _DEFAULT_DEADLINE
    try:
        engine: sa.Engine = storage.engine
    except RuntimeError as exc:  # SQLStorage(db=...) outside an app context
        return [Finding(PROBLEM, f"no engine: {exc}")]
    url = engine.url
    shown = url.render_as_string(hide_password=True)
    started = time.monotonic()
    doing = "cannot connect"
    try:
        with watchdog.guard(seconds) as attempt:
            try:
                with engine.connect() as conn:
                    watchdog.attach(conn.connection.dbapi_connection)
                    conn.exec_driver_sql("SELECT 1").all()
                    version = ".".join(map(str, conn.dialect.server_version_info or ())) or "?"
                    server = "mariadb" if getattr(conn.dialect, "is_mariadb", False) else conn.dialect.name
                    connected = Finding(OK, f"connected to {shown} ({server} {version}) in {_ms(started)} ms")
                    doing = "cannot read the tables' layout"
                    return [connected, *_tables(storage, conn)]
            except Exception:
                if attempt.expired:
                    raise WriteTimeout from None
                raise
    except WriteTimeout:
        return [Finding(PROBLEM, f"no answer from {shown} within {seconds:g} s", _SLOW)]
    except (sa_exc.SQLAlchemyError, OSError) as exc:
        return [Finding(PROBLEM, f"{doing}: {describe(exc, url, message=True)}", advice(exc, url))]


_SLOW = "is the host right, and is a firewall dropping the packets? (connect_timeout, write_timeout of SQLStorage)"


def _tables(storage: Any, conn: sa.Connection) -> list[Finding]:
    table: sa.Table = storage.table
    batches: sa.Table = storage.batches
    create = bool(getattr(storage, "create_tables", False))
    inspector = sa.inspect(conn)
    findings: list[Finding] = []
    if not inspector.has_table(table.name, schema=table.schema):
        level = NOTE if create else PROBLEM
        when = "the first write creates it (create_tables=True), or" if create else "create it with"
        return [Finding(level, f"table {table.name!r} does not exist", f"{when} `flask usage create-tables`")]
    has_batches = inspector.has_table(batches.name, schema=batches.schema)
    try:
        state = reflect(inspector, table, has_batches)
    except RuntimeError as exc:  # a table of that name that is no usage table
        return [Finding(PROBLEM, str(exc), "choose another table_name, or rename that table")]
    missing = [c.name for c in table.columns if c.name not in state.columns]
    narrow = sorted(name for name, width in state.widths.items() if width < COLUMN_WIDTHS.get(name, 0))
    if missing or narrow:
        what = [f"lacks {len(missing)} columns ({', '.join(missing)})"] if missing else []
        what += [f"has narrower columns ({', '.join(narrow)}), whose values are cut"] if narrow else []
        findings.append(
            Finding(
                PROBLEM,
                f"table {table.name!r} " + " and ".join(what) + " (a Flask-Track-Usage table, or an older one)",
                "run `flask usage upgrade-table` (adds the columns and indexes, keeps every row)",
            )
        )
    else:
        findings.append(Finding(OK, f"table {table.name!r} has every column ({len(state.columns)})"))
    findings.append(_batch_table(storage, conn, inspector, has_batches, create))
    return findings


def _batch_table(storage: Any, conn: sa.Connection, inspector: sa.Inspector, exists: bool, create: bool) -> Finding:
    batches: sa.Table = storage.batches
    if not exists:
        if create:
            return Finding(NOTE, f"table {batches.name!r} does not exist", "the first write creates it")
        return Finding(
            PROBLEM,
            f"table {batches.name!r} does not exist: a batch retried after a lost answer may be written twice",
            "run `flask usage upgrade-table` (or `flask usage create-tables`)",
        )
    columns = {c["name"] for c in inspector.get_columns(batches.name, schema=batches.schema)}
    lacking = sorted({"batch_id", "written_at"} - columns)
    if lacking:
        return Finding(
            PROBLEM,
            f"table {batches.name!r} lacks {', '.join(lacking)}: it is not this package's table of batch ids",
            "drop or rename it, then run `flask usage create-tables`",
        )
    # The batch id's INSERT, in every batch the writer sends: a read-only user or replica fails here, not later.
    conn.rollback()  # the looks above began a transaction
    try:
        with conn.begin() as transaction:
            conn.execute(batches.insert().values(batch_id=f"check-{uuid.uuid4().hex[:20]}", written_at=_now()))
            transaction.rollback()
    except sa_exc.DBAPIError as exc:
        return Finding(
            PROBLEM,
            f"cannot write to {batches.name!r}: {describe(exc, message=True)}",
            "grant this user INSERT and DELETE on the usage tables, and use a primary, not a read-only replica",
        )
    return Finding(OK, f"table {batches.name!r} is there and writable (a retried batch is written once)")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
