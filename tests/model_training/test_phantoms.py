"""The chest phantoms: the classes' patterns are really there, and bad arguments are refused."""

from __future__ import annotations

import numpy as np
import pytest

from model_training.phantoms import CLASSES, Disease, random_anatomy, random_disease, render_phantom

# --- the classes are really different ---------------------------------------------------------------------

STATS_N = 60  # phantoms per class
STATS_SIZE = 64


@pytest.fixture(scope="module")
def class_stats() -> dict[str, np.ndarray]:
    """Per phantom: lung brightness (mean of the two lungs' means), |left - right| brightness, and
    from a paired rendering without disease (same anatomy, pose, exposure and noise) the
    brightening of each lung by the disease."""
    stats = {}
    for k, label in enumerate(CLASSES):
        rows = []
        for i in range(STATS_N):
            seed = 1000 * k + i
            rng = np.random.default_rng(seed)
            anatomy, disease = random_anatomy(rng), random_disease(label, rng)
            sick = render_phantom(label, size=STATS_SIZE, rng=seed + 500, anatomy=anatomy, disease=disease)
            clean = render_phantom(label, size=STATS_SIZE, rng=seed + 500, anatomy=anatomy, disease=Disease("normal"))
            left, right = sick.pixels[sick.lung_left].mean(), sick.pixels[sick.lung_right].mean()
            delta = sick.pixels - clean.pixels
            rows.append(
                ((left + right) / 2, abs(left - right), delta[sick.lung_left].mean(), delta[sick.lung_right].mean())
            )
        stats[label] = np.array(rows)
    return stats


def test_diseased_lungs_are_brighter_than_normal_ones_on_average(class_stats):
    # Independent phantoms, so anatomy and exposure vary too. Measured with these seeds: normal 0.461,
    # covid 0.538, pneumonia 0.487, each with SD about 0.07 (standard error of a difference 0.013).
    normal = class_stats["normal"][:, 0].mean()
    assert class_stats["covid"][:, 0].mean() > normal + 0.03
    assert class_stats["pneumonia"][:, 0].mean() > normal + 0.01


def test_pneumonia_is_more_asymmetric_than_covid(class_stats):
    # measured mean |left - right|: normal 0.009, covid 0.018, pneumonia 0.057
    asymmetry = {label: class_stats[label][:, 1].mean() for label in CLASSES}
    assert asymmetry["pneumonia"] > 2 * asymmetry["covid"]
    assert asymmetry["covid"] > asymmetry["normal"]


def test_disease_brightens_the_lungs_covid_both_pneumonia_one(class_stats):
    left, right = class_stats["normal"][:, 2], class_stats["normal"][:, 3]
    assert np.all(left == 0) and np.all(right == 0)
    covid = class_stats["covid"]
    assert np.all(np.minimum(covid[:, 2], covid[:, 3]) > 0.005)  # every covid phantom, both lungs: min 0.012
    assert covid[:, 2:].mean() > 0.04  # measured 0.058
    pneumonia = class_stats["pneumonia"]
    brighter, other = np.maximum(pneumonia[:, 2], pneumonia[:, 3]), np.minimum(pneumonia[:, 2], pneumonia[:, 3])
    assert np.all(brighter > 0.005)  # the mildest measured 0.0074 (a small patch, averaged over the lung)
    assert np.all(np.abs(other) < 1e-6)  # one lung only (measured at most 1e-7: float rounding)
    assert brighter.mean() > 0.04  # measured 0.059


def test_covid_opacities_are_peripheral_and_basal():
    lower = upper = lateral = medial = 0.0
    for seed in range(10):
        phantom = render_phantom("covid", size=STATS_SIZE, rng=seed)
        for mask in (phantom.lung_left, phantom.lung_right):
            rows, cols = np.nonzero(mask)
            mid_row = (rows.min() + rows.max()) / 2
            mid_col = (cols.min() + cols.max()) / 2
            values = phantom.opacity[rows, cols]
            lower += values[rows > mid_row].mean()
            upper += values[rows <= mid_row].mean()
            outward = cols < mid_col if mask is phantom.lung_left else cols > mid_col
            lateral += values[outward].mean()
            medial += values[~outward].mean()
    assert lower > 2 * upper  # measured 3.0 times
    assert lateral > 2 * medial  # measured 4.1 times


def test_normal_phantoms_have_no_opacity():
    for seed in range(5):
        assert not render_phantom("normal", size=STATS_SIZE, rng=seed).opacity.any()


def test_render_rejects_unknown_labels_and_tiny_sizes():
    with pytest.raises(ValueError):
        render_phantom("tuberculosis", size=64, rng=0)
    with pytest.raises(ValueError):
        render_phantom("normal", size=8, rng=0)
