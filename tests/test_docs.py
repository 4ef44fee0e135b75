"""The documentation stays true: it builds strictly, its examples run, its settings are the code's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flask_usage_otel import config

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
sys.path.insert(0, str(REPO / "tools"))
import docs_settings  # noqa: E402

# Every ```python block is an example a reader may paste: each one runs.
FENCE = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)
EXAMPLES = [(page, n, code) for page in PAGES for n, code in enumerate(FENCE.findall(page.read_text()))]


def test_there_are_examples_to_run() -> None:
    pages_with_examples = {page.name for page, _, _ in EXAMPLES}
    assert {"README.md", "getting-started.md", "sql.md", "prometheus.md"} <= pages_with_examples


@pytest.mark.parametrize("code", [code for _, _, code in EXAMPLES], ids=[f"{page.name}-{n}" for page, n, _ in EXAMPLES])
def test_example_runs(code: str, tmp_path: Path) -> None:
    # A fresh interpreter in an empty directory per block: each example starts from nothing, like a reader's.
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS_", "OTEL_", "TRACK_USAGE_"))}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_quick_start_prints_what_the_docs_say(tmp_path: Path) -> None:
    # The README and Getting started show the quick start and then a line of its output: it must be there.
    for page in (REPO / "README.md", DOCS / "getting-started.md"):
        text = page.read_text()
        quick_start = text.split("## Quick start", 1)[1]
        code = FENCE.search(quick_start).group(1)  # type: ignore[union-attr]
        shown = re.search(r"```text\n(.*?)```", quick_start, flags=re.S).group(1).strip()  # type: ignore[union-attr]
        script = tmp_path / "quick_start.py"
        script.write_text(code)
        out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert shown in out.stdout.splitlines(), page.name
        assert "/healthz" not in out.stdout  # the excluded request is counted nowhere


def test_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (make test installs it)")
    site = tmp_path / "site"
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (site / "configuration" / "index.html").read_text()
    for key in config.KNOWN_KEYS:  # generated from the code: every key, none copied by hand
        assert f"<code>{key}</code>" in reference, key
    assert docs_settings.MARKER not in reference


def test_broken_link_fails_the_build(tmp_path: Path) -> None:
    # Strict mode is what makes the build a check: prove a dead link is caught, on a copy of the docs.
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copytree(REPO / "tools", tmp_path / "tools")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with (tmp_path / "docs" / "index.md").open("a") as page:
        page.write("\nSee [nowhere](no-such-page.md).\n")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0
    assert "no-such-page.md" in result.stdout + result.stderr


def test_every_setting_is_described() -> None:
    rows = docs_settings.settings_rows()
    keys = {row.key for row in rows}
    assert keys == {config.PREFIX + suffix for suffix in config._KEYS}
    undescribed = sorted(row.key for row in rows if row.meaning == docs_settings.UNDESCRIBED)
    assert not undescribed, f"add a one-line meaning to MEANINGS in tools/docs_settings.py for: {undescribed}"


def test_reference_is_derived_from_the_code() -> None:
    by_key = {row.key: row for row in docs_settings.settings_rows()}
    assert by_key["TRACK_USAGE_QUEUE_SIZE"].default == f"`{config.Settings().queue_size!r}`"
    assert by_key["TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS"].accepts == "one of 'include', 'exclude'"
    assert by_key["TRACK_USAGE_OTEL"].accepts.endswith("or None")
    listed = {*by_key, *docs_settings.legacy_keys(), *docs_settings.removed_keys()}
    assert listed == set(config.KNOWN_KEYS)  # every key config.py knows is on the page, once


def test_readme_is_short_and_every_page_is_in_the_nav() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 250
    nav = (REPO / "mkdocs.yml").read_text()
    for page in DOCS.glob("*.md"):
        assert f" {page.name}\n" in nav, page.name
