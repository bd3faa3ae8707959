"""The documentation site builds with MkDocs, warnings as errors (mkdocs.yml: strict, every internal link and
anchor checked), every page is reachable from its navigation, and the guides' shell commands run on the embedded
default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_without_a_warning(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr[-3000:]
    for page in ("index.html", "reading/index.html", "running/index.html", "models/index.html", "benchmarks/index.html",
                 "RELIABILITY/index.html", "SECURITY/index.html"):
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


# --- the guides' commands ------------------------------------------------------------------------------------

# In this order, on one state folder: an administrator installs and runs the demo first, an ML engineer retrains on
# that site, a reader reads it.
GUIDES = ("running.md", "models.md", "reading.md")
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}
NOT_RUN = re.compile(r"^<!-- not run by the tests: (?P<reason>\S.*?) -->$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>[\w+-]*)\s*$")


@dataclass(frozen=True)
class ShellBlock:
    where: str  # guide:line of the opening fence
    language: str
    code: str
    not_run_because: str | None


def shell_blocks(guide: Path) -> list[ShellBlock]:
    """The fenced blocks of a shell language in ``guide``, each with the reason it is not run when the line before
    its fence is a ``<!-- not run by the tests: REASON -->`` comment."""
    lines = guide.read_text(encoding="utf-8").splitlines()
    blocks, n = [], 0
    while n < len(lines):
        opening = FENCE.match(lines[n])
        if not opening or not opening["language"]:
            n += 1
            continue
        indent, start = len(opening["indent"]), n
        n += 1
        body = []
        while n < len(lines) and not re.match(r"^\s*```\s*$", lines[n]):
            body.append(lines[n][indent:])
            n += 1
        n += 1
        if opening["language"] in SHELL_LANGUAGES:
            before = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
            skip = NOT_RUN.match(before)
            blocks.append(ShellBlock(f"{guide.name}:{start + 1}", opening["language"], "\n".join(body) + "\n",
                                     skip["reason"] if skip else None))
    return blocks


def run_blocks(blocks: list[ShellBlock], env: dict[str, str], cwd: Path) -> list[str]:
    """Runs each block that is not marked otherwise, in order, with bash -euo pipefail; the failures, described."""
    failures = []
    for block in blocks:
        if block.not_run_because:
            continue
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=900, check=False)
        if done.returncode != 0:
            failures.append(f"{block.where} exited {done.returncode}:\n{block.code}{done.stderr[-2000:]}")
    return failures


def guide_environment(home: Path) -> dict[str, str]:
    """A new site's: the embedded default (SQLite in a fresh CXR_HOME), this environment's commands first."""
    env = {k: v for k, v in os.environ.items() if k not in ("CXR_DB_URL", "CXR_PSEUDONYM_KEY")}
    env["CXR_HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_every_guide_command_is_bash_and_run_or_says_why_not():
    blocks = [block for guide in GUIDES for block in shell_blocks(REPO_ROOT / "docs" / guide)]
    assert {block.language for block in blocks} == {"bash"}, "write shell commands as ```bash, which the tests run"
    run = [block for block in blocks if not block.not_run_because]
    assert len(run) >= 15, [block.where for block in run]  # guards the parser: the guides hold many commands
    for block in blocks:
        assert block.code.strip(), block.where
    # the other pages' commands are not run, so each must say why (a new guide belongs in GUIDES)
    others = [block for page in sorted((REPO_ROOT / "docs").glob("*.md")) if page.name not in GUIDES
              for block in shell_blocks(page)]
    assert others and all(block.not_run_because for block in others), [b.where for b in others]


@pytest.mark.slow
@pytest.mark.timeout(900)  # the demo's training and a retraining: about 2.5 minutes on two quiet cores
def test_the_guides_commands_run_on_the_embedded_default(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = guide_environment(tmp_path / "home")
    failures = run_blocks([block for guide in GUIDES for block in shell_blocks(REPO_ROOT / "docs" / guide)],
                          env, work)
    assert not failures, "\n\n".join(failures)


def test_a_failing_guide_command_is_reported_and_a_marked_one_is_not_run(tmp_path):
    """Guards the check above: a block that fails is reported with its place; a marked block is never run."""
    guide = tmp_path / "guide.md"
    guide.write_text("# A guide\n\n```bash\ntouch ran\n```\n\n<!-- not run by the tests: needs a PACS -->\n"
                     "```bash\ntouch must-not-run\n```\n\n1. A step:\n\n    ```bash\n    echo one | grep -q two\n"
                     "    ```\n\n```text\nnot a command\n```\n")
    blocks = shell_blocks(guide)
    assert [(b.where, b.not_run_because) for b in blocks] == [
        ("guide.md:3", None), ("guide.md:8", "needs a PACS"), ("guide.md:14", None)]
    failures = run_blocks(blocks, guide_environment(tmp_path / "home"), tmp_path)
    assert (tmp_path / "ran").exists() and not (tmp_path / "must-not-run").exists()
    assert len(failures) == 1 and failures[0].startswith("guide.md:14 exited 1")


def _slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (its toc extension's default)."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[-\s]+", "-", text).strip("-")


def test_the_readmes_links_lead_somewhere():
    """The README is read on the forge, outside the site: each relative link names a file, and an anchor into a
    guide names one of its headings."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link for link in links if not re.match(r"^[a-z]+://", link)]
    assert len(local) >= 8, local
    for link in local:
        path, _, anchor = link.partition("#")
        target = REPO_ROOT / path
        assert target.is_file(), link
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.MULTILINE)
            assert anchor in {_slug(h) for h in headings}, link
