"""Classification and calibration metrics: a hand-computed case, edge cases, and scikit-learn as a cross-check."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model_training.metrics import (
    average_ranks,
    binary_auroc,
    classification_metrics,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)

CLASSES = ["A", "B", "C"]
# 3 classes, 8 samples. Arg-max of each row in the comment.
Y_HAND = np.array([0, 0, 0, 1, 1, 1, 2, 2])
P_HAND = np.array([
    [0.7, 0.2, 0.1],  # true A, pred A  (right)
    [0.5, 0.3, 0.2],  # true A, pred A  (right)
    [0.2, 0.5, 0.3],  # true A, pred B  (wrong)
    [0.3, 0.6, 0.1],  # true B, pred B  (right)
    [0.2, 0.2, 0.6],  # true B, pred C  (wrong)
    [0.5, 0.4, 0.1],  # true B, pred A  (wrong)
    [0.1, 0.3, 0.6],  # true C, pred C  (right)
    [0.2, 0.2, 0.6],  # true C, pred C  (right)
])


def test_hand_computed_case():
    m = classification_metrics(Y_HAND, P_HAND, CLASSES)
    # Confusion matrix, rows = true, cols = predicted:
    #   true A: pred A twice (rows 0, 1), pred B once (row 2)       -> [2, 1, 0]
    #   true B: pred B (row 3), pred C (row 4), pred A (row 5)      -> [1, 1, 1]
    #   true C: pred C twice (rows 6, 7)                            -> [0, 0, 2]
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 1], [0, 0, 2]]
    assert m["n"] == 8 and m["classes"] == CLASSES
    # Accuracy = diagonal / n = (2 + 1 + 2) / 8.
    assert m["accuracy"] == pytest.approx(5 / 8)
    # Predicted totals (column sums): A 3, B 2, C 3. Support (row sums): A 3, B 3, C 2.
    # A: precision 2/3, recall 2/3, F1 = 2/3.
    # B: precision 1/2, recall 1/3, F1 = 2·(1/2)(1/3) / (1/2 + 1/3) = (1/3) / (5/6) = 2/5.
    # C: precision 2/3, recall 2/2 = 1, F1 = 2·(2/3)·1 / (5/3) = 4/5.
    expected = {"A": (2 / 3, 2 / 3, 2 / 3, 3, 3), "B": (1 / 2, 1 / 3, 2 / 5, 3, 2), "C": (2 / 3, 1.0, 4 / 5, 2, 3)}
    for name, (precision, recall, f1, support, predicted) in expected.items():
        got = m["per_class"][name]
        assert got["precision"] == pytest.approx(precision)
        assert got["recall"] == pytest.approx(recall)
        assert got["f1"] == pytest.approx(f1)
        assert got["support"] == support and got["predicted"] == predicted
    # Macro-F1 = (2/3 + 2/5 + 4/5) / 3 = (30 + 18 + 36) / 45 / 3 = 28/45.
    assert m["macro_f1"] == pytest.approx(28 / 45)
    # AUROC by counting (positive, negative) pairs: 1 if the positive scores higher, 1/2 for a tie.
    # A: positives 0.7, 0.5, 0.2; negatives 0.3, 0.2, 0.5, 0.1, 0.2 (15 pairs)
    #    0.7 beats all 5 -> 5; 0.5 beats 0.3, 0.2, 0.1, 0.2 and ties 0.5 -> 4.5;
    #    0.2 beats 0.1 and ties 0.2 twice -> 2.  (5 + 4.5 + 2) / 15 = 11.5/15 = 23/30.
    # B: positives 0.6, 0.2, 0.4; negatives 0.2, 0.3, 0.5, 0.3, 0.2 (15 pairs)
    #    0.6 -> 5; 0.2 ties 0.2 twice -> 1; 0.4 beats 0.2, 0.3, 0.3, 0.2 -> 4.  10/15 = 2/3.
    # C: positives 0.6, 0.6; negatives 0.1, 0.2, 0.3, 0.1, 0.6, 0.1 (12 pairs)
    #    each 0.6 beats 5 and ties 1 -> 5.5, twice -> 11.  11/12.
    assert m["per_class"]["A"]["auroc"] == pytest.approx(23 / 30)
    assert m["per_class"]["B"]["auroc"] == pytest.approx(2 / 3)
    assert m["per_class"]["C"]["auroc"] == pytest.approx(11 / 12)
    # Macro-AUROC = (23/30 + 2/3 + 11/12) / 3 = (46 + 40 + 55) / 60 / 3 = 141/180.
    assert m["macro_auroc"] == pytest.approx(141 / 180)
    assert m["auroc_excluded"] == [] and m["absent_classes"] == []
    assert json.loads(json.dumps(m)) == m


def test_absent_and_never_predicted_class():
    # Class C never occurs in y_true and is never predicted.
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.4, 0.5, 0.1], [0.6, 0.3, 0.1]])
    m = classification_metrics(y, p, CLASSES)
    c = m["per_class"]["C"]
    assert c == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 0, "auroc": None}
    assert m["auroc_excluded"] == ["C"] and m["absent_classes"] == ["C"]
    # A: positives 0.8, 0.3 vs negatives 0.4, 0.6 -> 0.8 beats 2, 0.3 beats 0 -> 2/4.
    # B: positives 0.5, 0.3 vs negatives 0.1, 0.6 -> 0.5 beats 1, 0.3 beats 1 -> 2/4.
    assert m["per_class"]["A"]["auroc"] == pytest.approx(0.5)
    assert m["macro_auroc"] == pytest.approx(0.5)  # mean over A and B only
    # Predictions: A, B, B, A -> A: P=1/2 R=1/2; B: P=1/2 R=1/2; C: 0 -> macro-F1 = (0.5 + 0.5 + 0) / 3
    assert m["macro_f1"] == pytest.approx(1 / 3)
    json.dumps(m)


def test_single_class_present_gives_no_macro_auroc():
    m = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]), ["x", "y"])
    assert m["macro_auroc"] is None and m["auroc_excluded"] == ["x", "y"]


def test_average_ranks_and_binary_auroc():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert binary_auroc([1, 0], [0.5, 0.5]) == 0.5
    assert binary_auroc([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert binary_auroc([0, 0, 1], [0.9, 0.8, 0.1]) == 0.0
    assert binary_auroc([1, 1], [0.9, 0.8]) is None


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    m = classification_metrics(torch.tensor(Y_HAND), torch.tensor(P_HAND, requires_grad=True), CLASSES)
    assert m["accuracy"] == pytest.approx(5 / 8)


@pytest.mark.parametrize("y, p, classes, message", [
    (Y_HAND[:7], P_HAND, CLASSES, "7 labels but there are 8 rows"),
    (Y_HAND % 2, P_HAND[:, :2] / P_HAND[:, :2].sum(1, keepdims=True), CLASSES, "3 class names given"),
    (np.array([0, 3]), P_HAND[:2], CLASSES, "label 3 at index 1 is out of range"),
    (np.array([0, -1]), P_HAND[:2], CLASSES, "label -1 at index 1 is out of range"),
    (np.array([0, 1]), np.array([[0.5, 0.5, 0.1], [0.2, 0.3, 0.5]]), CLASSES, "row 0 sum to 1.1"),
    (np.array([0, 1]), np.array([[1.5, -0.5, 0.0], [0.2, 0.3, 0.5]]), CLASSES, "probabilities[0, 0] is 1.5"),
    (np.array([0, 1]), np.array([[np.nan, 0.5, 0.5], [0.2, 0.3, 0.5]]), CLASSES, "not finite"),
    (np.array([0.5, 1.0]), P_HAND[:2], CLASSES, "got 0.5 at index 0"),
    (np.array([0, 1]), P_HAND[0], CLASSES, "must be 2-D"),
    (np.zeros(0, dtype=int), np.zeros((0, 3)), CLASSES, "no samples"),
    (np.array([[0, 1]]), P_HAND[:2], CLASSES, "y_true must be 1-D"),
])
def test_validation_errors(y, p, classes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        classification_metrics(y, p, classes)


def test_sum_tolerance_is_1e_4():
    p = np.array([[0.50004, 0.5], [0.3, 0.7]])
    classification_metrics(np.array([0, 1]), p, ["x", "y"])  # off by 4e-5: accepted
    with pytest.raises(ValueError, match="sum to"):
        classification_metrics(np.array([0, 1]), np.array([[0.5003, 0.5], [0.3, 0.7]]), ["x", "y"])


# --- calibration error ----------------------------------------------------------------------------------------

def _sample_labels(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.random(len(p))[:, None]
    return np.minimum((u > np.cumsum(p, axis=1)).sum(axis=1), p.shape[1] - 1)


def test_ece_near_zero_when_calibrated():
    rng = np.random.default_rng(1234)
    logits = rng.normal(scale=2.0, size=(60_000, 3))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = _sample_labels(p, rng)
    assert expected_calibration_error(p, y) < 0.02
    # ...and clearly not when the same labels meet over-confident probabilities.
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)
    assert expected_calibration_error(sharp, y) > 0.1


def test_ece_hand_computed_over_confident():
    # 10 bins of width 0.1. Top-1 confidences: four at 0.9 (bin 9 = [0.9, 1.0]), two at 0.7 (bin 7).
    p = np.array([[0.9, 0.1]] * 4 + [[0.3, 0.7]] * 2)
    y = np.array([0, 0, 1, 1, 1, 0])
    # Bin 9: predicted class 0 each time, right twice of four -> accuracy 0.5, confidence 0.9, gap 0.4.
    # Bin 7: predicted class 1 each time, right once of two  -> accuracy 0.5, confidence 0.7, gap 0.2.
    # ECE = 4/6 · 0.4 + 2/6 · 0.2 = 1.6/6 + 0.4/6 = 2/6 = 1/3.
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(1 / 3)
    bins = reliability_bins(p, y, n_bins=10)
    assert bins["count"] == [0, 0, 0, 0, 0, 0, 0, 2, 0, 4]
    assert bins["confidence"][9] == pytest.approx(0.9) and bins["accuracy"][9] == 0.5
    assert bins["confidence"][7] == pytest.approx(0.7) and bins["accuracy"][7] == 0.5
    assert bins["confidence"][0] is None and bins["accuracy"][0] is None
    assert bins["edges"][0] == 0.0 and bins["edges"][-1] == 1.0 and len(bins["edges"]) == 11
    assert bins["ece"] == pytest.approx(1 / 3) and bins["n"] == 6
    json.dumps(bins)


def test_bin_edges_left_closed_and_one_in_last_bin():
    # Confidence 0.6 sits on the edge between bins 5 and 6: it opens bin 6. Confidence 1.0 goes in bin 9.
    p = np.array([[0.6, 0.4], [1.0, 0.0], [0.5, 0.5]])
    bins = reliability_bins(p, np.array([0, 0, 1]), n_bins=10)
    assert bins["count"][6] == 1 and bins["count"][9] == 1 and bins["count"][5] == 1
    assert sum(bins["count"]) == 3
    # 15 bins: 1.0 in bin 14, 0.8 = 12/15 opens bin 12; 0.2 = 3/15 opens bin 3.
    bins = reliability_bins(np.array([[1.0, 0.0], [0.2, 0.8]]), np.array([0, 1]), n_bins=15)
    assert bins["count"][14] == 1 and bins["count"][12] == 1
    bins = reliability_bins(np.array([[0.2, 0.2, 0.2, 0.2, 0.2]]), np.array([0]), n_bins=15)
    assert bins["count"][3] == 1


def test_perfect_classifier_has_zero_ece():
    p = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(p, np.array([0, 1, 2, 1])) == 0.0


def test_n_bins_validated():
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins(P_HAND, Y_HAND, n_bins=0)


def test_negative_log_likelihood():
    p = np.array([[0.25, 0.75], [1.0, 0.0]])
    # -(log 0.75 + log 1e-12) / 2 (the impossible label is clipped at 1e-12)
    assert negative_log_likelihood(p, np.array([1, 1])) == pytest.approx(-(math.log(0.75) + math.log(1e-12)) / 2)


# --- scikit-learn as an independent check (tests only) --------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scikit_learn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n, k = 300, 4
    logits = rng.integers(-2, 3, size=(n, k)).astype(float)  # few distinct rows -> many tied scores
    logits[:, 3] -= 3.0  # class 3 rarely if ever predicted
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, k, size=n)
    classes = [f"c{i}" for i in range(k)]
    m = classification_metrics(y, p, classes)
    pred = p.argmax(axis=1)
    labels = list(range(k))
    assert m["confusion_matrix"] == sk.confusion_matrix(y, pred, labels=labels).tolist()
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(y, pred, labels=labels, average="macro", zero_division=0))
    precision, recall, f1, support = sk.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for c, name in enumerate(classes):
        got = m["per_class"][name]
        assert got["precision"] == pytest.approx(precision[c])
        assert got["recall"] == pytest.approx(recall[c])
        assert got["f1"] == pytest.approx(f1[c])
        assert got["support"] == support[c]
        assert got["auroc"] == pytest.approx(sk.roc_auc_score(y == c, p[:, c]), abs=1e-12)
    assert m["macro_auroc"] == pytest.approx(sk.roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_auroc_matches_scikit_learn_on_large_tied_scores():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    labels = rng.random(5000) < 0.3
    scores = np.round(rng.random(5000) + 0.3 * labels, 1)  # 15 distinct values, heavy ties
    assert binary_auroc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)


def test_accuracy_by_group_counts_each_source_separately():
    from model_training.metrics import accuracy_by_group

    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    y_true = np.array([0, 1, 1, 1, 0])  # predictions: 0, 1, 0, 1, 0 (a tie goes to the lower index)
    result = accuracy_by_group(["a", "a", "b", "b", None], y_true, probabilities, ["x", "y"])
    # a source holding both classes also says whether it ranks one above the other within it
    assert result == {"a": {"n": 2, "accuracy": 1.0, "classes": ["x", "y"], "pairwise_auroc": {"x_vs_y": 1.0}},
                      "b": {"n": 2, "accuracy": 0.5, "classes": ["y"], "pairwise_auroc": {}},
                      "unknown": {"n": 1, "accuracy": 1.0, "classes": ["x"], "pairwise_auroc": {}}}
