"""The model-randomisation sanity check of Adebayo et al. (2018, "Sanity checks for saliency maps").

A saliency method that explains the model must give a different map when the model's learned weights are
destroyed. The check re-initialises the last blocks (``layer4`` and ``fc``: the cascading randomisation's first
steps, fixed seed), computes each method's map with the trained and the randomised model on the same images,
and measures the Spearman rank correlation of the two maps (of their absolute values and of the signed values;
the larger counts). A method passes when the mean correlation stays below :data:`MAX_RANK_CORRELATION`.

A constant map has no ranking, so it never enters the mean as a correlation of 0 (that would pass a method on
blank maps). An image whose trained map is constant says nothing about the method and is not judged; one whose
map has structure with the trained model and becomes constant once the blocks are randomised has changed
completely (Grad-CAM's ReLU often does this), which is counted. A method with no judged image fails: the check
could not see it change.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from scoring.model import Checkpoint

MAX_RANK_CORRELATION = 0.5
RANDOMISED_BLOCKS = ("layer4", "fc")
RANDOMISATION_SEED = 0

# The check's outcome on the reference models (the demo model and a ResNet-18 trained on cxr-dev; the figures are
# in the README and the test tests/model_training/test_attribution_sanity.py re-runs it). The dashboard labels a method
# that failed.
MEASURED_SANITY: dict[str, str] = {
    "gradcam": "passed",
    "integrated_gradients": "passed",  # the closest to the limit: its maps keep the input's edges (x - baseline)
    "occlusion": "passed",
}


@dataclass(frozen=True)
class SanityResult:
    method: str
    rank_correlations: tuple[float, ...]  # one per image; NaN where a map is constant
    mean_rank_correlation: float  # over the images with both maps ranked; NaN when there is none
    passed: bool
    blank_trained: int  # images whose trained model's map is constant: not judged
    blank_randomised: int  # images whose map became constant once the blocks were randomised: changed

    @property
    def judged(self) -> int:
        return len(self.rank_correlations) - self.blank_trained


def randomised(checkpoint: Checkpoint, blocks: Sequence[str] = RANDOMISED_BLOCKS,
               seed: int = RANDOMISATION_SEED) -> Checkpoint:
    """A copy of ``checkpoint`` whose ``blocks`` are re-initialised (PyTorch's default init, fixed seed)."""
    model = checkpoint.build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in blocks:
            for module in getattr(model, name).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                if hasattr(module, "reset_running_stats"):
                    module.reset_running_stats()
    randomised_checkpoint = copy.copy(checkpoint)
    randomised_checkpoint.state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    randomised_checkpoint.training = {**checkpoint.training, "name": f"{checkpoint.training.get('name')} "
                                                                    f"({'+'.join(blocks)} randomised)"}
    return randomised_checkpoint


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """max(Spearman of |a| and |b|, Spearman of a and b); NaN where a map is constant (nothing to rank)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    values = []
    for x, y in ((np.abs(a), np.abs(b)), (a, b)):
        if np.ptp(x) == 0 or np.ptp(y) == 0:  # e.g. a map of one sign whose absolute values are all equal
            continue
        rho = float(spearmanr(x.ravel(), y.ravel()).statistic)
        if not math.isnan(rho):
            values.append(rho)
    return max(values, default=math.nan)


def sanity_check(checkpoint: Checkpoint | str | os.PathLike, images: Sequence[np.ndarray], method: str,
                 target_classes: Sequence[str], **params: Any) -> SanityResult:
    """Run the randomisation check of ``method`` on ``images`` (reader pixels), one target class each."""
    from scoring.attribution.engine import compute_crops, prepared_model

    trained = prepared_model(checkpoint)
    random_model = prepared_model(randomised(trained.checkpoint))
    before = compute_crops(trained, images, method, target_classes, **params)
    after = compute_crops(random_model, images, method, target_classes, **params)
    rhos = tuple(rank_correlation(x.crop, y.crop) for x, y in zip(before, after, strict=True))
    compared = [rho for rho in rhos if not math.isnan(rho)]
    mean = float(np.mean(compared)) if compared else math.nan
    blank_trained = sum(int(np.ptp(x.crop) == 0) for x in before)
    blank_randomised = sum(int(np.ptp(x.crop) != 0 and np.ptp(y.crop) == 0) for x, y in zip(before, after, strict=True))
    judged = len(rhos) - blank_trained
    passed = judged > 0 and (not compared or mean < MAX_RANK_CORRELATION)
    return SanityResult(method, rhos, mean, passed, blank_trained, blank_randomised)
