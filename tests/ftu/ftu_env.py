"""The reference interpreter: a virtualenv with real Flask-Track-Usage 2.0.0 (``.venv-ftu/``).

Flask-Track-Usage 2.0 cannot be imported next to this package (it needs Flask 2.2, Werkzeug
2.2, SQLAlchemy 1.4 and ``six``), so the comparison tests run it in its own interpreter. The
virtualenv is made once from ``requirements-ftu.txt`` and reused while that file is
unchanged; a lock keeps parallel test runs from building it twice.

Run as a script (``make ftu-venv``) to create it ahead of the tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("FTU_VENV", ROOT / ".venv-ftu"))
REQUIREMENTS = Path(__file__).with_name("requirements-ftu.txt")
INSTALL_TIMEOUT = 600


def ftu_python() -> Path:
    """The reference interpreter, creating its virtualenv first when missing or out of date."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = VENV / ".installed"
    python = VENV / "bin" / "python"
    if _stamp(stamp) == digest and python.exists():
        return python
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / ".venv-ftu.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _stamp(stamp) != digest or not python.exists():
            venv.EnvBuilder(clear=True, with_pip=True).create(VENV)
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                    str(REQUIREMENTS),
                ],
                check=True,
                timeout=INSTALL_TIMEOUT,
            )
            stamp.write_text(digest)
    return python


def _stamp(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


if __name__ == "__main__":
    print(ftu_python())
    sys.exit(0)
