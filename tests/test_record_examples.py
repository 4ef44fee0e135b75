"""Documented examples build ``UsageRecord`` by keyword: 24 positional values are unreadable and
break silently when a field is added."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def record_calls(code: str) -> list[ast.Call]:
    """Every ``UsageRecord(...)`` call in ``code``."""
    return [
        node
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Call)
        and (getattr(node.func, "id", None) == "UsageRecord" or getattr(node.func, "attr", None) == "UsageRecord")
    ]


def test_record_calls_are_found_and_positional_ones_told_apart() -> None:
    assert len(record_calls("UsageRecord(1.0, 0.1)\nflask_usage_otel.UsageRecord(timestamp=1.0)\n")) == 2
    assert record_calls("UsageRecord(1.0)")[0].args
    assert not record_calls("UsageRecord(timestamp=1.0)")[0].args


def test_documented_records_are_built_by_keyword() -> None:
    calls = {
        f"{page.name}:{call.lineno}": len(call.args)
        for page in PAGES
        for code in FENCE.findall(page.read_text(encoding="utf-8"))
        for call in record_calls(code)
    }
    assert calls, "no documented example builds a UsageRecord any more: this test has nothing to check"
    assert {where: n for where, n in calls.items() if n} == {}
