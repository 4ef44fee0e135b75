"""The tests a page names as the proof of its promises exist: a renamed or deleted test cannot
leave a promise pointing at nothing."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("reliability.md", "privacy.md", "prometheus.md")

# `tests/a/test_b.py`, `tests/a/test_b.py::test_c`, `tests/a/test_b.py::test_c[param]`, and the
# short `::test_d` for another test of the file named last before it.
_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?(?:::(\w+)(?:\[[^\]`]*\])?)?`")


def named_tests(page: str) -> list[tuple[str, str | None]]:
    """(file, test function or None) of every test reference on ``page``, in order."""
    found: list[tuple[str, str | None]] = []
    last_file: str | None = None
    for match in _REFERENCE.finditer((ROOT / "docs" / page).read_text()):
        path, name = match.groups()
        if path is None and name is None:
            continue
        if path is not None:
            last_file = path
        assert last_file is not None, f"{page}: `::{name}` names no file before it"
        found.append((last_file, name))
    return found


@cache
def _test_functions(path: str) -> frozenset[str]:
    tree = ast.parse((ROOT / path).read_text())
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    )


@pytest.mark.parametrize("page", PAGES)
def test_every_test_a_page_names_exists(page: str) -> None:
    references = named_tests(page)
    assert len([name for _, name in references if name]) >= 5, f"{page} names the tests behind its promises"
    missing = [
        f"{path}::{name}" if name else path
        for path, name in references
        if not (ROOT / path).is_file() or (name is not None and name not in _test_functions(path))
    ]
    assert not missing, f"{page} names tests that do not exist: {missing}"


def test_the_reference_pattern_reads_every_form() -> None:
    text = "`tests/a.py::test_x[sqlite]`, `::test_y` and `tests/b.py`; `flask usage` is not one"
    assert [m.groups() for m in _REFERENCE.finditer(text) if any(m.groups())] == [
        ("tests/a.py", "test_x"),
        (None, "test_y"),
        ("tests/b.py", None),
    ]
