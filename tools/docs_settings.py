"""The configuration reference, generated from ``flask_usage_otel.config`` when the docs are built.

The keys, their order, their defaults and the values each accepts come from the code:
the key table ``config._KEYS``, the ``Settings`` dataclass defaults, and each key's
parser (fed a value no parser accepts, it answers with what it does accept). A key
added to config.py appears in the reference without touching the docs. Only the one-line
meaning of each key is prose, in ``MEANINGS`` below; a key without one is listed with
"(not described yet)", and ``tests/test_docs.py`` fails until it has one.

The tables are in docs/configuration.md itself, between ``<!-- settings-table -->`` and
``<!-- /settings-table -->`` (and likewise for the other two), so the page reads the same in
the repository as on the site. ``python tools/docs_settings.py`` writes them there after a
change to config.py, and ``tests/test_docs_facts.py`` fails until it has been run. As a MkDocs
hook (``hooks:`` in mkdocs.yml) it puts the tables fresh from the code in the built page,
without the markers. The tests also use :func:`settings_rows`.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "<!-- settings-table -->"
LEGACY_MARKER = "<!-- legacy-settings-table -->"
REMOVED_MARKER = "<!-- removed-settings-table -->"
UNDESCRIBED = "(not described yet)"

# What each key is for, in a line. Everything else in the table is derived from the code.
MEANINGS: dict[str, str] = {
    "TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS": (
        '`"exclude"`: track every view but the excluded ones; `"include"`: only the included ones'
    ),
    "TRACK_USAGE_EXCLUDE_PATHS": "regular expressions; a request whose path fully matches one is not tracked",
    "TRACK_USAGE_METRICS_PREFIX": "prefix of every Prometheus metric name",
    "TRACK_USAGE_BUCKETS": "bounds of the latency histogram, in seconds",
    "TRACK_USAGE_SIZE_BUCKETS": "bounds of the response size histogram, in bytes",
    "TRACK_USAGE_PROMETHEUS": "record Prometheus metrics",
    "TRACK_USAGE_METRICS_PATH": "where the metrics are served; `None` serves none",
    "TRACK_USAGE_METRICS_AUTH": "who may read the metrics: a bearer token, a `(user, password)` pair, or a callable",
    "TRACK_USAGE_METRICS_CONST_LABELS": (
        'labels with fixed values added to every metric (`{"service": "shop"}`); prefer target labels'
    ),
    "TRACK_USAGE_EXCLUDE_SYNTHETIC": (
        'synthetic traffic not tracked at all: `("test",)` leaves out health probes, `("bot", "test")` crawlers too'
    ),
    "TRACK_USAGE_EXCEPTION_LABEL_LIMIT": "distinct `exception` label values before later ones become `_OTHER`",
    "TRACK_USAGE_CAPTURE_USER": 'which user id a row keeps: `"id"`, `"off"`, or a callable returning the id',
    "TRACK_USAGE_ANONYMIZE_IP": "keep client addresses truncated to their network, or as a keyed hash",
    "TRACK_USAGE_ANONYMIZE_IP_KEY": 'secret key of the `"hash"` anonymisation',
    "TRACK_USAGE_GEOIP_DB": "path of a local MaxMind-format database that fills `ip_info`",
    "TRACK_USAGE_QUEUE_SIZE": "rows the storage writer may hold; more are dropped and counted",
    "TRACK_USAGE_BATCH_SIZE": "rows per INSERT; a full batch is written at once",
    "TRACK_USAGE_FLUSH_INTERVAL": "seconds a row may wait for its batch to fill",
    "TRACK_USAGE_SYNC_WRITES": "write each row on the request thread instead (tests and scripts)",
    "TRACK_USAGE_OTEL": "OpenTelemetry server spans: on, off, or `None` to decide from the environment",
    "TRACK_USAGE_OTEL_METRICS": "also record the OpenTelemetry HTTP server metrics",
    "TRACK_USAGE_OTEL_CAPTURE_USER": "put `enduser.id` on spans",
    "TRACK_USAGE_OTEL_EXPORTER": "set up a tracer provider exporting this way when the app has none",
    "TRACK_USAGE_REDACT_QUERY_PARAMS": "query parameters whose values are redacted in rows, spans and logs",
    "TRACK_USAGE_REDACT_VIEW_ARGS": "URL variables (`/reset/<token>`) whose values are redacted everywhere",
    "TRACK_USAGE_QUEUE_BYTES": "most bytes the waiting rows may hold; more are dropped and counted",
    "TRACK_USAGE_BATCH_LINGER": "seconds the writer waits for a partial batch to fill",
    "TRACK_USAGE_OTEL_LOGS": "emit each tracked request's record as an OpenTelemetry log record",
    "TRACK_USAGE_OTEL_LOGS_HEADERS": (
        "log records also carry the headers `OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*` put on spans"
    ),
}
# A meaning for a key config.py does not have (yet, or any more) is simply not shown.


@dataclass(frozen=True)
class SettingRow:
    key: str
    default: str
    accepts: str
    meaning: str


class _Unacceptable:
    """A value no parser takes: the error it raises tells what the parser does take."""

    def __repr__(self) -> str:
        return "<probe>"


def _accepts(key: str, parse: Any) -> str:
    from flask_usage_otel.config import ConfigError

    try:
        parse(key, _Unacceptable())
    except ConfigError as exc:
        text = re.sub(r", got .*$", "", str(exc).removeprefix(f"{key}: ")).removeprefix("must be ").strip()
    else:
        return "any value (see the guide)"
    try:
        parse(key, None)
    except ConfigError:
        return text
    return text if "None" in text else f"{text}, or None"


def _default(value: Any) -> str:
    if isinstance(value, tuple):
        value = [int(v) if isinstance(v, float) and v.is_integer() else v for v in value]
    return f"`{value!r}`".replace("|", "\\|")


def settings_rows() -> list[SettingRow]:
    """One row per ``TRACK_USAGE_*`` key that config.py validates, in its order."""
    from flask_usage_otel import config

    defaults = {f.name: f.default for f in dataclasses.fields(config.Settings)}
    rows = []
    for suffix, (field_name, parse) in config._KEYS.items():
        key = config.PREFIX + suffix
        rows.append(
            SettingRow(
                key=key,
                default=_default(defaults[field_name]),
                accepts=_accepts(key, parse).replace("|", "\\|"),
                meaning=MEANINGS.get(key, UNDESCRIBED),
            )
        )
    return rows


def legacy_keys() -> list[str]:
    """Flask-Track-Usage's keys that are accepted for compatibility."""
    from flask_usage_otel import config

    return sorted(config.PREFIX + k for k in config._LEGACY_KEYS)


