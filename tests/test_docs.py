"""The documentation builds with MkDocs in strict mode (a broken link or a page missing from the
navigation fails), and its generated pages (configuration, benchmarks, API reference) are current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_generated_pages_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_docs.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_documentation_builds_in_strict_mode(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    pages = {
        path.relative_to(tmp_path / "site").as_posix() for path in (tmp_path / "site").rglob("index.html")
    }
    assert {"index.html", "configuration/index.html", "reference/openapi/index.html"} <= pages
