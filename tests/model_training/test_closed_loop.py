"""``benchmarks/closed_loop.py --quick``: the whole loop (train v1, score, simulated reviews through the
dashboard's db function, retrain with --include-reviews, evaluate --compare, learning curve) on tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture
def cxr_adult(shared_data: Path) -> Path:
    folder = shared_data / "cxr-adult"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"{folder} not found")
    return folder


@pytest.mark.slow
def test_quick_closed_loop_writes_every_figure(tmp_path, cxr_dev, cxr_adult):
    out = tmp_path / "loop.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "closed_loop.py"), "--quick", "--dev", str(cxr_dev),
               "--adult", str(cxr_adult), "--out", str(out), "--work", str(tmp_path / "work")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    run = results["runs"][0]
    assert run["evaluation"].get("normal") is None and run["reviewed"]["normal"] == 1  # the normal is reviewed
    default = run["recipes"]["default"]
    assert default["reviews"]["reviews"] == sum(run["reviewed"].values())
    assert 0 < default["reviews"]["flagged"] <= default["reviews"]["reviews"]
    evaluation = default["evaluation"]
    for side in ("v1", "v2"):
        interval = evaluation[side]["auroc_covid_vs_pneumonia"]
        assert interval["low"] <= interval["estimate"] <= interval["high"]
        assert evaluation[side]["auroc_normal"]["estimate"] is None  # no normal to rank in the evaluation part
        assert sum(site["n"] for site in evaluation[side]["per_site"].values()) == sum(run["evaluation"].values())
    difference = evaluation["difference"]["balanced_accuracy"]
    assert difference["estimate"] == pytest.approx(evaluation["v2"]["balanced_accuracy"]["estimate"]
                                                   - evaluation["v1"]["balanced_accuracy"]["estimate"])
    assert {(p["order"], p["reviews"]) for p in results["curve"]} == {("uncertainty", 6), ("random", 6),
                                                                     ("all", sum(run["reviewed"].values()))}
    card = json.loads((tmp_path / "work" / "seed0" / "v2-default" / "model_card.json").read_text())
    assert card["config"]["recipe"]["from_active"] is True and "v1" in card["config"]["recipe"]["initial_weights"]
    printed = done.stdout
    assert "covid/pneu AUROC" in printed and "learning curve" in printed
