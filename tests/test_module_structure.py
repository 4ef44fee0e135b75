"""The package's import graph: no module imports another that (directly or not) imports it,
and every module can be imported on its own, first, in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "flask_usage_otel"


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports when it is loaded, including ``TYPE_CHECKING`` imports.

    Imports inside functions are left out: they run later, once every module is loaded,
    which is how optional parts stay optional. ``TYPE_CHECKING`` imports are kept: a cycle
    there is still two modules that each need the other.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for statement in statements:
            if isinstance(statement, ast.If | ast.Try):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(statement, block, []))
                for handler in getattr(statement, "handlers", []):
                    visit(handler.body)
            elif isinstance(statement, ast.Import):
                found.update(alias.name for alias in statement.names if alias.name in modules)
            elif isinstance(statement, ast.ImportFrom):
                if statement.level:
                    base = package.split(".")[: len(package.split(".")) - statement.level + 1]
                    module = ".".join(base + ([statement.module] if statement.module else []))
                else:
                    module = statement.module or ""
                if module not in modules:
                    continue
                for alias in statement.names:
                    # ``from .pkg import submodule`` imports the submodule; ``from .pkg import name``, the package.
                    submodule = f"{module}.{alias.name}"
                    found.add(submodule if submodule in modules else module)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    found.discard(name)
    return found


def import_cycles(root: Path) -> list[list[str]]:
    """Every elementary import cycle among the modules of the package at ``root`` (each listed once)."""
    modules = package_modules(root)
    graph = {name: import_edges(name, path, modules) for name, path in modules.items()}
    cycles: set[tuple[str, ...]] = set()

    def walk(node: str, stack: list[str], on_stack: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in on_stack:
                cycle = stack[stack.index(nxt) :]
                first = cycle.index(min(cycle))
                cycles.add(tuple(cycle[first:] + cycle[:first]))
            elif len(stack) < len(graph):
                walk(nxt, [*stack, nxt], on_stack | {nxt})

    for start in sorted(graph):
        walk(start, [start], {start})
    return [list(cycle) for cycle in sorted(cycles)]


def test_the_package_has_no_import_cycle() -> None:
    assert package_modules(PACKAGE).keys() >= {"flask_usage_otel.record", "flask_usage_otel.sinks"}
    assert import_cycles(PACKAGE) == []


def test_record_and_sinks_import_in_one_direction() -> None:
    modules = package_modules(PACKAGE)
    edges = {name: import_edges(name, modules[name], modules) for name in modules}
    assert "flask_usage_otel.record" in edges["flask_usage_otel.sinks"]
    assert "flask_usage_otel.sinks" not in edges["flask_usage_otel.record"]


def test_the_writer_knows_no_sink_metric_library_or_database() -> None:
    modules = package_modules(PACKAGE)
    writer = {name: path for name, path in modules.items() if name.startswith("flask_usage_otel.writer")}
    assert len(writer) == 3
    for name, path in writer.items():
        assert all(edge.startswith("flask_usage_otel.writer") for edge in import_edges(name, path, modules)), name
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.ImportFrom) and not node.level
        }
        assert imported <= set(sys.stdlib_module_names), (name, imported - set(sys.stdlib_module_names))


def test_the_record_knows_no_sink_or_target() -> None:
    modules = package_modules(PACKAGE)
    edges = import_edges("flask_usage_otel.record", modules["flask_usage_otel.record"], modules)
    assert edges <= {
        "flask_usage_otel.columns",
        "flask_usage_otel.privacy",
        "flask_usage_otel.request_text",
        "flask_usage_otel.useragent",
        "flask_usage_otel.geoip",
    }


def test_cycle_detection_finds_cycles(tmp_path: Path) -> None:
    """The detector above sees a cycle through a subpackage, a TYPE_CHECKING one, and none where there is none."""
    pkg = tmp_path / "demo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import A\n")
    (pkg / "a.py").write_text("from .sub.b import B\nA = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\nB = 2\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import D\n")
    (pkg / "d.py").write_text("from .c import *\nD = 3\n")
    (pkg / "e.py").write_text("def late():\n    from .a import A\n")
    (pkg / "f.py").write_text("from . import e\n")
    assert import_cycles(pkg) == [["demo.a", "demo.sub.b"], ["demo.c", "demo.d"]]


# Runs in a fresh interpreter: third-party packages are loaded once up front (their import
# order is not this package's concern), then each module is imported first, alone, in a
# forked child that has loaded nothing of the package.
_IMPORT_EACH_ALONE = """
import importlib, json, os, sys, traceback
import flask, werkzeug, prometheus_client, click, sqlalchemy  # noqa: F401
assert not any(m == "flask_usage_otel" or m.startswith("flask_usage_otel.") for m in sys.modules)
failures = {}
for name in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            message = ""
        except BaseException:
            message = traceback.format_exc()
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if message or status:
        failures[name] = message or f"child exited with status {status}"
print(json.dumps(failures))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_every_module_imports_alone_in_a_fresh_interpreter(tmp_path: Path) -> None:
    names = sorted(package_modules(PACKAGE))
    assert len(names) > 30
    env = {"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH_ALONE, json.dumps(names)],
        cwd=PACKAGE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {}


# Being split by the storage restructure (issue 14); drop it from here once that is merged.


def test_modules_stay_short() -> None:
    lengths = {
        str(path.relative_to(PACKAGE.parent)): len(path.read_text(encoding="utf-8").splitlines())
        for path in package_modules(PACKAGE).values()
    }
    assert lengths["flask_usage_otel/lifecycle.py"] > 100  # the lengths are real
    # Every use of another library's private parts lives in one module, by design: one place to
    # look when a library changes. It may run longer than the rest, not without bound.
    limits = {"flask_usage_otel/internals.py": 650}
    assert {name: n for name, n in lengths.items() if n > limits.get(name, 450)} == {}
