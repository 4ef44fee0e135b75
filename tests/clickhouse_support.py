"""The Collector's ClickHouse exporter and Grafana's ClickHouse plugin, reproduced for the tests.

Three pieces, each copied from its source so the dashboard is tested against what runs in production:

- :data:`LOGS_TABLE_TEMPLATE`: the exporter's ``otel_logs`` DDL, verbatim in tests/data/otel_logs_table.sql.tmpl
  (opentelemetry-collector-contrib, ``exporter/clickhouseexporter/internal/sqltemplates/logs_table.sql``
  after PR #47720 of v0.151; check it against :data:`COLLECTOR_VERSION`'s tag when that changes), rendered by
  :func:`render_logs_table` as the exporter's ``renderCreateLogsTableSQL`` does.
- :func:`exporter_row`: one SDK log record as the exporter's ``pushLogsData`` inserts it (``Timestamp``
  or else ``ObservedTimestamp``, hex ids, ``service.name`` as ``ServiceName``, every attribute value
  through pdata's ``Value.AsString``).
- :func:`expand_grafana`: a panel's SQL as grafana-clickhouse-datasource sends it: ``$__conditionalAll``
  and template variables in the frontend (``CHDatasource.applyTemplateVariables``), then the backend
  macros of ``pkg/macros/macros.go``.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

COLLECTOR_VERSION = "0.162.0"
"""The otel/opentelemetry-collector-contrib image docker-compose.yml pins (tests/test_compose.py checks)."""

FULL_TEXT_SEARCH_SINCE = (26, 2)
"""The exporter writes ``text(...)`` indexes on ClickHouse 26.2 and later, bloom filters before."""

LOGS_TABLE_TEMPLATE = "".join(
    line
    for line in (Path(__file__).parent / "data" / "otel_logs_table.sql.tmpl").read_text().splitlines(True)
    if not line.startswith("-- ")
)
"""The exporter's DDL template, verbatim (tests/data/otel_logs_table.sql.tmpl says where it comes from)."""

COLUMNS = (
    *("Timestamp", "TraceId", "SpanId", "TraceFlags", "SeverityText", "SeverityNumber", "ServiceName", "Body"),
    *("ResourceSchemaUrl", "ResourceAttributes", "ScopeSchemaUrl", "ScopeName", "ScopeVersion", "ScopeAttributes"),
    *("LogAttributes", "EventName"),
)
"""The columns of the exporter's INSERT (``logs_insert.sql``), in its order."""

_INPUT_STRUCTURE = (
    "TimestampNs UInt64, TraceId String, SpanId String, TraceFlags UInt8, SeverityText String, "
    "SeverityNumber UInt8, ServiceName String, Body String, ResourceSchemaUrl String, "
    "ResourceAttributes Map(String, String), ScopeSchemaUrl String, ScopeName String, ScopeVersion String, "
    "ScopeAttributes Map(String, String), LogAttributes Map(String, String), EventName String"
)


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _ttl(hours: int) -> str:
    """The exporter's ``GenerateTTLExpr(ttl, "toDateTime(Timestamp)")``."""
    if hours == 0:
        return ""
    if hours % 24 == 0:
        return f"TTL toDateTime(Timestamp) + toIntervalDay({hours // 24})"
    return f"TTL toDateTime(Timestamp) + toIntervalHour({hours})"


def render_logs_table(
    database: str, table: str, *, server_version: tuple[int, int], ttl_hours: int, engine: str = "MergeTree()"
) -> str:
    """:data:`LOGS_TABLE_TEMPLATE` with the values the exporter fills in (no cluster)."""
    full_text = server_version >= FULL_TEXT_SEARCH_SINCE
    sql = re.sub(
        r"\n?\{\{- if \.HasFullTextSearch\}\}(.*?)\n?\{\{- else\}\}(.*?)\n?\{\{- end\}\}",
        lambda m: m[1] if full_text else m[2],
        LOGS_TABLE_TEMPLATE,
        flags=re.S,
    )
    sql = sql.replace("{{ident .Database}}", _ident(database)).replace("{{ident .TableName}}", _ident(table))
    sql = sql.replace("{{.ClusterString}}", "").replace("{{.Engine}}", engine).replace("{{.TTL}}", _ttl(ttl_hours))
    assert "{{" not in sql, sql
    return sql


# --- what the exporter inserts --------------------------------------------------------------


def as_string(value: Any) -> str:
    """pdata's ``Value.AsString``: how the exporter turns an attribute value into map text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_as_string(value)
    if isinstance(value, (bytes, bytearray)):
        import base64

        return base64.b64encode(value).decode()
    return json.dumps(list(value) if isinstance(value, (list, tuple)) else value, separators=(",", ":"))


def _float_as_string(value: float) -> str:
    """Go's ``float64AsString`` (ES6 number formatting): shortest digits, exponent outside 1e-6..1e21."""
    if math.isinf(value) or math.isnan(value):
        return "json: unsupported value: " + ("NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf"))
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        mantissa, _, exponent = repr(value).partition("e")
        sign = exponent[0] if exponent[0] in "+-" else "+"
        return f"{mantissa}e{sign}{int(exponent.lstrip('+-'))}"
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def exporter_row(readable: Any) -> dict[str, Any]:
    """One ``ReadableLogRecord`` of the SDK as the exporter's INSERT receives it (Timestamp in ns)."""
    record = readable.log_record
    resource = readable.resource
    scope = readable.instrumentation_scope
    resource_attributes = {k: as_string(v) for k, v in (resource.attributes or {}).items()}
    timestamp = record.timestamp or record.observed_timestamp
    return {
        "TimestampNs": int(timestamp),
        "TraceId": f"{record.trace_id:032x}" if record.trace_id else "",
        "SpanId": f"{record.span_id:016x}" if record.span_id else "",
        "TraceFlags": int(record.trace_flags or 0),
        "SeverityText": record.severity_text or "",
        "SeverityNumber": record.severity_number.value if record.severity_number is not None else 0,
        "ServiceName": resource_attributes.get("service.name", ""),
        "Body": "" if record.body is None else as_string(record.body),
        "ResourceSchemaUrl": resource.schema_url or "",
        "ResourceAttributes": resource_attributes,
        "ScopeSchemaUrl": (scope.schema_url or "") if scope else "",
        "ScopeName": scope.name if scope else "",
        "ScopeVersion": (scope.version or "") if scope else "",
        "ScopeAttributes": {k: as_string(v) for k, v in ((scope.attributes if scope else None) or {}).items()},
        "LogAttributes": {k: as_string(v) for k, v in (record.attributes or {}).items()},
        "EventName": record.event_name or "",
    }


