"""``flask usage ...``: manage and read the raw rows of the app's SQL storage from the command line.

Registered for every Flask app through the ``flask.commands`` entry point; the
commands act on the first storage of the app's ``TrackUsage``.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone
from typing import IO, Any

import click
from flask import current_app
from flask.cli import AppGroup

from .columns import EXPORT_COLUMNS
from .privacy import ErasureRefused, spreadsheet_safe
from .storage.base import SUMMARY_BY, SUMMARY_PERIODS

_DURATION_RE = re.compile(r"(\d+)\s*([smhdw])")
_DURATION_TEXT_RE = re.compile(r"(?:\d+\s*[smhdw]\s*)+")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PROGRESS_EVERY = 10_000

CSV_COLUMNS = EXPORT_COLUMNS
"""Columns of ``flask usage export --format csv``: the nested user agent is flattened, JSON stays JSON."""


class Duration(click.ParamType):
    """A length of time such as ``30d``, ``12h``, ``90m``, ``2w`` or ``1d12h``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        if not _DURATION_TEXT_RE.fullmatch(text):
            self.fail(f"{value!r} is not a duration such as 30d, 12h, 90m or 2w", param, ctx)
        result = timedelta()
        for amount, unit in _DURATION_RE.findall(text):
            result += timedelta(**{_UNITS[unit]: int(amount)})
        if result <= timedelta(0):
            self.fail(f"{value!r} must be longer than zero", param, ctx)
        return result


class Moment(click.ParamType):
    """An ISO date or datetime (UTC unless it says otherwise), or a duration meaning that long ago."""

    name = "datetime"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
        if _DURATION_TEXT_RE.fullmatch(text.lower()):
            return datetime.now(timezone.utc) - Duration().convert(text, param, ctx)
        self.fail(
            f"{value!r} is neither an ISO date/datetime (2024-03-01, 2024-03-01T12:00) nor a duration (7d)", param, ctx
        )


def _storage(*needs: str) -> Any:
    """The current app's first storage, refusing cleanly when there is none or it lacks a feature."""
    tracker = current_app.extensions.get("track_usage")
    if tracker is None:
        raise click.UsageError("this app has no TrackUsage; set it up with TrackUsage(app, storage=SQLStorage(...))")
    storages = tracker.storages()
    if not storages:
        raise click.UsageError("this app's TrackUsage has no storage; pass storage=SQLStorage(...)")
    # Flask-Track-Usage setups list writers first ([PrintWriter(), SQLStorage(...)]): take the first that can.
    able = [s for s in storages if all(callable(getattr(s, name, None)) for name in needs)]
    storage = able[0] if able else storages[0]
    missing = [name for name in needs if not callable(getattr(storage, name, None))]
    if missing:
        raise click.UsageError(f"the storage {storage!r} cannot do this (it has no {', '.join(missing)})")
    return storage


