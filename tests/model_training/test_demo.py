"""cxr-demo: the scoring job on a fresh machine with nothing else."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from db.engine import get_engine, read_session
from db.models import ModelVersion, Prediction
from model_training import demo

# what happens, in this order: trained, registered inactive, promoted by the demo, scored
FIRST_RUN_STEPS = ("training the synthetic demo model", "registered as model version 1 (inactive",
                   "promoted model version 1, the synthetic demo model", "cxr.score: run 1: model version 1")


def logged_in_order(log: str, steps: tuple[str, ...]) -> bool:
    positions = [log.find(step) for step in steps]
    return -1 not in positions and positions == sorted(positions)


@pytest.mark.slow
def test_demo_from_nothing_then_again(isolated_home, capsys):
    assert demo.main(["--n", "36", "--json"]) == 0
    captured = capsys.readouterr()
    first = json.loads(captured.out.strip().splitlines()[-1])
    assert logged_in_order(captured.err, FIRST_RUN_STEPS), captured.err
    assert first["scored"] == 36 and first["out_of_scope"] == 3 and first["failed"] == 6
    with read_session(get_engine()) as session:
        active = session.scalar(select(ModelVersion).where(ModelVersion.is_active))
        assert active.is_synthetic and active.name == demo.DEMO_MODEL_NAME
        assert session.scalar(select(func.count()).select_from(Prediction)) == 36
    assert (isolated_home / "models" / demo.DEMO_MODEL_NAME / "model_card.md").is_file()

    assert demo.main(["--n", "36", "--json"]) == 0  # no new data, no new training
    captured = capsys.readouterr()
    second = json.loads(captured.out.strip().splitlines()[-1])
    assert "using the active model version 1" in captured.err and "promoted" not in captured.err
    assert (second["scored"], second["skipped"], second["known_failures"]) == (0, 36, 6)
    with read_session(get_engine()) as session:
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 1
