"""Temperature scaling recovers a known temperature, improves held-out NLL and ECE, and is deterministic."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from model_training.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE, fit_temperature, softmax, temperature_nll
from model_training.metrics import expected_calibration_error


def _calibrated_data(seed: int, n: int, k: int = 4, scale: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """True logits L and labels drawn from softmax(L), so softmax(L) is calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(n, k))
    p = softmax(logits)
    u = rng.random(n)[:, None]
    y = np.minimum((u > np.cumsum(p, axis=1)).sum(axis=1), k - 1)
    return logits, y


@pytest.mark.parametrize("t0", [0.5, 2.5])
def test_recovers_known_temperature(t0):
    # The "model" outputs L·T0, so softmax(model / T) is calibrated exactly at T = T0: the NLL minimiser is
    # T0 up to sampling noise (shrinking like 1/sqrt(n)).
    logits, y = _calibrated_data(seed=11, n=20_000)
    t = fit_temperature(logits * t0, y)
    assert t == pytest.approx(t0, rel=0.05)


def test_lowers_held_out_nll_and_ece():
    t0 = 3.0  # an over-confident model
    val_logits, val_y = _calibrated_data(seed=1, n=4000)
    test_logits, test_y = _calibrated_data(seed=2, n=4000)
    t = fit_temperature(val_logits * t0, val_y)
    model_test = test_logits * t0
    assert temperature_nll(model_test, test_y, t) < temperature_nll(model_test, test_y, 1.0) - 0.1
    ece_before = expected_calibration_error(softmax(model_test), test_y)
    ece_after = expected_calibration_error(softmax(model_test, t), test_y)
    assert ece_before > 0.1
    assert ece_after < 0.03 < ece_before
    # Dividing by T never changes the arg-max.
    assert (softmax(model_test, t).argmax(1) == model_test.argmax(1)).all()


def test_minimum_matches_a_dense_grid():
    logits, y = _calibrated_data(seed=5, n=1500, k=3)
    logits = logits * 1.7 + np.random.default_rng(0).normal(scale=0.5, size=logits.shape)
    t = fit_temperature(logits, y)
    grid = np.exp(np.linspace(np.log(0.5), np.log(5), 1201))  # steps of 0.19% in T
    t_grid = grid[np.argmin([temperature_nll(logits, y, g) for g in grid])]
    assert t == pytest.approx(t_grid, rel=2e-3)
    assert temperature_nll(logits, y, t) <= min(temperature_nll(logits, y, t * 1.01),
                                                temperature_nll(logits, y, t / 1.01))


def test_deterministic_and_accepts_torch():
    torch = pytest.importorskip("torch")
    logits, y = _calibrated_data(seed=3, n=2000)
    first = fit_temperature(logits * 2, y)
    assert all(fit_temperature(logits * 2, y) == first for _ in range(3))
    assert fit_temperature(torch.tensor(logits * 2), torch.tensor(y)) == first
    as_float32 = fit_temperature(torch.tensor(logits * 2, dtype=torch.float32, requires_grad=True), y)
    assert as_float32 == pytest.approx(first, rel=1e-4)
    assert isinstance(first, float)


def test_matches_scoring_calibrated_probabilities():
    torch = pytest.importorskip("torch")
    model = pytest.importorskip("scoring.model")
    logits, _ = _calibrated_data(seed=4, n=10)
    ours = softmax(logits, 1.7)
    theirs = model.calibrated_probabilities(torch.tensor(logits), 1.7).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_separable_data_hits_the_lower_bound(caplog):
    # Every prediction right with a margin: the NLL keeps falling as T -> 0, so the fit stops at the bound.
    logits = np.array([[5.0, 0.0], [0.0, 5.0], [4.0, 1.0]])
    with caplog.at_level(logging.WARNING, logger="cxr.train"):
        t = fit_temperature(logits, np.array([0, 1, 0]))
    assert t == pytest.approx(MIN_TEMPERATURE, rel=1e-3)
    assert "bound" in caplog.text


def test_everything_wrong_hits_the_upper_bound():
    t = fit_temperature(np.array([[5.0, 0.0], [0.0, 5.0]]), np.array([1, 0]))
    assert t == pytest.approx(MAX_TEMPERATURE, rel=1e-3)


def test_constant_logits_keep_temperature_one():
    assert fit_temperature(np.zeros((5, 3)), np.array([0, 1, 2, 0, 1])) == 1.0


@pytest.mark.parametrize("logits, y, message", [
    (np.zeros((0, 3)), np.zeros(0, dtype=int), "no samples"),
    (np.zeros((2, 3)), np.array([0]), "1 labels but there are 2 rows"),
    (np.zeros((2, 3)), np.array([0, 3]), "label 3 at index 1 is out of range"),
    (np.zeros(3), np.array([0]), "must be 2-D"),
    (np.zeros((2, 1)), np.array([0, 0]), "at least 2 classes"),
    (np.array([[0.0, np.inf], [0.0, 1.0]]), np.array([0, 1]), "not finite"),
])
def test_validation_errors(logits, y, message):
    with pytest.raises(ValueError, match=message):
        fit_temperature(logits, y)


def test_bounds_validated():
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(np.eye(2), np.array([0, 1]), min_temperature=2.0, max_temperature=1.0)
    with pytest.raises(ValueError, match="positive"):
        temperature_nll(np.eye(2), np.array([0, 1]), 0.0)