def removed_keys() -> dict[str, str]:
    """Keys that no longer exist, each with what to do instead (config.py refuses them)."""
    from flask_usage_otel import config

    removed: dict[str, str] = getattr(config, "_REMOVED_KEYS", {})
    return {config.PREFIX + suffix: message for suffix, message in sorted(removed.items())}


def settings_table() -> str:
    lines = ["| key | default | accepts | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{r.key}` | {r.default} | {r.accepts} | {r.meaning} |" for r in settings_rows()]
    return "\n".join(lines)


def legacy_table() -> str:
    return "\n".join(f"- `{key}`" for key in legacy_keys())


def removed_table() -> str:
    removed = removed_keys()
    if not removed:
        return "None at present."
    return "\n".join(f"- `{key}`: {message}" for key, message in removed.items())


def _regions() -> list[tuple[str, Callable[[], str]]]:
    return [(MARKER, settings_table), (LEGACY_MARKER, legacy_table), (REMOVED_MARKER, removed_table)]


def _region_re(marker: str) -> re.Pattern[str]:
    """``marker``, then what was generated last time up to its closing marker (if there is one yet)."""
    closing = marker.replace("<!-- ", "<!-- /")
    return re.compile(re.escape(marker) + r"(?:\n.*?\n" + re.escape(closing) + ")?", flags=re.S)


def fill(markdown: str, *, keep_markers: bool = True) -> str:
    """``markdown`` with each marked table generated anew from config.py."""
    for marker, render in _regions():
        closing = marker.replace("<!-- ", "<!-- /")
        # Blank lines around the table: on GitHub an HTML comment's block ends only at one.
        text = f"{marker}\n\n{render()}\n\n{closing}" if keep_markers else render()
        markdown = _region_re(marker).sub(lambda _, text=text: text, markdown)  # taken as is: it holds "\\|"
    return markdown


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: the generated tables where the page asks for them, without the markers."""
    return fill(markdown, keep_markers=False)


PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

if __name__ == "__main__":  # python tools/docs_settings.py: write the tables into docs/configuration.md
    sys.path.insert(0, str(PAGE.parent.parent))
    before = PAGE.read_text()
    after = fill(before)
    PAGE.write_text(after)
    print(f"{PAGE.name}: {'updated' if after != before else 'already up to date'}")
