"""Bootstrap confidence intervals: the properties an interval must have, and small cases known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from model_training.metrics import (
    balanced_accuracy,
    binary_auroc,
    bootstrap_interval,
    bootstrap_resamples,
    bootstrap_summary,
    headline_statistics,
    paired_bootstrap_difference,
    paired_bootstrap_summary,
    pairwise_auroc,
    patients_per_class,
    percentile_interval,
    resampled_headlines,
    too_few_patients_text,
)

CLASSES = ["covid", "normal", "pneumonia"]


def _noisy(n: int, seed: int, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities that are right more often than not."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def accuracy(y, p):
    return float((p.argmax(axis=1) == y).mean())


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    y = np.array([0, 0, 0, 0, 2])
    p = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]], dtype=float)
    assert balanced_accuracy(y, p) == pytest.approx((3 / 4 + 1) / 2)  # class 1 absent: not averaged


def test_pairwise_auroc_ignores_the_third_class_and_uses_the_ratio():
    y = np.array([0, 0, 2, 2, 1])
    # covid's share of covid+pneumonia: 0.8, 0.5 for the covids, 0.5, 0.2 for the pneumonias; normal ignored
    p = np.array([[0.4, 0.5, 0.1], [0.3, 0.4, 0.3], [0.1, 0.8, 0.1], [0.2, 0.0, 0.8], [0.9, 0.1, 0.0]])
    # pairs (covid, pneumonia): 0.8>0.5, 0.8>0.2, 0.5=0.5 (½), 0.5>0.2 -> 3.5 / 4
    assert pairwise_auroc(y, p, 0, 2) == pytest.approx(3.5 / 4)
    assert pairwise_auroc(y, p, 2, 0) == pytest.approx(3.5 / 4)  # the same ranking, seen from pneumonia
    assert pairwise_auroc(np.array([0, 0]), p[:2], 0, 2) is None
    with pytest.raises(ValueError, match="out of range"):
        pairwise_auroc(y, p, 0, 3)


def test_resamples_keep_each_class_and_patient_whole():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    groups = ["a", "a", "b", "c", "c", None, None]  # None: the image is its own group
    for index in bootstrap_resamples(y, groups, n_resamples=50, seed=1):
        drawn = {}
        for i in index:
            drawn.setdefault(groups[i] or f"image{i}", []).append(i)
        for name in ("a", "c"):
            members = [0, 1] if name == "a" else [3, 4]
            if name in drawn:  # a patient is drawn with all of its films, as often as it is drawn
                assert sorted(drawn[name]) == sorted(members * (len(drawn[name]) // 2))
        # as many groups per class stratum as the data: 2 covid patients (a, b), 3 pneumonia groups (c, 5, 6)
        covid_groups = sum(1 for i in index if groups[i] == "b") + sum(1 for i in index if groups[i] == "a") // 2
        pneumonia_groups = sum(1 for i in index if groups[i] is None) + sum(1 for i in index if groups[i] == "c") // 2
        assert (covid_groups, pneumonia_groups) == (2, 3)
    with pytest.raises(ValueError, match="3 group ids for 7 samples"):
        bootstrap_resamples(y, ["a", "b", "c"])
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_resamples(y, n_resamples=0)


@pytest.mark.parametrize("case", ["ties and patients", "a class some resamples miss", "one class"])
def test_the_counted_statistics_are_exactly_those_of_the_resampled_arrays(case):
    """The summaries count how often each image is drawn instead of copying it; every value must be the float the
    statistic gives on the resampled arrays, not a close one (ties, patients, a class absent, None)."""
    y, p = _noisy(90, seed=8)
    p = np.round(p, 1) + 1e-9  # many tied scores, one-vs-rest and pairwise
    p /= p.sum(axis=1, keepdims=True)
    groups = [str(i // 3) for i in range(90)]
    if case == "a class some resamples miss":  # normal only in a patient whose other films are covid
        y[y == 1] = 0
        y[[0, 1]], groups[0], groups[1], groups[2] = [1, 0], "mixed", "mixed", "mixed"
        y[2] = 0
    elif case == "one class":
        y[:] = 2
    resamples = bootstrap_resamples(y, groups, n_resamples=230, seed=3)
    counted = resampled_headlines(y, p, CLASSES, resamples, chunk=64)  # chunks of unequal size too
    statistics = headline_statistics(CLASSES)
    assert list(counted) == list(statistics)
    for name, statistic in statistics.items():
        assert counted[name] == [statistic(y[i], p[i]) for i in resamples], name
    if case == "a class some resamples miss":
        assert None in counted["auroc_normal"] and counted["auroc_normal"].count(None) < len(resamples)
    if case == "one class":
        assert set(counted["macro_auroc"]) == {None}


def test_same_seed_same_interval_and_the_interval_holds_the_estimate():
    y, p = _noisy(120, seed=2)
    first = bootstrap_interval(accuracy, y, p, n_resamples=300, seed=5)
    assert first == bootstrap_interval(accuracy, y, p, n_resamples=300, seed=5)
    assert first.estimate == pytest.approx(accuracy(y, p))
    assert first.low < first.estimate < first.high and first.resamples == 300
    summary = bootstrap_summary(y, p, CLASSES, n_resamples=200)
    for name, interval in summary.items():
        if not name.startswith("_"):
            assert interval["low"] <= interval["estimate"] <= interval["high"], name


def test_the_interval_narrows_with_more_images():
    y, p = _noisy(60, seed=3)
    small = bootstrap_interval(binary_auroc_covid, y, p, n_resamples=400)
    large = bootstrap_interval(binary_auroc_covid, np.tile(y, 9), np.tile(p, (9, 1)), n_resamples=400)
    assert large.estimate == pytest.approx(small.estimate)  # the same data nine times over
    assert (large.high - large.low) < 0.5 * (small.high - small.low)  # about 1/3 as wide (√9)


def binary_auroc_covid(y, p):
    return binary_auroc(y == 0, p[:, 0])


def test_a_binomial_accuracy_interval_matches_the_normal_approximation():
    # 100 images of one class, 80 right: the bootstrap of the accuracy is Binomial(100, 0.8) / 100,
    # whose 95 % interval is about 0.8 ± 1.96·sqrt(0.8·0.2/100) = [0.72, 0.88].
    y = np.zeros(100, dtype=int)
    p = np.tile([0.9, 0.1], (100, 1))
    p[80:] = [0.1, 0.9]
    interval = bootstrap_interval(accuracy, y, p, n_resamples=2000, seed=0)
    assert interval.estimate == 0.8
    assert interval.low == pytest.approx(0.72, abs=0.015) and interval.high == pytest.approx(0.88, abs=0.015)


def test_a_perfect_model_has_a_degenerate_interval():
    y, _ = _noisy(40, seed=4)
    p = np.eye(3)[y] * 0.9 + 0.1 / 3
    interval = bootstrap_interval(accuracy, y, p, n_resamples=100)
    assert (interval.low, interval.estimate, interval.high) == (1.0, 1.0, 1.0)


def test_paired_difference_of_a_model_with_itself_is_zero():
    y, p = _noisy(80, seed=5)
    same = paired_bootstrap_difference(accuracy, y, p, p, n_resamples=200)
    assert (same.low, same.estimate, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero
    summary = paired_bootstrap_summary(y, p, p.copy(), CLASSES, [str(i // 3) for i in range(80)], n_resamples=100)
    assert all((v["low"], v["estimate"], v["high"]) == (0.0, 0.0, 0.0) for k, v in summary.items()
               if not k.startswith("_"))


def test_paired_difference_finds_a_clearly_better_model():
    y, weak = _noisy(150, seed=6, signal=0.3)
    _, strong = _noisy(150, seed=6, signal=3.0)  # same noise, much more signal
    better = paired_bootstrap_difference(accuracy, y, weak, strong, n_resamples=400)
    assert better.estimate == pytest.approx(accuracy(y, strong) - accuracy(y, weak))
    assert better.low > 0 and better.excludes_zero
    # pairing: the paired interval is narrower than the two separate intervals would suggest
    separate = [bootstrap_interval(accuracy, y, q, n_resamples=400) for q in (weak, strong)]
    assert better.high - better.low < sum(s.high - s.low for s in separate)


def test_undefined_statistic_is_left_out_or_none():
    assert percentile_interval(None, [0.1, 0.2]).low is None
    interval = percentile_interval(0.5, [None, 0.4, 0.6, None])
    assert interval.resamples == 2 and interval.low == pytest.approx(0.405)
    with pytest.raises(ValueError, match="level"):
        percentile_interval(0.5, [0.5], level=1.5)


def _with_normal_films(films: int, patients: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """120 covid and pneumonia films of their own patients, then ``films`` normal films of ``patients`` patients;
    two models' probabilities (the second right on every normal film, the first on none)."""
    y, first = _noisy(120, seed=7)
    y = np.where(y == 1, 0, y)
    normal = np.full(films, 1)
    second = first.copy()
    first = np.vstack([first, np.tile([0.7, 0.1, 0.2], (films, 1))])
    second = np.vstack([second, np.tile([0.1, 0.8, 0.1], (films, 1))])
    groups = [f"P{i}" for i in range(120)] + [f"N{i % patients}" for i in range(films)]
    return np.concatenate([y, normal]), first, second, groups


