"""Metrics of any checkpoint on any labelled set, alone or side by side with another version.

Every headline figure carries a bootstrap 95 % interval (by patient where the set has patient ids); a
comparison adds the paired bootstrap interval of the difference (second minus first) on the same images. A figure
that weighs a class with fewer than ``metrics.MIN_PATIENTS_PER_CLASS`` patients as a whole class (balanced accuracy,
macro-AUROC, that class's AUROCs) gets no interval, and the output says which classes those are.
"""

from __future__ import annotations

import logging
from pathlib import Path

from model_training import data
from model_training.metrics import DEFAULT_RESAMPLES, interval_text, paired_bootstrap_summary, too_few_patients_text
from model_training.predictions import Predictions, predict_items, prediction_metrics
from scoring.model import checkpoint_sha256, load_checkpoint, resolve_device

log = logging.getLogger("cxr.train")

# The rows of the comparison table: (label, key in the metrics, key in the intervals).
_ROWS = [("accuracy", "accuracy"), ("balanced acc.", "balanced_accuracy"), ("macro-AUROC", "macro_auroc")]


def predict_checkpoint(checkpoint_path: Path, items: list[data.LabelledImage], *, device: str = "auto",
                       batch_size: int = 32, workers: int = 2) -> tuple[Predictions, list[str]]:
    """Calibrated probabilities (the checkpoint's own temperature and offsets) and the checkpoint's classes."""
    checkpoint = load_checkpoint(checkpoint_path)
    torch_device = resolve_device(device)
    predictions = predict_items(checkpoint.build().to(torch_device), items, checkpoint.classes,
                                checkpoint.preprocessing, checkpoint.temperature, batch_size=batch_size,
                                workers=workers, device=torch_device, offsets=checkpoint.logit_offsets)
    return predictions, checkpoint.classes


def evaluate_checkpoint(checkpoint_path: Path, items: list[data.LabelledImage], *, device: str = "auto",
                        batch_size: int = 32, workers: int = 2, n_resamples: int = DEFAULT_RESAMPLES) -> dict:
    """Calibrated metrics (the checkpoint's own temperature), with bootstrap intervals, on readable items whose
    labels it knows."""
    predictions, classes = predict_checkpoint(checkpoint_path, items, device=device, batch_size=batch_size,
                                              workers=workers)
    metrics = prediction_metrics(predictions, classes, n_resamples=n_resamples)
    _warn_too_few_patients(metrics["intervals"]["_method"])
    return _described(metrics, checkpoint_path)


def compare_checkpoints(first_path: Path, second_path: Path, items: list[data.LabelledImage], *,
                        device: str = "auto", batch_size: int = 32, workers: int = 2,
                        n_resamples: int = DEFAULT_RESAMPLES) -> dict:
    """Both evaluations, and the paired bootstrap interval of every headline figure's difference (second minus
    first). The two versions must have the same classes and know the same images' labels."""
    first, classes = predict_checkpoint(first_path, items, device=device, batch_size=batch_size, workers=workers)
    second, second_classes = predict_checkpoint(second_path, items, device=device, batch_size=batch_size,
                                                workers=workers)
    if classes != second_classes:
        raise data.DataError(f"cannot compare versions with different classes: {classes} and {second_classes}")
    difference = paired_bootstrap_summary(first.labels, first.probabilities, second.probabilities, classes,
                                          first.patients, n_resamples=n_resamples)
    _warn_too_few_patients(difference["_method"])
    return {"model": _described(prediction_metrics(first, classes, n_resamples=n_resamples), first_path),
            "compare": _described(prediction_metrics(second, classes, n_resamples=n_resamples), second_path),
            "difference": difference}


def _warn_too_few_patients(method: dict) -> None:
    if method.get("too_few_patients"):
        log.warning("evaluate: %s", too_few_patients_text(method))


def _described(metrics: dict, path: Path) -> dict:
    checkpoint = load_checkpoint(path)
    metrics.update(checkpoint=str(path), sha256=checkpoint_sha256(path), name=checkpoint.training.get("name"))
    return metrics


def comparison_table(comparison: dict) -> str:
    """Two evaluations on the same images, side by side, with 95 % intervals, as plain text."""
    first, second, difference = comparison["model"], comparison["compare"], comparison.get("difference", {})
    names = [first.get("name") or Path(first["checkpoint"]).name,
             second.get("name") or Path(second["checkpoint"]).name]
    width = max(24, *(len(n) + 2 for n in names))
    lines = [f"{'':<26}{names[0]:>{width}}{names[1]:>{width}}{'difference (paired 95% CI)':>30}"]
    keys = [(label, key) for label, key in _ROWS]
    keys += [(name.replace("auroc_", "AUROC ").replace("_vs_", " v "), name)
             for name in first.get("intervals", {}) if name.startswith("auroc_")]
    for label, key in keys:
        a, b = _interval(first, key), _interval(second, key)
        d = difference.get(key)
        lines.append(f"{label:<26}{a:>{width}}{b:>{width}}{interval_text(d, signed=True):>30}")
    for label, key in (("macro-F1", "macro_f1"), ("ECE", "ece"), ("images", "n")):
        a, b = first.get(key), second.get(key)
        diff = "" if a is None or b is None else f"{b - a:+.4f}"
        lines.append(f"{label:<26}{_cell(a):>{width}}{_cell(b):>{width}}{diff:>30}")
    for cls in sorted(set(first["per_class"]) | set(second["per_class"])):
        a = first["per_class"].get(cls, {}).get("f1")
        b = second["per_class"].get(cls, {}).get("f1")
        diff = "" if a is None or b is None else f"{b - a:+.4f}"
        lines.append(f"{'F1 ' + cls:<26}{_cell(a):>{width}}{_cell(b):>{width}}{diff:>30}")
    method = difference.get("_method") or first.get("intervals", {}).get("_method") or {}
    if method:
        lines.append(f"95% intervals: {method['interval']} bootstrap, {method['resamples']} resamples, seed "
                     f"{method['seed']}, stratified by {method['stratified_by']}")
    if too_few_patients_text(method):
        lines.append(too_few_patients_text(method))
    return "\n".join(lines)


def _interval(metrics: dict, key: str) -> str:
    found = metrics.get("intervals", {}).get(key)
    if found is None:
        return _cell(metrics.get(key))
    return interval_text(found)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
