"""The outside-the-lungs share of a labelled set, per class and per source: the model card's attribution section
and the figures behind :data:`db.attributions.OUTSIDE_LUNGS_THRESHOLD`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from db.attributions import OUTSIDE_LUNGS_THRESHOLD
from scoring import imaging
from scoring.attribution.engine import PreparedModel, compute_crops, prepared_model
from scoring.attribution.region import outside_share
from scoring.model import Checkpoint

BATCH_SIZE = 16


def _distribution(shares: list[float]) -> dict[str, Any]:
    values = np.array([s for s in shares if not np.isnan(s)], dtype=np.float64)
    if not len(values):
        return {"n": 0}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"n": int(len(values)), "median": round(float(median), 3), "q1": round(float(q1), 3),
            "q3": round(float(q3), 3), "above_threshold": round(float((values >= OUTSIDE_LUNGS_THRESHOLD).mean()), 3)}


def outside_shares(checkpoint: Checkpoint | PreparedModel | str, paths: Sequence[str]) -> list[tuple[str, float]]:
    """(predicted class, Grad-CAM outside share for it) of each readable file; NaN share for an unreadable one."""
    import torch

    prepared = prepared_model(checkpoint)
    found: list[tuple[str, float]] = []
    for start in range(0, len(paths), BATCH_SIZE):
        pixels = []
        for path in paths[start:start + BATCH_SIZE]:
            try:
                pixels.append(imaging.read_xray(path).pixels)
            except imaging.XRayReadError:
                pixels.append(None)
        readable = [p for p in pixels if p is not None]
        if readable:
            batch = torch.stack([prepared.checkpoint.preprocessing(p) for p in readable])
            with torch.inference_mode():
                predicted = prepared.model(batch).argmax(1).tolist()
            names = [prepared.checkpoint.classes[i] for i in predicted]
            crops = iter(compute_crops(prepared, readable, "gradcam", names))
        for p in pixels:
            if p is None:
                found.append(("", float("nan")))
            else:
                crop = next(crops)
                found.append((crop.target_class, outside_share(crop.crop)))
    return found


def outside_share_summary(checkpoint: Checkpoint | PreparedModel | str, paths: Sequence[str],
                          labels: Sequence[str], sources: Sequence[str | None], split: str) -> dict[str, Any]:
    """Grad-CAM (for the predicted class) outside share of each image, summarised per true class and per source."""
    shares = outside_shares(checkpoint, paths)
    by_class: dict[str, list[float]] = {}
    by_source: dict[str, list[float]] = {}
    for (_, share), label, source in zip(shares, labels, sources, strict=True):
        by_class.setdefault(label, []).append(share)
        by_source.setdefault(f"{source or 'unknown'} ({label})", []).append(share)
    return {"method": "gradcam", "target": "predicted class", "split": split, "threshold": OUTSIDE_LUNGS_THRESHOLD,
            "per_class": {k: _distribution(v) for k, v in sorted(by_class.items())},
            "per_source_class": {k: _distribution(v) for k, v in sorted(by_source.items())}}
