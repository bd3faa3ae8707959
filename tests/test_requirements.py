"""requirements.txt names every third-party distribution the product imports.

A module that reaches the test environment only through requirements-dev.txt (scipy through scikit-learn, once)
passes every test and still breaks ``pip install -r requirements.txt && cxr-demo`` on a fresh machine.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def product_packages() -> list[str]:
    """The top-level packages pyproject ships (``include = ["db*", ...]``)."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.rstrip("*").split(".")[0] for pattern in patterns})


def imported_top_level_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one file (relative imports stay inside the repository)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party_imports(packages: list[str]) -> dict[str, list[str]]:
    """Third-party top-level module -> the product files that import it."""
    found: dict[str, list[str]] = {}
    for package in packages:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for module in imported_top_level_modules(path):
                if module in sys.stdlib_module_names or module in packages or module == "__future__":
                    continue
                found.setdefault(module, []).append(str(path.relative_to(REPO_ROOT)))
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed_distributions(requirements: Path) -> set[str]:
    """Distribution names of requirements.txt's requirement lines (options such as ``-e .`` are not names)."""
    names = set()
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(canonical(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line).group(0)))
    return names


def optional_extras() -> set[str]:
    """Distributions of pyproject's optional extras (``pip install -e ".[ray]"``)."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {canonical(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0))
            for requirements in pyproject["project"].get("optional-dependencies", {}).values()
            for requirement in requirements}


def module_level_imports(path: Path) -> set[str]:
    """Top-level names imported at a module's top level (not inside a function or class)."""
    names: set[str] = set()
    for node in ast.parse(path.read_bytes(), str(path)).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_third_party_module_of_the_product_is_in_requirements_txt():
    """Or in an optional extra, imported only where the extra's feature runs (inside functions), so that the
    default install imports every product module."""
    listed = listed_distributions(REPO_ROOT / "requirements.txt")
    extras = optional_extras()
    distributions = packages_distributions()
    missing = {}
    for module, files in third_party_imports(product_packages()).items():
        providers = {canonical(name) for name in distributions.get(module, [])}
        if providers & listed:
            continue
        eager = [f for f in files if module in module_level_imports(REPO_ROOT / f)]
        if not providers & extras or eager:
            missing[module] = (sorted(providers) or ["not installed here"], (eager or files)[:3])
    assert not missing, f"imported by the product but not named in requirements.txt: {missing}"


def test_the_check_sees_the_product_and_the_pins():
    # guards against a check that passes because it reads nothing
    packages = product_packages()
    assert packages == ["dashboard", "db", "model_training", "scoring"]
    modules = third_party_imports(packages)
    assert {"torch", "sqlalchemy", "streamlit", "pydicom"} <= modules.keys()
    assert "json" not in modules and "db" not in modules
    assert {"torch", "sqlalchemy", "psycopg"} <= listed_distributions(REPO_ROOT / "requirements.txt")


def test_ci_finds_the_readme_commands_it_runs():
    # .ci/run and .ci/readme_first_command.sh run these as README.md writes them
    spec = importlib.util.spec_from_file_location("readme_command", REPO_ROOT / ".ci" / "readme_command.py")
    readme_command = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readme_command)
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    first = readme_command.command_after(readme, "Run it")
    assert first.startswith("pip install -r requirements.txt && ") and " && streamlit run " in first
    assert readme_command.command_after(readme, "Test it").startswith("pip install -r requirements-dev.txt && ")
