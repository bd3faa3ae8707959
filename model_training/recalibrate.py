"""``cxr-train recalibrate``: a new version with an existing version's weights as they are, and a temperature and
per-class logit offsets fitted on the site's reviewed cases: probabilities ``softmax(logits / T + b)``.

The ranking cannot get worse: for any two classes i and j, ``p_i / (p_i + p_j)`` is the logistic function of
``(z_i - z_j) / T + b_i - b_j``, increasing in ``z_i - z_j``, so every pairwise AUROC (covid vs pneumonia) is the
parent's exactly. What changes is the decision (which class is highest, hence recall and balanced accuracy) and
how confident the probabilities are. The new checkpoint has its own sha256, so it registers as a new version,
inactive until promoted, with the parent's training images and the fitted cases recorded as its training data.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from db import evidence, model_versions
from db.engine import read_session
from db.errors import CannotRun
from model_training import data
from model_training.calibration import OffsetFit, balanced_nll, fit_temperature_and_offsets, softmax
from model_training.card import jsonable, write_model_card
from model_training.config import RecalibrateConfig
from model_training.metrics import balanced_accuracy, classification_metrics, reliability_bins
from model_training.predictions import evaluate, make_loader
from model_training.registration import database_at, register
from model_training.train import CHECKPOINT_NAME
from scoring.model import Checkpoint, checkpoint_sha256, load_checkpoint, resolve_device, save_checkpoint

log = logging.getLogger("cxr.train")

class RecalibrateError(CannotRun, ValueError):
    """A recalibration that cannot run, with a message that says why."""


@dataclass(frozen=True)
class Parent:
    """The version whose weights are kept: its checkpoint file, and its registered id where it has one."""

    path: Path
    sha256: str
    version_id: int | None
    name: str | None


@dataclass
class RecalibrationResult:
    checkpoint: Path
    model_version_id: int
    fit: OffsetFit
    metrics: dict[str, Any]


def find_parent(db: str | None, source: str) -> Parent:
    """``--from``: an existing checkpoint file (its version where registered) or a registered version's reference,
    whose file must still hold the registered bytes."""
    with read_session(database_at(db)) as session:
        if Path(source).is_file():
            sha = checkpoint_sha256(source)
            version = model_versions.find_by_sha(session, sha)
            if version is None:
                log.warning("%s is not a registered version: the training data of its weights cannot be recorded "
                            "with the new version (register it first, e.g. by scoring with it)", source)
            return Parent(Path(source), sha, version and version.id, version and version.name)
        version = model_versions.find_by_ref(session, source)
        path = Path(version.path)
        if not path.is_file():
            raise RecalibrateError(f"model version {model_versions.label(version)}: its checkpoint {path} is missing")
        if checkpoint_sha256(path) != version.sha256:
            raise RecalibrateError(f"model version {model_versions.label(version)}: {path} no longer holds the "
                                   "registered checkpoint (its sha256 differs)")
        return Parent(path, version.sha256, version.id, version.name)


def weights_origin(checkpoint: Checkpoint, parent: Parent) -> dict[str, Any]:
    """The version whose training made these weights: the parent itself, or, where the parent is a recalibrated
    version, the one it was recalibrated from (recorded in it). A recalibration replaces the parent's calibration
    whole, so the cases the parent's calibration was fitted on may be fitted again; only what the weights learnt
    from is left out."""
    record = checkpoint.training.get("recalibration")
    if not record:
        return {"sha256": parent.sha256, "model_version_id": parent.version_id, "name": parent.name}
    origin = record.get("weights_from") or record["parent"]
    return {key: origin.get(key) for key in ("sha256", "model_version_id", "name")}


def fitting_cases(db: str | None, origin_version_id: int | None, classes: list[str]) -> list[data.LabelledImage]:
    """The latest review of every reviewed image whose label is one of ``classes`` and whose file is readable,
    one per content, except the images the weights were trained or validated on (``origin_version_id``'s) and the
    other films of their patients: a fit on what the weights learnt from would learn their over-confidence there."""
    with read_session(database_at(db)) as session:
        cases = data.with_hashes(data.reviewed_cases(session))
        trained = evidence.trained_content(session, origin_version_id) if origin_version_id is not None else set()
    by_content = {case.sha256: case for case in cases if case.label in classes}  # reviews in order: the latest wins
    kept = [case for sha, case in by_content.items() if sha not in trained]
    if len(kept) < len(by_content):
        log.info("recalibrate: %d reviewed cases left out: the weights were trained or validated on them or "
                 "their patients",
                 len(by_content) - len(kept))
    readable, rejected = data.readable(kept)
    data.log_left_out(rejected, "recalibrate")
    return readable


def fitted_classes(cases: list[data.LabelledImage], classes: list[str], min_cases: int) -> list[str]:
    counts = Counter(case.label for case in cases)
    chosen = [c for c in classes if counts[c] >= min_cases]
    if len(chosen) < 2:
        raise RecalibrateError(f"need at least {min_cases} reviewed cases in each of two classes to fit offsets; "
                               f"the reviews hold {dict(counts) or 'none'} (of the classes {classes})")
    return chosen


def case_logits(checkpoint: Checkpoint, cases: list[data.LabelledImage], config: RecalibrateConfig
                ) -> tuple[np.ndarray, np.ndarray]:
    """The parent's raw logits (float64) and class indices of ``cases``."""
    device = resolve_device(config.device)
    dataset = data.LabelledDataset(cases, checkpoint.classes, checkpoint.preprocessing)
    loader = make_loader(dataset, batch_size=config.batch_size, workers=config.workers, device=device)
    logits, labels, _ = evaluate(checkpoint.build().to(device), loader, device)
    return logits.astype(np.float64), labels


def fit_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str], temperature: float,
                offsets: list[float]) -> dict[str, Any]:
    """Figures of one calibration on the fitting cases themselves (in-sample)."""
    probabilities = softmax(logits, temperature, offsets)
    metrics = classification_metrics(labels, probabilities, classes)
    metrics["balanced_accuracy"] = balanced_accuracy(labels, probabilities)
    metrics["ece"] = reliability_bins(probabilities, labels)["ece"]
    metrics["balanced_nll"] = balanced_nll(logits, labels, temperature, offsets)
    return metrics


