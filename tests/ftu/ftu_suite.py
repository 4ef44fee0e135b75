"""Flask-Track-Usage 2.0.0's own test suite, run against flask-usage-otel.

The ``flask-track-usage==2.0.0`` sdist from the package index (``ftu_env.ftu_sdist``) ships
its ``test/`` folder. Its non-Mongo files are extracted into a temporary directory, changed
only where they must be (``suite_edits``: the import renamed, the local servers, a table name
of this run, SQLAlchemy 2 and Python 3.12 spellings, synchronous writes), and run with pytest
in a child process of this interpreter, so they import this package as an FTU user's code
would. Nothing of Flask-Track-Usage is kept in this repository.

Every edit must apply where it is expected to: a different test file fails loudly rather
than running unchanged.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from tests.ftu.ftu_env import ftu_sdist

RUN_TIMEOUT = 600
MONGO_FILES = frozenset({"test_storage_mongo.py", "test_summarize_mongoengine.py"})
SQL_FILES = ("test_storage_sqlalchemy.py", "test_summarize_sqlalchemy.py")
IMPORTING_FILES = ("test_include_exclude.py", "test_blueprints_include_exclude.py", "test_data.py", *SQL_FILES)


@dataclass(frozen=True)
class Edit:
    """A text change to FTU's test files: ``old`` becomes ``new`` (a regex substitution with ``regex``)."""

    files: tuple[str, ...]
    old: str
    new: str
    why: str
    regex: bool = False

    def apply(self, name: str, text: str) -> str:
        changed, count = re.subn(self.old, self.new, text) if self.regex else (text.replace(self.old, self.new), 0)
        if not self.regex:
            count = text.count(self.old)
        if count == 0:
            raise RuntimeError(f"FTU's {name} has no {self.old!r} any more (edit: {self.why})")
        return changed


def suite_edits(postgres_url: str, mariadb_url: str, table: str) -> tuple[Edit, ...]:
    """The changes made to FTU's tests, each with its reason (docs/migration.md lists them)."""
    return (
        Edit(IMPORTING_FILES, "flask_track_usage", "flask_usage_otel", "the package's new name"),
        Edit(
            ("__init__.py",),
            "self.app.config['TESTING'] = True",
            "self.app.config['TESTING'] = True\n        self.app.config['TRACK_USAGE_SYNC_WRITES'] = True",
            "rows written before the response returns, so a test reads them straight back",
        ),
        Edit(("test_data.py",), "assertEquals(", "assertEqual(", "the unittest alias Python 3.12 removed"),
        Edit(
            ("test_data.py", "test_summarize_sqlalchemy.py"),
            r"\.startswith\((['\"])werkzeug",
            r".startswith(\1Werkzeug",
            "Werkzeug 3's test client sends User-Agent Werkzeug/3.x (2.2's sent werkzeug/2.2.x)",
            regex=True,
        ),
        Edit(SQL_FILES, "import psycopg2", "import psycopg", "the PostgreSQL driver installed here (psycopg 3)"),
        Edit(("test_storage_sqlalchemy.py",), "import _mysql", "import pymysql", "the MariaDB driver installed here"),
        Edit(SQL_FILES, "sql.MetaData(bind=engine)", "sql.MetaData()", "SQLAlchemy 2: no bound MetaData"),
        Edit(SQL_FILES, "metadata.create_all()", "metadata.create_all(engine)", "SQLAlchemy 2: no bound MetaData"),
        Edit(SQL_FILES, r"select\(\[([^\]]*)\]\)", r"select(\1)", "SQLAlchemy 2: select(table)", regex=True),
        Edit(
            SQL_FILES,
            "self.storage._eng.execute(table.delete())",
            "with self.storage._eng.begin() as conn: conn.execute(table.delete())",
            "SQLAlchemy 2: statements run on a connection",
        ),
        Edit(
            SQL_FILES,
            '"postgresql+psycopg2://postgres:@localhost/track_usage_test"',
            repr(postgres_url),
            "the local PostgreSQL, in a schema of this run",
        ),
        Edit(
            ("test_storage_sqlalchemy.py",),
            '"mysql+mysqldb://travis:@localhost/track_usage_test"',
            repr(mariadb_url),
            "the local MariaDB, in a database of this run",
        ),
        Edit(SQL_FILES, "my_usage", table, "a table name of this run"),
    )


def prepare(dest: Path, edits: tuple[Edit, ...]) -> Path:
    """Extract FTU's non-Mongo test files into ``dest``/test with ``edits`` applied; returns ``dest``."""
    package = dest / "test"
    package.mkdir(parents=True)
    with tarfile.open(ftu_sdist()) as sdist:
        for member in sdist.getmembers():
            parts = Path(member.name).parts
            if len(parts) != 3 or parts[1] != "test" or not member.isfile() or parts[2] in MONGO_FILES:
                continue
            stream = sdist.extractfile(member)
            assert stream is not None
            text = stream.read().decode("utf-8")
            for edit in edits:
                if parts[2] in edit.files:
                    text = edit.apply(parts[2], text)
            (package / parts[2]).write_text(text, encoding="utf-8")
    missing = {name for edit in edits for name in edit.files} - {p.name for p in package.iterdir()}
    if missing:
        raise RuntimeError(f"FTU's sdist lacks {sorted(missing)}")
    # Its own pytest settings: this repository's pyproject.toml must not apply to FTU's tests.
    (dest / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    return dest


@dataclass(frozen=True)
class Outcome:
    """One FTU test's result: ``passed``, ``failed``, ``error`` or ``skipped``, and pytest's message."""

    result: str
    message: str


def run(suite: Path) -> tuple[dict[str, Outcome], str]:
    """Run the prepared suite with this interpreter's pytest; each test's outcome by
    ``module::Class::test`` name, and pytest's output."""
    report = suite / "report.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(suite / "pytest.ini"), f"--junitxml={report}", "-q", "test"],
        cwd=suite,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    if not report.exists():
        raise RuntimeError(f"FTU's tests did not run:\n{output[-4000:]}")
    outcomes: dict[str, Outcome] = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module_and_class = case.get("classname", "").split(".")[1:]  # "test.<module>.<Class>"
        name = "::".join([*module_and_class, case.get("name", "")])
        # A test that fails and then errors in its tearDown has two entries: the first problem counts.
        outcome = outcomes.get(name, Outcome("passed", ""))
        for child in case:
            if outcome.result == "passed" and child.tag in ("failure", "error", "skipped"):
                outcome = Outcome("failed" if child.tag == "failure" else child.tag, child.get("message", ""))
        outcomes[name] = outcome
    return outcomes, output
