"""The public surface: everything the docs import comes from ``flask_usage_otel`` or a documented
subpackage, every name ``__all__`` promises imports, and one thing is called ``Storage``."""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import pytest

import flask_usage_otel

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

DOCUMENTED_MODULES = {
    "flask_usage_otel",
    "flask_usage_otel.otel",  # OpenTelemetry set-up
    "flask_usage_otel.gunicorn",  # server hooks
    "flask_usage_otel.gunicorn_config",  # the ready-made gunicorn configuration
    # Flask-Track-Usage's module paths, kept so its code works with the import renamed.
    "flask_usage_otel.storage",
    "flask_usage_otel.storage.sql",
    "flask_usage_otel.storage.printer",
    "flask_usage_otel.storage.output",
    "flask_usage_otel.summarization",
}


def imported_modules(code: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return {m for m in modules if m == "flask_usage_otel" or m.startswith("flask_usage_otel.")}


def test_the_docs_import_only_from_the_package_or_a_documented_subpackage() -> None:
    found = {}
    for page in PAGES:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
            for module in imported_modules(block):
                found.setdefault(module, page.name)
    assert "flask_usage_otel" in found
    undocumented = {module: page for module, page in found.items() if module not in DOCUMENTED_MODULES}
    assert undocumented == {}


@pytest.mark.parametrize("name", flask_usage_otel.__all__)
def test_every_public_name_imports(name: str) -> None:
    assert getattr(flask_usage_otel, name) is not None


def test_erasure_refused_and_the_storage_protocol_are_public() -> None:
    from flask_usage_otel.privacy import ErasureRefused
    from flask_usage_otel.storage.base import UsageStorage

    assert flask_usage_otel.ErasureRefused is ErasureRefused
    assert flask_usage_otel.UsageStorage is UsageStorage


def test_one_thing_is_called_storage() -> None:
    from flask_usage_otel.storage import Storage  # Flask-Track-Usage's base class, at its module path

    assert "Storage" not in flask_usage_otel.__all__
    with pytest.warns(DeprecationWarning, match="UsageStorage"):
        old = flask_usage_otel.Storage  # what earlier releases called the protocol: still importable
    assert old is flask_usage_otel.UsageStorage
    assert old is not Storage
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert flask_usage_otel.storage.Storage is Storage