def recalibrate(config: RecalibrateConfig) -> RecalibrationResult:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    name = config.name or out.name
    if len(name) > 128:
        raise RecalibrateError(f"version name too long: {len(name)} characters, at most 128")
    parent = find_parent(config.db, config.source)
    checkpoint = load_checkpoint(parent.path)
    origin = weights_origin(checkpoint, parent)
    cases = fitting_cases(config.db, origin["model_version_id"], checkpoint.classes)
    chosen = fitted_classes(cases, checkpoint.classes, config.min_cases)
    used = [case for case in cases if case.label in chosen]
    logits, labels = case_logits(checkpoint, used, config)
    fit = fit_temperature_and_offsets(logits, labels, [checkpoint.classes.index(c) for c in chosen])
    offsets = [float(b) for b in fit.offsets]
    before = fit_metrics(logits, labels, checkpoint.classes, checkpoint.temperature, checkpoint.logit_offsets)
    after = fit_metrics(logits, labels, checkpoint.classes, fit.temperature, offsets)
    record = {"parent": {"sha256": parent.sha256, "model_version_id": parent.version_id, "name": parent.name,
                         "temperature": checkpoint.temperature, "offsets": dict(zip(checkpoint.classes,
                                                                                    checkpoint.logit_offsets,
                                                                                    strict=True))},
              "weights_from": origin,
              "fitted": "temperature and per-class logit offsets; weights unchanged",
              "loss": "class-balanced negative log-likelihood (each class weighs the same)",
              "temperature": fit.temperature, "offsets": dict(zip(checkpoint.classes, offsets, strict=True)),
              "cases_per_class": dict(zip(chosen, fit.cases, strict=True)),
              "classes_not_fitted": {c: sum(case.label == c for case in cases) for c in checkpoint.classes
                                     if c not in chosen},
              "min_cases": config.min_cases, "iterations": fit.iterations, "temperature_at_bound": fit.at_bound}
    metrics = {"recalibration": record,
               "calibration": {"temperature": fit.temperature, "ece_before": before["ece"], "ece_after": after["ece"],
                               "nll_before": before["balanced_nll"], "nll_after": after["balanced_nll"],
                               "fit_on": f"{len(used)} reviewed cases, class-balanced, with per-class offsets",
                               "evaluated_on": "the same reviewed cases (in-sample: optimistic)", "n_bins": 15},
               "reviewed cases, parent's calibration": before,
               "reviewed cases, recalibrated (in-sample)": after}
    data_summary = {"fitting cases": data.summary(used), "weights": f"the parent's ({parent.sha256[:12]}), unchanged"}
    new = Checkpoint(checkpoint.arch, checkpoint.classes, checkpoint.preprocessing, checkpoint.state_dict,
                     temperature=fit.temperature, logit_offsets=offsets,
                     training={**{k: v for k, v in checkpoint.training.items() if k in ("config", "initialisation",
                                                                                           "recipe", "synthetic")},
                               "name": name, "recalibration": {**record, "options": config.recorded()},
                               "metrics": jsonable(metrics), "data": jsonable(data_summary)})
    path = save_checkpoint(out / CHECKPOINT_NAME, new)
    reliability = {"before": reliability_bins(softmax(logits, checkpoint.temperature, checkpoint.logit_offsets),
                                              labels),
                   "after": reliability_bins(softmax(logits, fit.temperature, offsets), labels),
                   "temperature": fit.temperature, "split": "reviewed cases (in-sample)"}
    write_model_card(out, name=name, config={"arch": checkpoint.arch, "recalibrate": config.recorded()},
                     data_summary=data_summary, metrics=jsonable(metrics), history=[], reliability=reliability,
                     synthetic=bool(checkpoint.training.get("synthetic")))
    version_id = register(config.db, path, new, used, parent_id=parent.version_id)
    log.info("recalibrated %s on %s: T %.3f, offsets %s; registered as model version %d (inactive)",
             parent.name or parent.sha256[:12], record["cases_per_class"], fit.temperature,
             {c: round(b, 3) for c, b in record["offsets"].items()}, version_id)
    return RecalibrationResult(path, version_id, fit, metrics)
