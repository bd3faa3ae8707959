"""Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks").

One scalar ``T > 0`` divides the logits before the softmax; it is fitted on held-out (validation) data by
minimising the negative log-likelihood of ``softmax(logits / T)``. Dividing by ``T`` never changes the
arg-max, so accuracy and F1 are unchanged; only the confidence is.

The fit is a deterministic golden-section search over ``log T`` in float64 numpy. The NLL is convex in
``1/T`` (a log-sum-exp of linear functions minus a linear term), hence unimodal in ``log T``, so the
search finds the global minimum within the bounds. When the minimum lies outside the bounds the nearer
bound is returned (and a warning logged): e.g. perfectly separated training-like data drive ``T`` to 0.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from model_training.metrics import numeric_matrix, validate_labels

log = logging.getLogger("cxr.train")

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


def _validate_logits(logits: Any, y_true: Any) -> tuple[np.ndarray, np.ndarray]:
    z = numeric_matrix(logits, "logits")
    return z, validate_labels(y_true, n=z.shape[0], num_classes=z.shape[1])


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` in float64 (numpy twin of ``scoring.model.calibrated_probabilities``)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    s = z / temperature
    m = s.max(axis=1)
    lse = m + np.log(np.exp(s - m[:, None]).sum(axis=1))
    return float(np.mean(lse - s[np.arange(len(y)), y]))


def temperature_nll(logits: Any, y_true: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` (computed stably, in float64)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z, y = _validate_logits(logits, y_true)
    return _nll(z, y, float(temperature))


def fit_temperature(logits: Any, y_true: Any, *, min_temperature: float = MIN_TEMPERATURE,
                    max_temperature: float = MAX_TEMPERATURE, tol: float = 1e-6, max_iter: int = 200) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on held-out data.

    ``logits``: (n, k) numpy array or torch tensor (uncalibrated model outputs on the *validation* set, never
    the training set); ``y_true``: (n,) class indices. Golden-section search over ``log T`` within
    ``[min_temperature, max_temperature]`` until the bracket is narrower than ``tol`` (in log T) or
    ``max_iter`` steps; deterministic. Raises ``ValueError`` for empty or malformed input. Returns 1.0 when
    the NLL does not depend on ``T`` (every row's logits equal).
    """
    if not 0 < min_temperature < max_temperature < math.inf:
        raise ValueError(f"temperature bounds must satisfy 0 < min < max, got [{min_temperature}, {max_temperature}]")
    z, y = _validate_logits(logits, y_true)
    # Rows whose logits are all equal give log(k) at every T; they cannot inform the fit.
    if np.all(z.max(axis=1) == z.min(axis=1)):
        log.warning("temperature fit: every row of logits is constant; keeping T = 1")
        return 1.0

    def f(log_t: float) -> float:
        return _nll(z, y, math.exp(log_t))

    a, b = math.log(min_temperature), math.log(max_temperature)
    c = b - _INV_PHI * (b - a)
    d = a + _INV_PHI * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(max_iter):
        if b - a <= tol:
            break
        if fc <= fd:        # minimum in [a, d]
            b, d, fd = d, c, fc
            c = b - _INV_PHI * (b - a)
            fc = f(c)
        else:               # minimum in [c, b]
            a, c, fc = c, d, fd
            d = a + _INV_PHI * (b - a)
            fd = f(d)
    # The best point seen in the final bracket, or a bound when the minimum lies beyond it.
    candidates = [(fc, c), (fd, d), (f(a), a), (f(b), b)]
    best_f, best_log_t = min(candidates, key=lambda pair: (pair[0], abs(pair[1])))
    temperature = float(min(max(math.exp(best_log_t), min_temperature), max_temperature))
    if math.isclose(temperature, min_temperature, rel_tol=1e-3) or math.isclose(temperature, max_temperature,
                                                                                   rel_tol=1e-3):
        log.warning("temperature fit hit the bound T = %.3g (NLL %.4g); the held-out logits may be "
                    "degenerate or the validation set too small", temperature, best_f)
    return temperature
