"""The reference interpreter: a virtualenv with real Flask-Track-Usage 2.0.0 (``.venv-ftu/``), and its sdist.

Flask-Track-Usage 2.0 cannot be imported next to this package (it needs Flask 2.2, Werkzeug
2.2, SQLAlchemy 1.4 and ``six``), so the comparison tests run it in its own interpreter. The
virtualenv is made once from ``requirements-ftu.txt`` and reused while that file is
unchanged; a lock keeps parallel test runs from building it twice.

Run as a script (``make ftu-venv``) to create it ahead of the tests.

The sdist (``ftu_sdist``) carries Flask-Track-Usage's own test suite, which ``ftu_suite.py``
runs against this package; it is downloaded from the package index into ``build/ftu-sdist/``
and checked against its known digest.
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
SDIST_DIR = ROOT / "build" / "ftu-sdist"
SDIST_NAME = "Flask-Track-Usage-2.0.0.tar.gz"
SDIST_SHA256 = "798b6c08bd84748e8aeb772fac2a4b07e70cc33313f1b10318f19f658ae3e641"


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


def ftu_sdist() -> Path:
    """Flask-Track-Usage 2.0.0's source distribution from the package index, downloaded once."""
    sdist = SDIST_DIR / SDIST_NAME
    if not _digest_matches(sdist):
        SDIST_DIR.mkdir(parents=True, exist_ok=True)
        with open(SDIST_DIR / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _digest_matches(sdist):
                sdist.unlink(missing_ok=True)
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "download",
                        "--quiet",
                        "--disable-pip-version-check",
                        "--no-deps",
                        "--no-binary",
                        ":all:",
                        "flask-track-usage==2.0.0",
                        "-d",
                        str(SDIST_DIR),
                    ],
                    check=True,
                    timeout=INSTALL_TIMEOUT,
                )
                if not _digest_matches(sdist):
                    raise RuntimeError(f"{sdist} is not the Flask-Track-Usage 2.0.0 sdist (sha256 differs)")
    return sdist


def _digest_matches(path: Path) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == SDIST_SHA256
    except OSError:
        return False


def _stamp(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


if __name__ == "__main__":
    print(ftu_python())
    print(ftu_sdist())
    sys.exit(0)