def insert_rows(session: Any, table: str, rows: list[dict[str, Any]]) -> None:
    """One INSERT of ``rows`` (from :func:`exporter_row`): one part, as one exporter batch makes."""
    data = "\n".join(json.dumps(row) for row in rows).replace("\\", "\\\\").replace("'", "\\'")
    columns = ", ".join(COLUMNS)
    selected = ", ".join(["fromUnixTimestamp64Nano(TimestampNs, 'UTC')", *COLUMNS[1:]])
    session.query(
        f"INSERT INTO {table} ({columns}) SELECT {selected} FROM format(JSONEachRow, '{_INPUT_STRUCTURE}', '{data}')"
    )


# --- what Grafana sends -----------------------------------------------------------------------

ALL = "$__all"


def _macro_args(sql: str, open_paren: int) -> tuple[list[str], int]:
    """The top-level comma-separated arguments of the call whose ``(`` is at ``open_paren``; and its end."""
    depth, start, args = 0, open_paren + 1, []
    for i in range(open_paren, len(sql)):
        char = sql[i]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:i])
                return args, i + 1
        elif char == "," and depth == 1:
            args.append(sql[start:i])
            start = i + 1
    raise ValueError(f"unbalanced macro call in {sql!r}")


def _conditional_all(sql: str, variables: dict[str, Any]) -> str:
    """The plugin's ``applyConditionalAll``: the condition, or ``1=1`` when the variable is All or empty."""
    macro = "$__conditionalAll("
    while (index := sql.rfind(macro)) != -1:
        (condition, variable), end = _macro_args(sql, index + len(macro) - 1)
        name = re.search(r"(?<=\$\{)\w+(?=\})|(?<=\$)\w+", variable.strip())
        value = variables.get(name[0]) if name else None
        phrase = "1=1" if value in ("", ALL, [ALL]) else condition
        sql = sql[:index] + phrase + sql[end:]
    return sql


def _template_variables(sql: str, variables: dict[str, Any]) -> str:
    """Grafana's ``templateSrv.replace`` with the plugin's format: a list as ``'a','b'``, a value as is."""

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in variables:
            return match[0]  # $__timeFilter and friends are the backend's
        current = variables[name]
        return "'" + "','".join(current) + "'" if isinstance(current, list) else str(current)

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, sql)


def _backend_macros(sql: str, start: int, end: int, interval_s: float) -> str:
    """``pkg/macros/macros.go`` for the time range ``start``..``end`` (Unix seconds)."""

    def date(t: int) -> str:
        import datetime as dt

        return f"toDate('{dt.datetime.fromtimestamp(t, dt.timezone.utc):%Y-%m-%d}')"

    seconds = int(max(interval_s, 1))
    simple = {
        "fromTime": f"toDateTime({start})",
        "toTime": f"toDateTime({end})",
        "fromTime_ms": f"fromUnixTimestamp64Milli({start * 1000})",
        "toTime_ms": f"fromUnixTimestamp64Milli({end * 1000})",
        "interval_s": str(seconds),
    }
    with_column = {
        "timeFilter": lambda c: f"{c} >= toDateTime({start}) AND {c} <= toDateTime({end})",
        "timeFilter_ms": lambda c: (
            f"{c} >= fromUnixTimestamp64Milli({start * 1000}) AND {c} <= fromUnixTimestamp64Milli({end * 1000})"
        ),
        "dateFilter": lambda c: f"{c} >= {date(start)} AND {c} <= {date(end)}",
        "timeInterval": lambda c: f"toStartOfInterval(toDateTime({c}), INTERVAL {seconds} second)",
    }
    out, position = [], 0
    for match in re.finditer(r"\$__(\w+)", sql):
        if match.start() < position:
            continue
        name = match[1]
        out.append(sql[position : match.start()])
        if name in with_column and match.end() < len(sql) and sql[match.end()] == "(":
            args, position = _macro_args(sql, match.end())
            out.append(with_column[name](args[0].strip()))
        elif name in simple:
            out.append(simple[name])
            position = match.end()
        else:
            raise AssertionError(f"the plugin has no macro $__{name}")
    out.append(sql[position:])
    return "".join(out)


def expand_grafana(sql: str, *, start: int, end: int, interval_s: float, variables: dict[str, Any]) -> str:
    """The SQL the plugin runs for a panel over ``start``..``end`` with the dashboard's variable values."""
    sql = _conditional_all(sql, variables)
    sql = _template_variables(sql, variables)
    sql = _backend_macros(sql, start, end, interval_s)
    assert "$" not in sql, f"left unexpanded: {sql}"
    return sql