IMPRECISE = {"balanced_accuracy", "macro_auroc", "auroc_normal", "auroc_covid_vs_normal", "auroc_normal_vs_pneumonia"}


@pytest.mark.parametrize(("films", "patients", "too_few"), [
    (1, 1, {"normal": 1}),  # one film of a class decides a third of balanced accuracy
    (12, 1, {"normal": 1}),  # twelve films, but one patient: resampled whole, the same in every resample
    (12, 9, {"normal": 9}),
    (12, 10, {}),
])
def test_a_figure_that_weighs_a_class_of_too_few_patients_gets_no_interval(films, patients, too_few):
    y, first, second, groups = _with_normal_films(films, patients)
    assert patients_per_class(y, groups, CLASSES)["normal"] == patients
    for summary in (bootstrap_summary(y, second, CLASSES, groups, n_resamples=100),
                    paired_bootstrap_summary(y, first, second, CLASSES, groups, n_resamples=100)):
        assert summary["_method"]["too_few_patients"] == too_few
        assert summary["_method"]["min_patients_per_class"] == 10
        for name, found in summary.items():
            if not name.startswith("_"):
                assert found["estimate"] is not None, name
                assert (found["low"] is None) == (bool(too_few) and name in IMPRECISE), name
    assert "normal 1" in too_few_patients_text(bootstrap_summary(y[:121], second[:121], CLASSES, n_resamples=10)[
        "_method"])
