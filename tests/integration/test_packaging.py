"""The package as users get it: ``python -m build`` gives an sdist and a wheel that ``twine check``
accepts, and the wheel installed into a fresh virtualenv runs the README's quick start.

The build takes half a minute (an isolated build environment), so the wheel is built once per
state of the sources and kept under ``build/wheel-cache/<hash of the sources>/``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import flask_usage_otel

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "wheel-cache"
QUICK_START_LINE = 'flask_usage_requests_total{blueprint="",method="GET",route="/items/<int:item_id>",status="200"} 2.0'


def sources_hash() -> str:
    digest = hashlib.sha256()
    files = [
        REPO / "pyproject.toml",
        REPO / "README.md",
        REPO / "LICENSE",
        *sorted((REPO / "flask_usage_otel").rglob("*")),
    ]
    for path in files:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def dist() -> Path:
    out = CACHE / sources_hash()
    if not (list(out.glob("*.whl")) and list(out.glob("*.tar.gz"))):
        for stale in CACHE.glob("*"):  # builds of earlier states of the sources
            shutil.rmtree(stale, ignore_errors=True)
        result = subprocess.run(
            [sys.executable, "-m", "build", "--outdir", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_twine_accepts_the_sdist_and_the_wheel(dist: Path) -> None:
    files = sorted(str(p) for p in (*dist.glob("*.whl"), *dist.glob("*.tar.gz")))
    assert len(files) == 2
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2


def test_wheel_holds_the_package_and_nothing_else(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"flask_usage_otel", wheel.name.split("-py3")[0] + ".dist-info"}
    for needed in (
        "flask_usage_otel/py.typed",
        "flask_usage_otel/gunicorn_config.py",
        "flask_usage_otel/storage/sql.py",
    ):
        assert needed in names
    metadata = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/entry_points.txt").decode()
    assert "usage = flask_usage_otel.cli:usage" in metadata  # the `flask usage` command


def test_wheel_is_the_one_the_install_instructions_name(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"flask_usage_otel-{flask_usage_otel.__version__}-py3-none-any.whl"
    for page in (REPO / "README.md", REPO / "docs" / "getting-started.md"):
        assert f'pip install "dist/{wheel.name}[sql]"' in page.read_text(), page.name


def test_wheel_in_a_fresh_virtualenv_runs_the_quick_start(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    env_dir = tmp_path / "venv"
    # No pip inside the new environment (ensurepip alone takes seconds): this pip installs into it.
    venv.EnvBuilder(with_pip=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{wheel}[sql]",  # as the install instructions say
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    readme = (REPO / "README.md").read_text()
    quick_start = re.search(r"## Quick start\n.*?```python\n(.*?)```", readme, flags=re.S).group(1)  # type: ignore[union-attr]
    script = tmp_path / "quick_start.py"
    script.write_text(quick_start)
    # Run from an empty directory, so the package comes from the wheel, not from the checkout.
    run = subprocess.run([str(python), str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert QUICK_START_LINE in run.stdout.splitlines()

    where = subprocess.run(
        [
            str(python),
            "-c",
            "import flask_usage_otel, flask_usage_otel.gunicorn_config as c; "
            "flask_usage_otel.SQLStorage('sqlite:///extra.db');"  # the [sql] extra brought SQLAlchemy
            "print(flask_usage_otel.__file__, c.bind)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert where.returncode == 0, where.stderr
    module_file, bind = where.stdout.split()
    assert Path(module_file).is_relative_to(env_dir)
    assert bind == "127.0.0.1:8000"
