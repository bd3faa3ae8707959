"""Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks").

One scalar ``T > 0`` divides the logits before the softmax; it is fitted on held-out (validation) data by
minimising the negative log-likelihood of ``softmax(logits / T)``. Dividing by ``T`` never changes the
arg-max, so accuracy and F1 are unchanged; only the confidence is.

The fit is a deterministic golden-section search over ``log T`` in float64 numpy. The NLL is convex in
``1/T`` (a log-sum-exp of linear functions minus a linear term), hence unimodal in ``log T``, so the
search finds the global minimum within the bounds. When the minimum lies outside the bounds the nearer
bound is returned (and a warning logged): e.g. perfectly separated training-like data drive ``T`` to 0.

:func:`fit_temperature_and_offsets` fits a temperature and per-class logit offsets ``b`` together
(``softmax(logits / T + b)``, ``cxr-train recalibrate``) by a class-balanced NLL, with Newton's method on
``(1/T, b)``, in which the NLL is convex.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model_training.metrics import numeric_matrix, validate_labels
from scoring.model import calibrated_probabilities

log = logging.getLogger("cxr.train")

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


def _validate_logits(logits: Any, y_true: Any) -> tuple[np.ndarray, np.ndarray]:
    z = numeric_matrix(logits, "logits")
    return z, validate_labels(y_true, n=z.shape[0], num_classes=z.shape[1])


def softmax(logits: np.ndarray, temperature: float = 1.0, offsets: Any = None) -> np.ndarray:
    """``scoring.model.calibrated_probabilities`` of numpy logits, in float64."""
    return calibrated_probabilities(torch.from_numpy(np.asarray(logits, dtype=np.float64)), temperature,
                                    offsets).numpy()


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


# --- a temperature and per-class offsets ---------------------------------------------------------------------

@dataclass(frozen=True)
class OffsetFit:
    """``softmax(logits / temperature + offsets)``, fitted on labelled logits."""

    temperature: float
    offsets: np.ndarray        # one per class: mean 0 over the fitted classes, 0 for the others
    fitted: tuple[int, ...]    # the classes whose offsets were fitted
    cases: tuple[int, ...]     # rows of each fitted class, in ``fitted`` order
    iterations: int
    at_bound: bool             # the temperature stopped at a bound


def balanced_nll(logits: Any, y_true: Any, temperature: float = 1.0, offsets: Any = None) -> float:
    """The NLL of ``softmax(logits / temperature + offsets)`` averaged within each class present, then over them."""
    z, y = _validate_logits(logits, y_true)
    p = softmax(z, temperature, offsets)
    nll = -np.log(np.clip(p[np.arange(len(y)), y], 1e-300, None))
    return float(np.mean([nll[y == c].mean() for c in np.unique(y)]))


def fit_temperature_and_offsets(logits: Any, y_true: Any, classes: Sequence[int] | None = None, *,
                                min_temperature: float = MIN_TEMPERATURE, max_temperature: float = MAX_TEMPERATURE,
                                tol: float = 1e-12, max_iter: int = 100) -> OffsetFit:
    """The temperature and per-class offsets minimising the class-balanced NLL of ``softmax(logits / T + b)``.

    ``classes``: the class indices whose offsets are fitted (default: every class in ``y_true``); rows of other
    classes are left out. Class-balanced: each fitted class weighs the same whatever its number of rows, so the
    offsets remove a class prior rather than learn the rows' own mix, which says what happened to be labelled,
    not what the next film will be. In the limit the fit gives back the temperature and offsets that generated the
    labels minus the log of each class's share of the rows (the prior shift).

    Only the conditional probability among the fitted classes is fitted (softmax over their logits): it fixes the
    offsets' differences and ``T`` and says nothing about a class without rows, whose offset a full softmax
    would push to minus infinity. The fitted offsets get mean 0, so a class left out keeps its logit where it
    was relative to the fitted classes' mean.
    """
    if not 0 < min_temperature < max_temperature < math.inf:
        raise ValueError(f"temperature bounds must satisfy 0 < min < max, got [{min_temperature}, {max_temperature}]")
    z, y = _validate_logits(logits, y_true)
    fitted = tuple(sorted(set(np.unique(y).tolist() if classes is None else classes)))
    if len(fitted) < 2 or not all(0 <= c < z.shape[1] for c in fitted):
        raise ValueError(f"need at least two of the {z.shape[1]} classes to fit offsets, got {fitted}")
    width = z.shape[1]
    rows = np.isin(y, fitted)
    z, y = z[rows][:, fitted], np.searchsorted(fitted, y[rows])
    counts = np.bincount(y, minlength=len(fitted))
    if (counts == 0).any():
        raise ValueError(f"no rows of class {fitted[int(np.argmin(counts))]} to fit its offset")
    weights = 1.0 / (len(fitted) * counts[y])
    bounds = (1.0 / max_temperature, 1.0 / min_temperature)
    theta, iterations = _newton(z, y, weights, bounds, tol, max_iter)
    b = np.append(theta[1:], 0.0)  # the last fitted class's offset is 0 in the fit: offsets only matter as differences
    offsets = np.zeros(width)
    offsets[list(fitted)] = b - b.mean()
    temperature = float(1.0 / theta[0])
    at_bound = any(math.isclose(theta[0], bound, rel_tol=1e-6) for bound in bounds)
    if at_bound:
        log.warning("temperature and offsets fit: T stopped at its bound %.3g; the cases may be separable or too "
                    "few", temperature)
    return OffsetFit(temperature, offsets, fitted, tuple(int(c) for c in counts), iterations, at_bound)


def _objective(theta: np.ndarray, z: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
    """The weighted NLL at ``theta = (1/T, b_0 .. b_{m-2})`` (``b_{m-1}`` = 0) and the probabilities."""
    u = theta[0] * z + np.append(theta[1:], 0.0)
    top = u.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(u - top).sum(axis=1))
    p = np.exp(u - lse[:, None])
    return float(np.sum(weights * (lse - u[np.arange(len(y)), y]))), p


def _newton(z: np.ndarray, y: np.ndarray, weights: np.ndarray, bounds: tuple[float, float], tol: float,
            max_iter: int) -> tuple[np.ndarray, int]:
    """Damped Newton on the convex weighted NLL, ``1/T`` kept within ``bounds``; deterministic."""
    n, m = z.shape
    # each class's feature vector: d(logit)/d(theta) = (z_c, e_c) with the last class's offset fixed at 0
    features = np.concatenate([z[:, :, None], np.broadcast_to(np.eye(m)[:, : m - 1], (n, m, m - 1))], axis=2)
    onehot = np.eye(m)[y]
    theta = np.zeros(m)
    theta[0] = min(max(1.0, bounds[0]), bounds[1])
    value, p = _objective(theta, z, y, weights)
    for iteration in range(1, max_iter + 1):
        gradient = np.einsum("n,nc,nca->a", weights, p - onehot, features)
        mean = np.einsum("nc,nca->na", p, features)
        hessian = (np.einsum("n,nc,nca,ncb->ab", weights, p, features, features)
                   - np.einsum("n,na,nb->ab", weights, mean, mean))
        free = np.ones(m, dtype=bool)
        if (theta[0] <= bounds[0] and gradient[0] > 0) or (theta[0] >= bounds[1] and gradient[0] < 0):
            free[0] = False  # 1/T at a bound and pushed beyond it: it stays, the offsets move
        step = np.zeros(m)
        step[free] = -np.linalg.solve(hessian[np.ix_(free, free)] + 1e-12 * np.eye(free.sum()), gradient[free])
        decrement = float(-gradient @ step)
        if decrement <= tol:
            return theta, iteration
        t = 1.0
        while t > 1e-12:
            candidate = theta + t * step
            candidate[0] = min(max(candidate[0], bounds[0]), bounds[1])
            new_value, new_p = _objective(candidate, z, y, weights)
            if new_value <= value - 1e-4 * t * decrement:
                break
            t /= 2
        else:
            return theta, iteration  # no step lowers the NLL any more: converged to rounding
        theta, value, p = candidate, new_value, new_p
    log.warning("temperature and offsets fit: no convergence in %d Newton steps", max_iter)
    return theta, max_iter
