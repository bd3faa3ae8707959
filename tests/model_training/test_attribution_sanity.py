"""The model-randomisation sanity check (Adebayo et al., 2018) of every method, on the demo model and on a model
trained on real cxr-dev films: with the last blocks randomised, each map must change."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from db.attributions import OUTSIDE_LUNGS_THRESHOLD
from model_training.config import TrainConfig
from model_training.demo_cohort import write_demo_cohort
from model_training.train import train
from scoring.attribution import METHOD_INFO, METHODS
from scoring.attribution.sanity import MAX_RANK_CORRELATION, randomised, rank_correlation, sanity_check
from scoring.imaging import read_xray
from scoring.model import load_checkpoint
from tests.model_training.conftest import write_training_csv

IMAGES_PER_MODEL = 6
SMALL = dict(img_size=64, epochs=3, batch_size=16, workers=0, seed=1)


def _labelled(folder: Path, per_class: int, labels: Path | None = None) -> list[tuple[Path, str]]:
    with open(labels or folder / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen: list[tuple[Path, str]] = []
    for label in sorted({row["label"] for row in rows}):
        chosen += [(folder / row["file"], label) for row in rows if row["label"] == label][:per_class]
    return chosen


@pytest.fixture(scope="session")
def cxr_dev_model(tmp_path_factory, cxr_dev) -> tuple[Path, list[tuple[Path, str]]]:
    """A small ResNet-18 (64 px, 3 epochs) trained on 30 real films per class; and films it did not train on."""
    folder = tmp_path_factory.mktemp("cxr-dev-model")
    with open(cxr_dev / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    training, held_out = [], []
    for label in ("covid", "normal", "pneumonia"):
        of_class = [row for row in rows if row["label"] == label]
        training += of_class[:30]
        held_out += [(cxr_dev / row["file"], label) for row in of_class[30:32]]
    data = write_training_csv(cxr_dev, training, folder / "train.csv")
    result = train(TrainConfig(data=str(data), out=str(folder / "run"), db=f"sqlite:///{folder / 'db.sqlite'}",
                               **SMALL))
    return result.checkpoint, held_out


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> tuple[Path, list[tuple[Path, str]]]:
    """The demo model's recipe (synthetic phantoms, 64 px), on a smaller cohort and fewer epochs."""
    folder = tmp_path_factory.mktemp("demo-model")
    write_demo_cohort(folder / "cohort", n=60, size=128)
    result = train(TrainConfig(data=str(folder / "cohort"), out=str(folder / "run"), synthetic=True,
                               db=f"sqlite:///{folder / 'db.sqlite'}", **SMALL))
    return result.checkpoint, _labelled(folder / "cohort", 2)


@pytest.mark.parametrize("model", ["demo_model", "cxr_dev_model"])
@pytest.mark.parametrize("method", METHODS)
def test_each_method_passes_the_randomisation_check_or_is_labelled_failed(request, model, method):
    checkpoint_path, images = request.getfixturevalue(model)
    pixels = [read_xray(path).pixels for path, _ in images[:IMAGES_PER_MODEL]]
    params = {"stride": 8} if method == "occlusion" else {}  # 7 x 7 windows at 64 px, to keep the test short
    result = sanity_check(checkpoint_path, pixels, method, [label for _, label in images[:IMAGES_PER_MODEL]],
                          **params)
    print(f"{model} {method}: mean rank correlation {result.mean_rank_correlation:.3f} "
          f"{[round(r, 3) for r in result.rank_correlations]}; constant maps: {result.blank_trained} of the trained "
          f"model (not judged), {result.blank_randomised} more once randomised (changed)")
    assert len(result.rank_correlations) == len(pixels)
    assert result.judged >= len(pixels) // 2, "too few trained maps with structure to judge the method"
    compared = [rho for rho in result.rank_correlations if not math.isnan(rho)]
    assert len(compared) + result.blank_randomised == result.judged
    assert result.passed == (not compared or result.mean_rank_correlation < MAX_RANK_CORRELATION)
    assert result.passed == (METHOD_INFO[method].sanity == "passed"), \
        f"{method} {'passed' if result.passed else 'failed'} but is labelled {METHOD_INFO[method].sanity!r}"


def test_a_constant_map_has_no_rank_correlation():
    ramp = np.arange(64, dtype=np.float32).reshape(8, 8)
    assert rank_correlation(ramp, ramp) == pytest.approx(1.0)
    assert rank_correlation(ramp, -ramp) == pytest.approx(1.0)  # the same ranking of |values|
    assert math.isnan(rank_correlation(ramp, np.zeros_like(ramp)))
    assert math.isnan(rank_correlation(np.ones_like(ramp), ramp))


def test_randomising_changes_the_last_blocks_only_and_deterministically(cxr_dev_model):
    checkpoint = load_checkpoint(cxr_dev_model[0])
    first, second = randomised(checkpoint), randomised(checkpoint)
    for name, tensor in checkpoint.state_dict.items():
        if not tensor.is_floating_point():
            continue
        changed = not tensor.equal(first.state_dict[name])
        assert changed == name.startswith(("layer4.", "fc.")) or "running" in name or "bn" in name, name
        assert first.state_dict[name].equal(second.state_dict[name]), name


def test_the_model_card_reports_where_the_model_looks_per_class(cxr_dev_model):
    run = cxr_dev_model[0].parent
    card = (run / "model_card.md").read_text()
    assert "### Where the model looks" in card and "true class" in card
    found = json.loads((run / "model_card.json").read_text())["metrics"]["attribution"]
    assert found["method"] == "gradcam" and found["threshold"] == OUTSIDE_LUNGS_THRESHOLD
    assert set(found["per_class"]) == {"covid", "normal", "pneumonia"}
    assert sum(group["n"] for group in found["per_class"].values()) > 0
    for group in found["per_class"].values():
        assert group["n"] == 0 or 0 <= group["q1"] <= group["median"] <= group["q3"] <= 1
