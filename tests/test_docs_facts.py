"""The facts the doc pages state (defaults, counts, signatures) are the code's: a change to one fails here
until the page says it too."""

from __future__ import annotations

import ast
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flask_usage_otel import SQLStorage, TrackUsage, config, configure_opentelemetry
from flask_usage_otel.config import DEFAULT_BUCKETS, DEFAULT_SIZE_BUCKETS, Settings
from flask_usage_otel.prometheus.metrics import DROP_REASONS

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
sys.path.insert(0, str(REPO / "tools"))
import docs_settings  # noqa: E402


def page(name: str) -> str:
    return (REPO / "docs" / name).read_text()


def test_the_configuration_page_in_the_repository_carries_the_generated_tables() -> None:
    text = page("configuration.md")
    assert docs_settings.fill(text) == text, "run: python tools/docs_settings.py"
    for key in (row.key for row in docs_settings.settings_rows()):
        assert f"| `{key}` |" in text, key
    for marker in (docs_settings.MARKER, docs_settings.LEGACY_MARKER, docs_settings.REMOVED_MARKER):
        assert marker.replace("<!-- ", "<!-- /") in text  # filled, not a bare marker


def test_the_generator_replaces_a_stale_table() -> None:
    stale = page("configuration.md").replace(
        "| `TRACK_USAGE_BATCH_SIZE` | `500` |", "| `TRACK_USAGE_BATCH_SIZE` | `5` |"
    )
    assert stale != page("configuration.md")
    assert docs_settings.fill(stale) == page("configuration.md")


# -- setting defaults wherever a page states one ---------------------------------------------

DEFAULTS = {config.PREFIX + suffix: getattr(Settings(), field) for suffix, (field, _) in config._KEYS.items()}
TABLE_ROW = re.compile(r"^\| `(TRACK_USAGE_[A-Z_]+)` \| ([^|]+) \|", re.M)
IN_PROSE = re.compile(r"`(TRACK_USAGE_[A-Z_]+)` \(default ([^)]+)\)")


def stated_value(text: str) -> Any:
    """A literal a page gives as a default (`10000`, 67108864 (64 MiB), `'id'`); None when it gives prose."""
    text = re.sub(r"\s*\(.*\)$", "", text.strip()).strip("`")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def test_every_setting_default_a_page_states_is_the_codes() -> None:
    checked = []
    for path in PAGES:
        text = path.read_text()
        for key, stated in [*TABLE_ROW.findall(text), *IN_PROSE.findall(text)]:
            value = stated_value(stated)
            if key not in DEFAULTS or value is None:
                continue  # "the list above", a key that is not a setting's (removed, legacy)
            actual = DEFAULTS[key]
            actual = list(actual) if isinstance(actual, tuple) else actual
            assert value == actual, f"{path.name}: {key} default {stated!r}, the code has {actual!r}"
            checked.append((path.name, key))
    pages = {name for name, _ in checked}
    assert {"configuration.md", "sql.md", "reliability.md", "prometheus.md"} <= pages, pages


# -- signatures --------------------------------------------------------------------------------

SIGNATURES: dict[str, Callable[..., Any]] = {
    "TrackUsage": TrackUsage.__init__,
    "init_app": TrackUsage.init_app,
    "SQLStorage": SQLStorage.__init__,
    "SQLStorage.forget": SQLStorage.forget,
    "configure_opentelemetry": configure_opentelemetry,
}
INLINE_CALL = re.compile(r"`(" + "|".join(re.escape(n) for n in SIGNATURES) + r")\(([^`]*)\)`")


def rendered(function: Callable[..., Any]) -> list[str]:
    """``function``'s parameters as a page writes them: ``name=default``, ``*`` before the keyword-only.

    Private ones (``_fake_time``, kept for Flask-Track-Usage's tests) are not part of what a page states."""
    items: list[str] = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.name == "self" or parameter.name.startswith("_"):
            continue
        if parameter.kind is parameter.KEYWORD_ONLY and "*" not in items:
            items.append("*")
        default = parameter.default
        items.append(parameter.name if default is parameter.empty else f"{parameter.name}={default!r}")
    return items


def test_every_signature_a_page_states_is_the_codes() -> None:
    found = set()
    for path in PAGES:
        for name, arguments in INLINE_CALL.findall(path.read_text().replace("\n", " ")):
            stated = [item.strip() for item in arguments.split(",")] if arguments.strip() else []
            expected = rendered(SIGNATURES[name])
            # A call such as `TrackUsage(app)` or `SQLStorage(conn_str="...")` is an example, not a signature.
            if not stated or stated[0] != expected[0] or (len(stated) == 1 and "=" not in stated[0]):
                continue
            assert stated == expected, f"{path.name}: {name}({', '.join(stated)}), the code: ({', '.join(expected)})"
            found.add((path.name, name))
    assert {
        ("getting-started.md", "TrackUsage"),
        ("getting-started.md", "init_app"),
        ("sql.md", "SQLStorage"),
        ("privacy.md", "SQLStorage.forget"),
        ("opentelemetry.md", "configure_opentelemetry"),
    } <= found, found


def test_storage_timeouts_in_the_reliability_table_are_the_signatures() -> None:
    defaults = inspect.signature(SQLStorage.__init__).parameters
    rows = dict(re.findall(r"^\| `(\w+_timeout)` \| ([\d.]+) s \|", page("reliability.md"), re.M))
    assert set(rows) == {"connect_timeout", "statement_timeout", "write_timeout"}
    for name, seconds in rows.items():
        assert float(seconds) == defaults[name].default, name


# -- Prometheus: buckets, drop reasons, dashboards --------------------------------------------


def test_histogram_bucket_defaults_on_the_prometheus_page() -> None:
    text = page("prometheus.md")
    low, high, count = re.search(r"`TRACK_USAGE_BUCKETS`, default ([\d.]+) … ([\d.]+), (\d+) buckets", text).groups()  # type: ignore[union-attr]
    assert (float(low), float(high), int(count)) == (DEFAULT_BUCKETS[0], DEFAULT_BUCKETS[-1], len(DEFAULT_BUCKETS))
    low, high = re.search(r"`TRACK_USAGE_SIZE_BUCKETS`, default (\d+) B … (\d+) MB", text).groups()  # type: ignore[union-attr]
    assert (int(low), int(high) * 1_000_000) == (DEFAULT_SIZE_BUCKETS[0], DEFAULT_SIZE_BUCKETS[-1])


def test_drop_reasons_on_the_prometheus_page() -> None:
    row = re.search(r"^\| `flask_usage_storage_dropped_total` \|.*\| reason: (.*) \(", page("prometheus.md"), re.M)
    assert row is not None
    assert tuple(re.findall(r"`(\w+)`", row.group(1))) == DROP_REASONS


NUMBERS = {"One": 1, "Two": 2, "Three": 3, "Four": 4, "Five": 5, "Six": 6}


@pytest.mark.parametrize("name", ["prometheus.md"])
def test_the_dashboards_a_page_counts_are_the_repositorys(name: str) -> None:
    text = page(name)
    word = re.search(r"(\w+) dashboards in `grafana/dashboards/`", text).group(1)  # type: ignore[union-attr]
    dashboards = sorted(p.name for p in (REPO / "grafana" / "dashboards").glob("*.json"))
    assert NUMBERS[word] == len(dashboards), dashboards
    for dashboard in dashboards:
        assert f"`{dashboard}`" in text, dashboard