def _check_range(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and until < since:
        raise click.BadParameter(f"--until ({until.isoformat()}) is before --since ({since.isoformat()})")


usage = AppGroup("usage", help="Raw usage rows kept by TrackUsage's SQL storage.")


@usage.command("check")
def check() -> None:
    """Connect to each SQL storage and check its tables; say what is wrong and what to run (exit 1 then)."""
    from .storage.check import NOTE, PROBLEM, check_storage

    tracker = current_app.extensions.get("track_usage")
    if tracker is None:
        raise click.UsageError("this app has no TrackUsage; set it up with TrackUsage(app, storage=SQLStorage(...))")
    storages = tracker.storages()
    if not storages:
        click.echo("this app's TrackUsage has no storage: no rows are kept, nothing to check")
        return
    problems = 0
    for storage in storages:
        click.echo(repr(storage))
        if not (hasattr(storage, "engine") and hasattr(storage, "batches")):
            click.echo("  skip     not an SQL storage: nothing to check")
            continue
        for finding in check_storage(storage):
            problems += finding.level == PROBLEM
            click.echo(f"  {finding.level:<8} {finding.text}")
            if finding.todo and finding.level in (NOTE, PROBLEM):
                click.echo(f"  {'':<8} -> {finding.todo}")
    if problems:
        raise click.ClickException(f"{problems} problem{'s' if problems > 1 else ''}: see above")
    click.echo("everything checked is in order")


@usage.command("create-tables")
def create_tables() -> None:
    """Create the usage table and its indexes (nothing happens when they exist)."""
    storage = _storage("create_table")
    storage.create_table()
    click.echo(f"table {storage.table.name!r} is ready")


@usage.command("upgrade-table")
def upgrade_table() -> None:
    """Add the columns and indexes a Flask-Track-Usage table lacks, and widen its narrow columns."""
    storage = _storage("upgrade_table")
    changes = storage.upgrade_table()
    for change in changes:
        click.echo(change)
    click.echo(f"table {storage.table.name!r} is up to date" + (f" ({len(changes)} changes)" if changes else ""))


@usage.command("export")
@click.option("--since", type=Moment(), help="Earliest time: ISO date/datetime (UTC) or a duration ago (7d).")
@click.option("--until", type=Moment(), help="Latest time: ISO date/datetime (UTC) or a duration ago.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "jsonl"]), default="jsonl", show_default=True)
@click.option(
    "--output", "-o", type=click.File("w", encoding="utf-8", lazy=True), default="-", help="File (default stdout)."
)
@click.option("--chunk-size", type=click.IntRange(1, 100_000), default=1000, show_default=True, help="Rows per query.")
def export(since: datetime | None, until: datetime | None, fmt: str, output: IO[str], chunk_size: int) -> None:
    """Write raw rows, oldest first, as CSV, a JSON array or JSON lines (streamed: constant memory)."""
    _check_range(since, until)
    storage = _storage("iter_usage")
    rows = storage.iter_usage(since, until, chunk_size=chunk_size)
    count = _write_rows(rows, fmt, output, _progress() if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        click.echo(f"\rexported {count} rows", err=True)


def _progress() -> Any:
    def report(count: int) -> None:
        click.echo(f"\rexported {count} rows...", err=True, nl=False)

    return report


def _write_rows(rows: Iterable[dict[str, Any]], fmt: str, out: IO[str], progress: Any) -> int:
    count = 0
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(CSV_COLUMNS)
    elif fmt == "json":
        out.write("[")
    for row in rows:
        if writer is not None:
            writer.writerow(_csv_values(row))
        elif fmt == "json":
            out.write(("\n" if count == 0 else ",\n") + json.dumps(row, default=_json_default, ensure_ascii=False))
        else:
            out.write(json.dumps(row, default=_json_default, ensure_ascii=False) + "\n")
        count += 1
        if progress is not None and count % _PROGRESS_EVERY == 0:
            progress(count)
    if fmt == "json":
        out.write("\n]\n" if count else "]\n")
    out.flush()
    return count


def _csv_values(row: dict[str, Any]) -> list[Any]:
    ua = row.get("user_agent") or {}
    flat = {**row, **{f"ua_{key}": value for key, value in ua.items()}}
    values = []
    for column in CSV_COLUMNS:
        value = flat.get(column)
        if isinstance(value, datetime | date):
            value = value.isoformat()
        elif isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False)
        elif isinstance(value, str):
            # A path, user agent or user name is client-chosen: never a formula once opened in a spreadsheet.
            value = spreadsheet_safe(value)
        values.append("" if value is None else value)
    return values


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


@usage.command("prune")
@click.option("--older-than", type=Duration(), required=True, help="Delete rows older than this (30d, 12w, ...).")
@click.option("--chunk-size", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True)
def prune(older_than: timedelta, chunk_size: int) -> None:
    """Delete old rows, a chunk per transaction (safe to run from cron while the app writes)."""
    deleted = _storage("prune").prune(older_than, chunk_size=chunk_size)
    age = f"{older_than.days} days" if older_than == timedelta(days=older_than.days) else str(older_than)
    click.echo(f"deleted {deleted} rows older than {age}")


@usage.command("summary")
@click.option(
    "--by",
    type=click.Choice(SUMMARY_BY),
    default="route",
    show_default=True,
)
@click.option("--period", type=click.Choice(SUMMARY_PERIODS), default="day", show_default=True)
@click.option("--since", type=Moment(), help="Earliest time: ISO date/datetime (UTC) or a duration ago (7d).")
@click.option("--until", type=Moment(), help="Latest time: ISO date/datetime (UTC) or a duration ago.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def summary(by: str, period: str, since: datetime | None, until: datetime | None, fmt: str) -> None:
    """Hits and bytes per route (url, client, user agent, ...) per hour, day or month."""
    _check_range(since, until)
    rows = _storage("get_summary").get_summary(by=by, period=period, start_date=since, end_date=until)
    columns = ["period", by, "hits", "request_bytes", "response_bytes", "avg_speed"]
    if fmt == "json":
        click.echo(json.dumps(rows, default=_json_default, ensure_ascii=False, indent=2))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        for row in rows:
            # The grouped value (a url, a user agent...) is client-chosen: never a formula in a spreadsheet.
            key = row[by]
            writer.writerow(
                [
                    _cell(row["period"], period),
                    spreadsheet_safe(key) if isinstance(key, str) else ("" if key is None else key),
                    *(row[c] for c in columns[2:]),
                ]
            )
        return
    cells = [[_printable(_cell(row[c], period if c == "period" else None)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = {"hits", "request_bytes", "response_bytes", "avg_speed"}
    for line in [columns, *cells]:
        click.echo(
            "  ".join(
                value.rjust(widths[i]) if columns[i] in numeric else value.ljust(widths[i])
                for i, value in enumerate(line)
            ).rstrip()
        )
    if not cells:
        click.echo("(no rows)")


def _printable(text: str) -> str:
    """``text`` without control characters: a stored value must not drive the terminal (escape sequences)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _cell(value: Any, period: str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime({"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d", "month": "%Y-%m"}.get(period or "", "%c"))
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


@usage.command("forget")
@click.option("--username", help="Delete every row of this user.")
@click.option("--remote-addr", help="Delete every row from this client address (raw; anonymized as the app does).")
def forget(username: str | None, remote_addr: str | None) -> None:
    """Delete a person's rows (an erasure request), by user name and/or client address."""
    if username is None and remote_addr is None:
        raise click.UsageError("give --username, --remote-addr or both")
    _storage("forget")  # the same refusals as the other commands when there is nothing to delete from
    try:
        deleted = current_app.extensions["track_usage"].forget(username=username, remote_addr=remote_addr)
    except ErasureRefused as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"deleted {deleted} rows")
