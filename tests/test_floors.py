"""The lowest supported versions: pyproject.toml is their one source, the floors run and the docs agree.

The floors suite itself (``make floors``, part of ``make test``) is ``tools/floors.py``; these
tests check how it reads pyproject.toml, and that every version the README and the install
page state is the floor pyproject.toml declares.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
tomllib = pytest.importorskip("tomllib", reason="tools/floors.py reads pyproject.toml with tomllib (Python 3.11+)")
import floors  # noqa: E402

PYPROJECT = REPO / "pyproject.toml"
# The pages that state versions. Others name old releases of other projects on purpose
# (docs/migration.md: "Werkzeug 2.1 and later" stopped parsing user agents).
PAGES = ("README.md", "docs/getting-started.md", "docs/opentelemetry.md", "docs/request-lifecycle.md")
# "Flask 2.3.3", "PyMySQL 1.1", "Python 3.11": a name and a dotted version.
MENTION = re.compile(r"\b([A-Za-z][\w-]*) (\d+(?:\.\d+)+)\b")


def write_pyproject(tmp_path: Path, dependencies: list[str], extras: dict[str, list[str]]) -> Path:
    def toml_list(items: list[str]) -> str:
        return "[" + ", ".join(f'"{item}"' for item in items) + "]"

    lines = ["[project]", f"dependencies = {toml_list(dependencies)}", "[project.optional-dependencies]"]
    lines += [f"{name} = {toml_list(items)}" for name, items in extras.items()]
    path = tmp_path / "pyproject.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_each_requirement_is_pinned_at_its_lower_bound(tmp_path: Path) -> None:
    path = write_pyproject(
        tmp_path,
        ["Flask>=2.3.3", "prometheus_client >= 0.20, <1"],
        {
            "postgres": ["SQLAlchemy>=2.0.16", "psycopg[binary]>=3.1.4; python_version >= '3.10'"],
            "dev": ["sqlalchemy>=2.0.30", "opentelemetry-distro>=0.60b0"],
            "unused": ["never-installed>=9"],
        },
    )
    assert floors.floors(path, ("postgres", "dev")) == {
        "flask": "2.3.3",
        "prometheus-client": "0.20",
        "psycopg": "3.1.4",
        "sqlalchemy": "2.0.30",  # two extras name it: the higher floor is the one both accept
        "opentelemetry-distro": "0.60b0",
    }
    text = floors.constraints_text(floors.floors(path, ()))
    assert text == "flask==2.3.3\nprometheus-client==0.20\n"


@pytest.mark.parametrize("requirement", ["requests", "requests<3", "requests==2.31", "requests~=2.31"])
def test_a_requirement_without_a_floor_stops_the_run(tmp_path: Path, requirement: str) -> None:
    path = write_pyproject(tmp_path, ["flask>=2.3.3", requirement], {})
    with pytest.raises(SystemExit, match="has no '>=' floor"):
        floors.floors(path, ())


def test_every_requirement_of_this_project_has_a_floor() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    pinned = floors.floors()
    assert set(floors.EXTRAS) <= set(project["optional-dependencies"])
    for name in ("flask", "werkzeug", "prometheus-client", "sqlalchemy", "opentelemetry-sdk", "pytest"):
        assert name in pinned, name
    assert not floors.OVERRIDES or all(why for _, why in floors.OVERRIDES.values())


def test_the_versions_the_docs_state_are_the_declared_floors() -> None:
    """Every "<package> <version>" on the pages that state versions is that package's floor."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    declared = floors.floors(extras=tuple(project["optional-dependencies"]))
    declared["python"] = re.fullmatch(r">=\s*([\d.]+)", project["requires-python"]).group(1)
    declared["opentelemetry"] = declared["opentelemetry-sdk"]
    stated = [
        (page, name.lower(), version)
        for page in PAGES
        for name, version in MENTION.findall((REPO / page).read_text())
        if name.lower() in declared
    ]
    assert {name for _, name, _ in stated} >= {"python", "flask", "werkzeug", "sqlalchemy", "opentelemetry"}
    wrong = [(page, name, v, declared[name]) for page, name, v in stated if declared[name] != v]
    assert not wrong, f"(page, package, stated, pyproject.toml) that disagree: {wrong}"


def test_the_floors_run_adds_the_database_tests_and_no_other_integration_test() -> None:
    """What ``tools/floors.py`` selects: the unit tests everywhere, the integration tests only in DATABASE_TESTS."""
    assert all((REPO / path).exists() for path in floors.DATABASE_TESTS)
    args = [arg for arg in floors.PYTEST_ARGS if arg != "-q"]
    paths = ["tests/storage/test_erasure.py", "tests/integration/test_writer_fork.py", "tests/test_floors.py"]
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "--collect-only", "-q", *paths],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    ids = [line for line in listed.stdout.splitlines() if "::" in line]
    erasure = [i for i in ids if i.startswith(paths[0])]
    assert any("[sqlite" in i for i in erasure)  # a unit test
    assert any("[mariadb" in i for i in erasure)
    assert any("[postgresql" in i for i in erasure)  # integration tests in DATABASE_TESTS
    assert not [i for i in ids if i.startswith(paths[1])]  # integration tests elsewhere (gunicorn, fork)
    assert any(i.startswith(paths[2]) for i in ids)
