"""Metrics of any checkpoint on any labelled set, alone or side by side with another version."""

from __future__ import annotations

from pathlib import Path

from model_training import data
from model_training.train import evaluate_items
from scoring.model import checkpoint_sha256, load_checkpoint, resolve_device


def evaluate_checkpoint(checkpoint_path: Path, items: list[data.LabelledImage], *, device: str = "auto",
                        batch_size: int = 32, workers: int = 2) -> dict:
    """Calibrated metrics (the checkpoint's own temperature) on readable items whose labels it knows."""
    checkpoint = load_checkpoint(checkpoint_path)
    torch_device = resolve_device(device)
    metrics = evaluate_items(checkpoint.build().to(torch_device), items, checkpoint.classes,
                             checkpoint.preprocessing, checkpoint.temperature, batch_size=batch_size,
                             workers=workers, device=torch_device)
    metrics.update(checkpoint=str(checkpoint_path), sha256=checkpoint_sha256(checkpoint_path),
                   name=checkpoint.training.get("name"))
    return metrics


def comparison_table(first: dict, second: dict) -> str:
    """Two evaluations on the same images, side by side, as plain text."""
    rows = [("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("macro-AUROC", "macro_auroc"), ("ECE", "ece"),
            ("images", "n")]
    names = [first.get("name") or Path(first["checkpoint"]).name, second.get("name") or
             Path(second["checkpoint"]).name]
    width = max(14, *(len(n) for n in names))
    lines = [f"{'':<14}{names[0]:>{width}}{names[1]:>{width}}{'difference':>{width}}"]
    for label, key in rows:
        a, b = first.get(key), second.get(key)
        diff = "" if a is None or b is None else f"{b - a:+.4f}"
        lines.append(f"{label:<14}{_cell(a):>{width}}{_cell(b):>{width}}{diff:>{width}}")
    for cls in sorted(set(first["per_class"]) | set(second["per_class"])):
        a = first["per_class"].get(cls, {}).get("f1")
        b = second["per_class"].get(cls, {}).get("f1")
        diff = "" if a is None or b is None else f"{b - a:+.4f}"
        lines.append(f"{'F1 ' + cls:<14}{_cell(a):>{width}}{_cell(b):>{width}}{diff:>{width}}")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
