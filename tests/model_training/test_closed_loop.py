"""``benchmarks/closed_loop.py --quick``: the whole loop (train v1, score, simulated reviews through the
dashboard's db function, retrain with --include-reviews, evaluate --compare, learning curve) on tiny sizes, then
``benchmarks/review_calibration.py`` on its working folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_quick_closed_loop_writes_every_figure(tmp_path, cxr_dev, cxr_adult):
    out = tmp_path / "loop.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "closed_loop.py"), "--quick", "--dev", str(cxr_dev),
               "--adult", str(cxr_adult), "--out", str(out), "--work", str(tmp_path / "work")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    run = results["runs"][0]
    assert len(run["folds"]) == 2
    for fold in run["folds"]:  # the normal is reviewed in every fold, never evaluated
        assert fold["reviewed"]["normal"] == 1 and "normal" not in fold["evaluation"]
    assert run["evaluation"] == dict(Counter(run["folds"][0]["evaluation"]) + Counter(run["folds"][1]["evaluation"]))
    default = run["recipes"]["default"]
    for fold, result in zip(run["folds"], default["folds"], strict=True):
        assert result["reviews"]["reviews"] == sum(fold["reviewed"].values())
        assert 0 < result["reviews"]["flagged"] <= result["reviews"]["reviews"]
        assert sum(site["n"] for site in result["evaluation"]["v1"]["per_site"].values()) == sum(
            fold["evaluation"].values())
    pooled = default["pooled"]
    for side in ("v1", "v2"):
        interval = pooled[side]["auroc_covid_vs_pneumonia"]
        assert 0 <= interval["estimate"] <= 1
        # --quick evaluates a handful of patients a class: an interval only where both classes have enough
        if {"covid", "pneumonia"} & set(pooled["too_few_patients"]):
            assert interval["low"] is None and interval["high"] is None
        else:
            assert interval["low"] <= interval["estimate"] <= interval["high"]
        assert pooled[side]["auroc_normal"]["estimate"] is None  # no normal to rank in the evaluation parts
        assert pooled[side]["n"] == sum(run["evaluation"].values())  # every evaluated film, once
    difference = pooled["difference"]["balanced_accuracy"]
    assert difference["estimate"] == pytest.approx(pooled["v2"]["balanced_accuracy"]["estimate"]
                                                   - pooled["v1"]["balanced_accuracy"]["estimate"])
    # v1 is the same model in every fold: pooled, its figure is its figure on all evaluated films
    assert pooled["v1"]["accuracy"]["estimate"] == pytest.approx(sum(
        f["evaluation"]["v1"]["accuracy"]["estimate"] * sum(fold["evaluation"].values())
        for f, fold in zip(default["folds"], run["folds"], strict=True)) / sum(run["evaluation"].values()))
    assert {(p["order"], str(p["reviews"])) for p in results["curve"]} == {
        ("uncertainty", "6"), ("random", "6"), ("all", str([f["reviews"]["reviews"] for f in default["folds"]]))}
    card = json.loads((tmp_path / "work" / "seed0" / "fold0" / "v2-default" / "model_card.json").read_text())
    assert card["config"]["recipe"]["from_active"] is True and "v1" in card["config"]["recipe"]["initial_weights"]
    printed = done.stdout
    assert "covid/pneu AUROC" in printed and "learning curve" in printed and "fold 1" in printed

    # review_calibration.py reads the loop's working folder; it exits non-zero unless the validation split it
    # recomputes gives back each v2's own temperature
    calibration = tmp_path / "calibration.json"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "review_calibration.py"), "--work",
                           str(tmp_path / "work"), "--out", str(calibration)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads(calibration.read_text())
    figures = written["folds"]
    assert [Path(f["fold"]).name for f in figures] == ["fold0", "fold1"]
    # with the benchmark's fixed pseudonym key, fold 0's validation split draws none of its 8 reviewed patients
    assert [f["reviewed_in_validation"] > 0 for f in figures] == [False, True] and written["folds_compared"] == 1
    assert figures[0]["temperature"]["reviews"] is None and figures[0]["evaluation_ece"]["reviews"] is None
    assert written["mean_evaluation_ece"] == figures[1]["evaluation_ece"]
    for fold in figures:
        assert all(0 <= ece <= 1 for ece in fold["evaluation_ece"].values() if ece is not None)
    # the model card shows the version on the reviewed cases of its validation split on their own, where it has any
    cards = [Path(fold["fold"]) / "v2-default" for fold in figures]
    assert "validation_reviewed_cases" not in json.loads((cards[0] / "model_card.json").read_text())["metrics"]
    reviewed = json.loads((cards[1] / "model_card.json").read_text())["metrics"]["validation_reviewed_cases"]
    assert reviewed["n"] == figures[1]["reviewed_in_validation"] and 0 <= reviewed["ece"] <= 1
    assert "| validation_reviewed_cases |" in (cards[1] / "model_card.md").read_text()


@pytest.mark.slow
def test_quick_prospective_mode_runs_the_three_policies_on_one_stream(tmp_path, cxr_dev, cxr_adult):
    out = tmp_path / "prospective.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "closed_loop.py"), "--prospective", "--quick",
               "--batches", "3", "--every", "1", "--dev", str(cxr_dev), "--adult", str(cxr_adult), "--out", str(out),
               "--work", str(tmp_path / "work")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    seed = json.loads(out.read_text())["seeds"]["0"]
    assert len(seed["batches"]) == 3 and sum(seed["batches"]) == 41  # the quick subset, every film once
    later = sum(seed["batches"][1:])  # the films after the first retraining point
    assert {policy: figures["films"] for policy, figures in seed["prospective"].items()} == {
        "never": later, "always": later, "gate": later}
    always = seed["decisions"]["always"]
    assert [d["after_batch"] for d in always] == [1, 2] and all(d["kind"] == "promoted" for d in always)
    assert [d["later_films"] for d in always] == [later, later - seed["batches"][1]]
    # a few films a batch are far from the 30 cases the gate needs: it refuses, and keeps v1
    assert [(e["kind"], e["after_batch"]) for e in seed["gate_events"]] == [("refused", 2)]
    cases = [int(re.search(r"prospective cases: (\d+)", e["comparison"]).group(1)) for e in seed["gate_events"]]
    assert cases == seed["batches"][1:2]  # judged on the batch read since the challenger was marked, no other
    assert seed["prospective"]["gate"]["minus_never"]["balanced_accuracy"]["estimate"] == 0
    assert "harmful" in done.stdout and "| gate |" in done.stdout
