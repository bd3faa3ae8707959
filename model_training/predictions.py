"""A model run over labelled images: the loader, the logits (``evaluate``, the training script's evaluation step
too), and calibrated predictions with their metrics, as training, ``cxr-train evaluate`` and recalibration use
them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Sampler, WeightedRandomSampler

from model_training import data
from model_training.metrics import (
    DEFAULT_RESAMPLES,
    accuracy_by_group,
    balanced_accuracy,
    bootstrap_summary,
    classification_metrics,
    expected_calibration_error,
)
from scoring.model import Preprocessing, autocast, autocast_dtype, calibrated_probabilities
from scoring.workers import exits_with_this_process


class NumberedDraws(Sampler):
    """A sampler's draws as ``(position in the epoch, index)``: :class:`~model_training.data.LabelledDataset`
    seeds a draw's augmentation by its position, so a case drawn twice in an epoch is augmented twice."""

    def __init__(self, draws: Sampler):
        self.draws = draws

    def __iter__(self):
        return enumerate(self.draws)

    def __len__(self) -> int:
        return len(self.draws)


def make_loader(dataset: data.LabelledDataset, *, batch_size: int, workers: int, device: torch.device,
                shuffle_seed: int | None = None, sample_weights: torch.Tensor | None = None) -> DataLoader:
    """Batches of a dataset; with ``shuffle_seed`` in a reproducible shuffled order, or with ``sample_weights``
    too drawn with replacement in proportion to them (as many draws as items), each draw numbered."""
    sampler = None
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(shuffle_seed)
        draws = (RandomSampler(dataset, generator=generator) if sample_weights is None else
                 WeightedRandomSampler(sample_weights.double(), len(dataset), replacement=True, generator=generator))
        sampler = NumberedDraws(draws)
    # A shuffled (training) epoch never ends in a batch of one draw: batch norm cannot train on a single image
    # and raises. The draw left out is a random one, another in every epoch.
    drop_last = shuffle_seed is not None and len(dataset) > 1 and len(dataset) % batch_size == 1
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      pin_memory=device.type == "cuda",
                      worker_init_fn=exits_with_this_process() if workers > 0 else None)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray, float]:
    """Logits, true class indices and the mean (unweighted) loss over a loader."""
    model.eval()
    dtype = autocast_dtype(device)
    all_logits, all_labels = [], []
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.to(memory_format=torch.channels_last)
        with autocast(device, dtype):
            all_logits.append(model(images).float().cpu())
        all_labels.append(labels)
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    return logits.numpy(), labels.numpy(), float(F.cross_entropy(logits, labels))


@dataclass(frozen=True)
class Predictions:
    """Calibrated probabilities of a model on the (readable) items whose labels it knows, in ``items`` order."""

    items: list[data.LabelledImage]
    labels: np.ndarray
    probabilities: np.ndarray
    logits: np.ndarray
    left_out_unknown_label: int

    @property
    def patients(self) -> list[str | None]:
        return [item.patient_id for item in self.items]


def predict_items(model: nn.Module, items: list[data.LabelledImage], classes: list[str],
                  preprocessing: Preprocessing, temperature: float, *, batch_size: int, workers: int,
                  device: torch.device, offsets: list[float] | None = None) -> Predictions:
    known = [item for item in items if item.label in classes]
    if not known:
        raise data.DataError(f"none of the labels {sorted({i.label for i in items})} are classes {classes}")
    loader = make_loader(data.LabelledDataset(known, classes, preprocessing), batch_size=batch_size,
                         workers=workers, device=device)
    logits, labels, _ = evaluate(model, loader, device)
    # float64: float32 probabilities round p_i / (p_i + p_j) to 1 once (z_i - z_j) / T passes about 17, which ties
    # images whose logits do not tie (a sharp temperature does that to many), and pairwise AUROCs count ties as 1/2
    probabilities = calibrated_probabilities(torch.from_numpy(logits).double(), temperature, offsets).numpy()
    return Predictions(known, labels, probabilities, logits, len(items) - len(known))


def prediction_metrics(predictions: Predictions, classes: list[str], *, n_resamples: int = DEFAULT_RESAMPLES) -> dict:
    """Calibrated metrics with bootstrap intervals (by patient), and accuracy per source."""
    y, p = predictions.labels, predictions.probabilities
    metrics = classification_metrics(y, p, classes)
    metrics["ece"] = expected_calibration_error(p, y)
    metrics["balanced_accuracy"] = balanced_accuracy(y, p)
    metrics["intervals"] = bootstrap_summary(y, p, classes, predictions.patients, n_resamples=n_resamples)
    sources = [item.source for item in predictions.items]
    metrics["per_source"] = accuracy_by_group(sources, y, p, classes)
    metrics["left_out_unknown_label"] = predictions.left_out_unknown_label
    return metrics


def evaluate_items(model: nn.Module, items: list[data.LabelledImage], classes: list[str],
                   preprocessing: Preprocessing, temperature: float, *, batch_size: int, workers: int,
                   device: torch.device) -> dict:
    """Calibrated metrics with bootstrap intervals, and accuracy per source, of a model on the (readable)
    items whose labels it knows."""
    return prediction_metrics(predict_items(model, items, classes, preprocessing, temperature,
                                            batch_size=batch_size, workers=workers, device=device), classes)

