"""The documentation site builds with MkDocs, warnings as errors (mkdocs.yml: strict, every internal link and
anchor checked), and every page is reachable from its navigation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_without_a_warning(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr[-3000:]
    for page in ("index.html", "benchmarks/index.html", "RELIABILITY/index.html", "SECURITY/index.html"):
        assert (tmp_path / page).is_file(), page


def test_every_page_is_in_the_navigation():
    config = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = {next(iter(entry.values())) for entry in config["nav"]}
    pages = {path.name for path in (REPO_ROOT / "docs").glob("*.md")}
    assert pages == listed


def test_a_broken_link_fails_the_build(tmp_path):
    """Guards the check above: the same configuration refuses a page that links to nothing."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [a page that is not there](missing.md).\n")
    config = tmp_path / "mkdocs.yml"
    original = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    config.write_text(yaml.safe_dump({**original, "docs_dir": str(docs), "nav": [{"Home": "index.md"}],
                                      "exclude_docs": ""}))
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config),
                             "--site-dir", str(tmp_path / "site")], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "missing.md" in result.stderr
