"""The scorer's tests stand without the training package: the DICOM encoders and phantoms they need live in
``scoring`` (or the tests' own helpers), so a change to training can never break a scoring test by accident."""

from __future__ import annotations

import ast
from pathlib import Path

SCORING_TESTS = Path(__file__).parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_scoring_test_imports_model_training() -> None:
    files = sorted(SCORING_TESTS.glob("*.py"))
    assert len(files) > 10
    offenders = {path.name: sorted(name for name in imported_modules(path) if name.split(".")[0] == "model_training")
                 for path in files}
    assert {name: modules for name, modules in offenders.items() if modules} == {}
