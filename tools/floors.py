"""The unit and database tests on the lowest versions pyproject.toml declares (``make floors``, in ``make test``).

Every requirement in ``[project].dependencies`` and in the extras below must carry a lower
bound (``name>=X``); this script turns each into ``name==X`` in a constraints file, installs the
package with those extras into ``.venv-floors/`` under the constraints, on the Python of
``requires-python``'s floor, and runs there the unit tests and the database-backed integration
tests of ``DATABASE_TESTS`` (PostgreSQL and MariaDB on loopback, which ``make test`` has started
before; elsewhere they start them, or skip as the suite does). The floors come from pyproject.toml
alone, so a floor that is raised or lowered there is what gets tested; a requirement without a
``>=`` bound stops the run, because it has no floor to test. Packages pyproject.toml does not name
(Jinja2 through Flask, say) resolve to the newest versions the pinned ones accept.

``OVERRIDES`` holds the dev-only tools whose declared floor cannot run this suite at all, each with
why; runtime dependencies never go there (raise their floor in pyproject.toml instead).

The virtualenv is reused while the constraints, the extras and the interpreter are unchanged (a
stamp holds their digest), so a second run costs only the tests. ``--constraints`` prints the
constraints and exits; arguments after ``--`` go to pytest.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
VENV = Path(os.environ.get("FLOORS_VENV", ROOT / ".venv-floors"))
# Every extra but ``docs``: the MkDocs site build is tooling, tested on the newest versions only.
EXTRAS = ("sql", "postgres", "mysql", "otel", "geoip", "dev")
# The integration tests that run on the floors too: the storage, the writer and the Flask-Track-Usage
# comparison on real PostgreSQL and MariaDB, where the SQL dialects and drivers meet (about a minute).
# Not the gunicorn, Prometheus, packaging and dashboard ones: they drive servers and subprocesses for
# minutes, and run on the newest versions in ``make test``.
DATABASE_TESTS = (
    "tests/storage",
    "tests/test_internals_databases.py",
    "tests/ftu",
    "tests/integration/test_writer_faults.py",
    "tests/integration/test_writer_round_trips.py",
)
# The unit suite and DATABASE_TESTS, minus the tests of the repository's own tooling, which do not
# depend on the package's dependency versions: the benchmark harnesses (their figures are for the
# newest versions) and the MkDocs build. The docs' Python examples still run here, on the floors.
PYTEST_ARGS = (
    "-m",
    "not slow",
    *(f"--integration-in={path}" for path in DATABASE_TESTS),
    "-q",
    "-p",
    "no:cacheprovider",
    "--ignore=tests/test_bench_instructions.py",
    "--ignore=tests/test_benchmarks_smoke.py",
    "--ignore=tests/test_loadgen.py",
    "--deselect=tests/test_docs.py::test_site_builds_strictly",
    "--deselect=tests/test_docs.py::test_broken_link_fails_the_build",
)
INSTALL_TIMEOUT = 900

# name -> (version, why): a dev-only tool pinned above its declared floor. Empty: every floor runs.
OVERRIDES: dict[str, tuple[str, str]] = {}

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$")
_LOWER = re.compile(r">=\s*([0-9][^,\s]*)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floors(pyproject: Path = PYPROJECT, extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """Each requirement's lowest declared version, by canonical name (the highest floor wins
    when two extras name the same package)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        requirements += optional[extra]
    pinned: dict[str, str] = {}
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        lower = _LOWER.search(match.group(3)) if match else None
        if match is None or lower is None:
            raise SystemExit(f"pyproject.toml: {requirement!r} has no '>=' floor to test")
        name, version = _canonical(match.group(1)), lower.group(1)
        if name not in pinned or _key(version) > _key(pinned[name]):
            pinned[name] = version
    for name, (version, _why) in OVERRIDES.items():
        pinned[_canonical(name)] = version
    return pinned


def _key(version: str) -> tuple[int, ...]:
    # Enough ordering for floors written as plain release numbers ("1.25", "0.46b0" -> 0.46).
    return tuple(int(part) for part in re.findall(r"\d+", version.split("b")[0].split("rc")[0]))


def floor_python(pyproject: Path = PYPROJECT) -> str:
    """The interpreter of the lowest Python pyproject.toml allows: this one when it is that version,
    else ``pythonX.Y`` from PATH, else this one (with a note: the Python floor is then not tested)."""
    requires = tomllib.loads(pyproject.read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires.strip())
    if match is None:
        raise SystemExit(f"pyproject.toml: requires-python {requires!r} is not a plain '>=X.Y' floor")
    floor = (int(match.group(1)), int(match.group(2)))
    if sys.version_info[:2] == floor:
        return sys.executable
    found = shutil.which(f"python{floor[0]}.{floor[1]}")
    if found is None:
        print(f"floors: no python{floor[0]}.{floor[1]} on PATH; running on {sys.version.split()[0]}", flush=True)
    return found or sys.executable


def constraints_text(pinned: dict[str, str]) -> str:
    return "".join(f"{name}=={version}\n" for name, version in sorted(pinned.items()))


def ensure_venv(pinned: dict[str, str], base_python: str) -> Path:
    """``.venv-floors`` with the package and its extras at the floors; rebuilt when they change."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    text = constraints_text(pinned)
    digest = hashlib.sha256(f"{text}{EXTRAS}{base_python}".encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([base_python, "-m", "venv", str(VENV)], check=True)
    constraints = VENV / "constraints.txt"
    constraints.write_text(text)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", "--upgrade", "pip"], check=True, timeout=INSTALL_TIMEOUT)
    subprocess.run(
        [*pip, "install", "--quiet", "-c", str(constraints), "-e", f"{ROOT}[{','.join(EXTRAS)}]"],
        check=True,
        timeout=INSTALL_TIMEOUT,
        cwd=ROOT,
    )
    subprocess.run([*pip, "check"], check=True)
    stamp.write_text(digest)
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--constraints", action="store_true", help="print the constraints and exit")
    parser.add_argument("--rebuild", action="store_true", help="remove .venv-floors first")
    parser.add_argument("--python", help="the virtualenv's interpreter (default: the requires-python floor)")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)
    pinned = floors()
    if args.constraints:
        print(constraints_text(pinned), end="")
        return 0
    if args.rebuild:
        shutil.rmtree(VENV, ignore_errors=True)
    python = ensure_venv(pinned, args.python or floor_python())
    print(f"floors: {', '.join(f'{name}=={version}' for name, version in sorted(pinned.items()))}", flush=True)
    return subprocess.run([str(python), "-m", "pytest", *PYTEST_ARGS, *args.pytest_args], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
