"""Train a chest X-ray classifier, top to bottom: data -> split -> model -> epochs with early stopping ->
temperature calibration -> checkpoint, model card and registration (inactive) in the database.

Everything a run needs is in :class:`TrainConfig`, saved as ``config.json`` next to the checkpoint (the database
URL's password hidden). A killed run continues from ``last.pt`` with ``--resume``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import models

from db import model_versions
from db.clitools import one_line, os_error_in
from db.engine import read_session
from db.errors import CannotRun
from model_training import data, pretrained
from model_training.calibration import fit_temperature, softmax, temperature_nll
from model_training.card import write_model_card
from model_training.config import TrainConfig
from model_training.metrics import (
    accuracy_by_group,
    balanced_accuracy,
    bootstrap_summary,
    classification_metrics,
    expected_calibration_error,
    reliability_bins,
)
from model_training.predictions import evaluate, evaluate_items, make_loader
from model_training.registration import database_at, register
from scoring.attribution.report import outside_share_summary
from scoring.model import (
    Checkpoint,
    Preprocessing,
    atomic_write,
    autocast,
    autocast_dtype,
    build_model,
    calibrated_probabilities,
    grey_conv1_from_rgb,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)

log = logging.getLogger("cxr.train")

CHECKPOINT_NAME, STATE_NAME, HISTORY_NAME = "model.pt", "last.pt", "history.csv"


class TrainError(CannotRun, RuntimeError):
    """A training run that cannot start or continue, with a message that says why."""


@dataclass(frozen=True)
class Recipe:
    """How a version is trained beyond the optimiser settings. ``RETRAIN_RECIPE`` was chosen with
    ``benchmarks/closed_loop.py`` (cross-fitted on cxr-adult; docs/benchmarks.md has the figures): with a
    hundred-odd reviews, freezing the network up to ``layer3`` and drawing most of each epoch from reviewed cases
    gave the largest balanced-accuracy gain on unseen adult patients, at no measurable cost on cxr-dev; re-run with
    the current v1 it is still first, though within noise of freezing less, and training the head alone stays
    clearly worse. The features up to ``layer3`` stay the active version's, so a ranking those features cannot
    make is not learned either."""

    from_active: bool      # start from the active version's weights (unless --pretrained names others)
    review_share: float    # share of each epoch's draws that are reviewed cases, class-balanced; 0: no resampling
    freeze_blocks: int     # 0: train everything; k: the stem and layer1..layerk keep their weights
    border_mask: float     # border-band masking augmentation, up to this share of the side per edge; 0: off

    def __post_init__(self):
        if not 0 <= self.review_share < 1:
            raise TrainError(f"review_share must be in [0, 1), got {self.review_share}")
        if not 0 <= self.freeze_blocks <= 4:
            raise TrainError(f"freeze_blocks must be 0..4, got {self.freeze_blocks}")
        if not 0 <= self.border_mask < 0.5:
            raise TrainError(f"border_mask must be in [0, 0.5), got {self.border_mask}")


PLAIN_RECIPE = Recipe(from_active=False, review_share=0.0, freeze_blocks=0, border_mask=0.0)
RETRAIN_RECIPE = Recipe(from_active=True, review_share=0.8, freeze_blocks=3, border_mask=0.1)


def resolve_recipe(config: TrainConfig) -> Recipe:
    """The recipe of a run: the base recipe, with every field the configuration sets (not None) overriding it."""
    base = RETRAIN_RECIPE if config.include_reviews else PLAIN_RECIPE
    chosen = {f.name: getattr(config, f.name) for f in dataclasses.fields(Recipe)
              if getattr(config, f.name) is not None}
    return dataclasses.replace(base, **chosen)


@dataclass
class TrainResult:
    checkpoint: Path
    model_version_id: int | None
    metrics: dict[str, Any]


# --- the steps ------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def imagenet_weights_file(arch: str) -> tuple[Path, str]:
    """Where torchvision caches the ImageNet weights of ``arch``, and where they come from."""
    url = models.get_model_weights(arch).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


def load_pretrained(model: nn.Module, spec: str, arch: str, preprocessing: Preprocessing | None = None) -> str:
    """Initialise from ImageNet (local cache only; never downloads), a CXR Review checkpoint, a torchvision state
    dict or a torchxrayvision ResNet state dict (see :mod:`model_training.pretrained`). Returns a note."""
    layout_note = ""
    if spec == "imagenet":
        path, url = imagenet_weights_file(arch)
        if not path.is_file():
            raise TrainError(f"--pretrained imagenet: the {arch} ImageNet weights are not in the local cache, and "
                             f"CXR Review never downloads at run time. Put {path.name} (from {url}) at {path}, "
                             "or train from scratch without --pretrained.")
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        path = Path(spec)
        if not path.is_file():
            raise TrainError(f"--pretrained {spec}: no such file")
        try:
            checkpoint = load_checkpoint(path)
        except Exception:  # not our format: a plain torchvision (or torchxrayvision) state dict
            checkpoint = None
        if checkpoint is None:
            state = _plain_state_dict(path, spec)
            if pretrained.is_torchxrayvision(state):
                if arch != "resnet50":
                    raise TrainError(f"--pretrained {spec}: torchxrayvision ResNet weights are a ResNet-50; "
                                     f"add --arch resnet50 (this run is a {arch})")
                try:
                    mapped = pretrained.map_torchxrayvision(state, preprocessing or Preprocessing(512))
                except pretrained.PretrainedError as exc:
                    raise TrainError(f"--pretrained {spec}: {exc}") from None
                state, layout_note = mapped.state, f"; {mapped.note}"
        else:
            if checkpoint.arch != arch:
                raise TrainError(f"--pretrained {spec} is a {checkpoint.arch}, not a {arch}")
            state = checkpoint.state_dict
    state = dict(state)
    if state.get("conv1.weight") is not None and state["conv1.weight"].shape[1] == 3:
        state["conv1.weight"] = grey_conv1_from_rgb(state["conv1.weight"])
    head = model.fc.weight.shape
    if state.get("fc.weight") is not None and state["fc.weight"].shape != head:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # a new head for these classes
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    wrong = [f"{k} {tuple(v.shape)} (model {tuple(shapes[k])})" for k, v in state.items()
             if k in shapes and v.shape != shapes[k]]
    if wrong:
        raise TrainError(f"--pretrained {spec} does not fit {arch}: shapes differ for {wrong[:3]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith("fc.") for key in missing):
        raise TrainError(f"--pretrained {spec} does not fit {arch}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return f"{spec} ({path}){layout_note}"


def _plain_state_dict(path: Path, spec: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainError(f"--pretrained {spec}: neither a CXR Review checkpoint nor a state dict of tensors "
                         f"({type(exc).__name__}); save a whole model's weights with "
                         "torch.save(model.state_dict(), path)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrainError(f"--pretrained {spec}: holds a {type(state).__name__}, not a state dict of tensors")
    return state


def class_weights(items: list[data.LabelledImage], classes: list[str]) -> torch.Tensor:
    """Inverse-frequency weights (mean 1) for the loss, so a rare class is not ignored."""
    counts = np.array([sum(item.label == c for item in items) for c in classes], dtype=np.float64)
    return torch.tensor(counts.sum() / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32)


def review_sample_weights(items: list[data.LabelledImage], review_share: float) -> torch.Tensor | None:
    """Draw weights that give reviewed cases ``review_share`` of each epoch, each part balanced by class (so
    fifty reviewed adult pneumonias are not drowned out by hundreds of dataset images). None: no reviewed
    cases, or ``review_share`` 0."""
    reviewed = [item.review_id is not None for item in items]
    if review_share <= 0 or not any(reviewed) or all(reviewed):
        return None
    weights = torch.zeros(len(items), dtype=torch.float64)
    for part, share in ((True, review_share), (False, 1.0 - review_share)):
        members = [i for i, r in enumerate(reviewed) if r == part]
        labels = sorted({items[i].label for i in members})
        for label in labels:
            cell = [i for i in members if items[i].label == label]
            weights[cell] = share / len(labels) / len(cell)
    return weights


def frozen_modules(model: nn.Module, blocks: int) -> list[nn.Module]:
    """The stem and ``layer1..layer{blocks}`` of a ResNet, their parameters frozen (none for 0)."""
    if blocks <= 0:
        return []
    modules = [model.conv1, model.bn1] + [getattr(model, f"layer{i}") for i in range(1, blocks + 1)]
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    return modules


def loss_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast (a GPU without bf16), whose small gradients would otherwise underflow;
    disabled, a no-op, for bf16 and float32."""
    return torch.amp.GradScaler(device.type, enabled=autocast_dtype(device) == torch.float16)


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, weights: torch.Tensor,
                    device: torch.device, progress: bool, epoch: int, *, scaler: torch.amp.GradScaler,
                    frozen: list[nn.Module] | None = None) -> float:
    model.train()
    for module in frozen or []:
        module.eval()  # frozen blocks keep their batch-norm statistics too
    dtype = autocast_dtype(device)
    total, seen = 0.0, 0
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, file=sys.stderr)
    for images, labels in batches:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.to(memory_format=torch.channels_last)
        with autocast(device, dtype):
            loss = F.cross_entropy(model(images).float(), labels, weight=weights.to(device))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += float(loss.detach()) * len(labels)
        seen += len(labels)
    return total / max(seen, 1)


def calibrated_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str], temperature: float) -> dict:
    probabilities = calibrated_probabilities(torch.from_numpy(logits), temperature).numpy()
    metrics = classification_metrics(labels, probabilities, classes)
    metrics["ece"] = expected_calibration_error(probabilities, labels)
    return metrics


def split_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str], temperature: float,
                  patients: list[str | None]) -> dict:
    """Calibrated metrics of one split, with balanced accuracy and bootstrap intervals (by patient)."""
    metrics = calibrated_metrics(logits, labels, classes, temperature)
    probabilities = softmax(logits, temperature)
    metrics["balanced_accuracy"] = balanced_accuracy(labels, probabilities)
    metrics["intervals"] = bootstrap_summary(labels, probabilities, classes, patients)
    return metrics


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    try:
        with atomic_write(path) as handle:
            torch.save(state, handle)
    except Exception as exc:  # a full disk or a folder gone read-only: the atomic write kept the last epoch's state
        refused = os_error_in(exc)  # torch.save reports a failed write as its own RuntimeError
        if refused is None:
            raise
        raise TrainError(f"cannot save the training state {path}: {refused.strerror or one_line(refused)}; the "
                         f"previous epoch's {STATE_NAME} (if any) is intact: free space, then rerun with --resume"
                         ) from None


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """The whole history, rewritten atomically from the saved state's rows after each epoch: appending a row
    before ``last.pt`` is saved would repeat that epoch's row when a run killed in between is resumed."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def prepare_data(config: TrainConfig) -> tuple[list[data.LabelledImage], list[data.LabelledImage] | None, dict]:
    """Training candidates (dataset + reviews, minus the evaluation set and its patients' other films), the
    evaluation set, and counts for the model card."""
    items = data.deduplicate(data.with_hashes(data.load_labelled(config.data)))
    notes: dict[str, int] = {}
    if config.include_reviews:
        with read_session(database(config)) as session:
            items = data.merge_reviews(items, data.with_hashes(data.reviewed_cases(session)))
    eval_items = None
    if config.eval_data:
        eval_items = data.deduplicate(data.with_hashes(data.load_labelled(config.eval_data)))
        held_out = data.without(items, eval_items)
        items = held_out.kept
        log.info("evaluation set: %d images of %d patients; removed from training: %d identical images, %d other "
                 "images of the evaluation set's patients", len(eval_items),
                 len({item.group for item in eval_items}), held_out.same_content, held_out.same_patient)
        notes = {"removed_as_in_evaluation_set": held_out.same_content,
                 "removed_as_evaluation_set_patients": held_out.same_patient}
    items, rejected = data.readable(items)
    data.log_left_out(rejected, "training")
    return items, eval_items, {**notes, "rejected": len(rejected)}


def validation_items(config: TrainConfig) -> list[data.LabelledImage]:
    """The validation split of a run with this configuration, made again as :func:`train` makes it (same data,
    reviews, fraction and seed)."""
    items, _, _ = prepare_data(config)
    return data.patient_split(items, config.val_fraction, config.seed)[1]


def active_checkpoint(config: TrainConfig) -> str | None:
    """The checkpoint file of the database's active version, where there is one (else None, logged)."""
    with read_session(database(config)) as session:
        version = model_versions.active_version(session)
        path = version.path if version is not None else None
    if path is None:
        log.warning("recipe: start from the active version, but no version is active; starting from random weights")
        return None
    if not Path(path).is_file():
        raise TrainError(f"the active version's checkpoint {path} is missing; pass --pretrained PATH or "
                         "--no-from-active")
    return path


def check_same_split(spec: str, config: TrainConfig, *, retraining: bool) -> None:
    """Refuse to start from a CXR Review checkpoint that split the same patients with another ``--seed`` or
    ``--val-fraction``. The split is a keyed hash of each patient with these two, so another pair would put patients
    the starting weights trained on into this run's validation split: early stopping, the temperature and the
    reported figures would partly measure memory. Checked when retraining from the active version, or when the
    starting version recorded the same data folder; weights trained on other data split other patients."""
    try:
        recorded = load_checkpoint(Path(spec)).training.get("config", {})
    except Exception:  # not our checkpoint (torchvision or torchxrayvision weights): it recorded no split
        return
    same_data = bool(recorded.get("data")) and Path(recorded["data"]).resolve() == Path(config.data).resolve()
    if not (retraining or same_data):
        return
    differ = [f"--{key.replace('_', '-')} {getattr(config, key)} (it used {recorded[key]})"
              for key in ("seed", "val_fraction") if key in recorded and recorded[key] != getattr(config, key)]
    if differ:
        raise TrainError(f"this run would split patients unlike the version it starts from ({spec}): "
                         f"{', '.join(differ)}; patients that version trained on would land in this run's "
                         "validation split. Use its values, or start from other weights")


def recipe_record(recipe: Recipe, config: TrainConfig, init_note: str) -> dict[str, Any]:
    """The recipe as the checkpoint and the model card record it."""
    return {**dataclasses.asdict(recipe), "base": "retrain" if config.include_reviews else "plain",
            "initial_weights": init_note, "epochs": config.epochs, "lr": config.lr}


def database(config: TrainConfig):
    return database_at(config.db)



# --- the run --------------------------------------------------------------------------------------------

def train(config: TrainConfig, *, resume: bool = False, progress: bool = False) -> TrainResult:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    config.name = config.name or out.name
    if len(config.name) > 128:
        raise TrainError(f"version name too long: {len(config.name)} characters, at most 128")
    if config.batch_size < 2:  # batch norm cannot train on a batch of one image
        raise TrainError(f"--batch-size must be at least 2, got {config.batch_size}")
    recipe = resolve_recipe(config)
    for key, value in dataclasses.asdict(recipe).items():
        setattr(config, key, value)  # config.json records the values the run used
    seed_everything(config.seed)
    device = resolve_device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)

    # data
    items, eval_items, data_notes = prepare_data(config)
    config.synthetic = config.synthetic or all(item.source == "synthetic" for item in items)
    classes = sorted({item.label for item in items})
    if len(classes) < 2:
        raise TrainError(f"need at least two classes to train, found {classes}")
    state = _load_state(out, config) if resume else None
    if state is None:
        train_items, val_items = data.patient_split(items, config.val_fraction, config.seed)
    else:
        val_shas = set(state["val_sha256"])  # the killed run's, so reviews added since do not change it
        # in the items' order, as patient_split gives them: the same indices, hence the same draws and augmentations
        train_items = [item for item in items if item.sha256 not in val_shas]
        val_items = [item for item in items if item.sha256 in val_shas]
    overlap = {i.group for i in train_items} & {i.group for i in val_items}
    assert not overlap, f"patients in both splits: {sorted(overlap)[:5]}"
    if len(train_items) < 2:
        raise TrainError(f"{len(train_items)} training image(s) after the validation split; need at least 2")
    log.info("data: %d training, %d validation images; classes %s", len(train_items), len(val_items), classes)
    config.save(out)

    # model and optimisation
    preprocessing = Preprocessing(config.img_size)
    augmentation = data.Augmentation(hflip=config.hflip, border=recipe.border_mask) if config.augment else None
    train_set = data.LabelledDataset(train_items, classes, preprocessing, augmentation, seed=config.seed)
    val_loader = make_loader(data.LabelledDataset(val_items, classes, preprocessing),
                             batch_size=config.batch_size, workers=config.workers, device=device)
    model = build_model(config.arch, len(classes))
    initial = config.pretrained or (active_checkpoint(config) if recipe.from_active else None)
    if initial and initial != "imagenet":
        check_same_split(initial, config, retraining=not config.pretrained)
    init_note = load_pretrained(model, initial, config.arch, preprocessing) if initial else "random"
    frozen = frozen_modules(model, recipe.freeze_blocks)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    scaler = loss_scaler(device)
    draw_weights = review_sample_weights(train_items, recipe.review_share)
    # class balance comes from the loss weights, or from the class-balanced draws where reviews are resampled
    weights = class_weights(train_items, classes) if draw_weights is None else torch.ones(len(classes))
    log.info("recipe %s; initial weights: %s", dataclasses.asdict(recipe), init_note)
    history: list[dict] = []
    best = {"score": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    start_epoch = 1
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # empty unless the run used fp16 loss scaling
            scaler.load_state_dict(state["scaler"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        log.info("resuming after epoch %d (best macro-F1 %.3f at epoch %d)", state["epoch"], best["score"],
                 best["epoch"])

    # epochs
    for epoch in range(start_epoch, config.epochs + 1):
        if epoch - best["epoch"] > config.patience and best["epoch"] > 0:
            log.info("early stop: no better validation macro-F1 for %d epochs", config.patience)
            break
        started = time.perf_counter()
        train_set.set_epoch(epoch)
        train_loader = make_loader(train_set, batch_size=config.batch_size, workers=config.workers, device=device,
                                   shuffle_seed=config.seed * 1000 + epoch, sample_weights=draw_weights)
        train_loss = train_one_epoch(model, train_loader, optimizer, weights, device, progress, epoch, scaler=scaler,
                                     frozen=frozen)
        scheduler.step()
        logits, labels, val_loss = evaluate(model, val_loader, device)
        metrics = calibrated_metrics(logits, labels, classes, 1.0)
        row = {"epoch": epoch, "train_loss": round(train_loss, 5), "val_loss": round(val_loss, 5),
               "val_accuracy": round(metrics["accuracy"], 5), "val_macro_f1": round(metrics["macro_f1"], 5),
               "val_macro_auroc": metrics["macro_auroc"], "lr": optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - started, 2)}
        history.append(row)
        log.info("epoch %d: train loss %.4f, val loss %.4f, val acc %.3f, macro-F1 %.3f, macro-AUROC %s, %.1f s",
                 epoch, train_loss, val_loss, metrics["accuracy"], metrics["macro_f1"],
                 _fmt(metrics["macro_auroc"]), row["seconds"])
        if metrics["macro_f1"] > best["score"] + 1e-4:
            best = {"score": metrics["macro_f1"], "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        save_training_state(out / STATE_NAME, {
            "config": config.recorded(), "epoch": epoch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "history": history, "best": best, "val_sha256": [item.sha256 for item in val_items]})
        write_history(out / HISTORY_NAME, history)

    # calibration on the validation split, with the best epoch's weights
    model.load_state_dict(best["state"])
    logits, labels, _ = evaluate(model, val_loader, device)
    temperature = fit_temperature(logits, labels)
    before = calibrated_metrics(logits, labels, classes, 1.0)
    after = split_metrics(logits, labels, classes, temperature, [i.patient_id for i in val_items])
    reliability = {"before": reliability_bins(softmax(logits, 1.0), labels),
                   "after": reliability_bins(softmax(logits, temperature), labels),
                   "temperature": temperature, "split": "validation"}
    calibration = {"temperature": temperature, "ece_before": before["ece"], "ece_after": after["ece"],
                   "nll_before": temperature_nll(logits, labels, 1.0),
                   "nll_after": temperature_nll(logits, labels, temperature),
                   "fit_on": "validation", "evaluated_on": "validation", "n_bins": reliability["after"]["n_bins"]}
    metrics = {"best_epoch": best["epoch"], "temperature": temperature, "validation": after,
               "calibration": calibration,
               "per_source": {"validation": accuracy_by_group([i.source for i in val_items], labels,
                                                              softmax(logits, temperature), classes)}}
    # the validation split is mostly dataset images; its reviewed cases alone show how the version (and its
    # temperature) does on the site's own films
    reviewed = np.array([item.review_id is not None for item in val_items])
    if reviewed.any():
        metrics["validation_reviewed_cases"] = split_metrics(
            logits[reviewed], labels[reviewed], classes, temperature,
            [item.patient_id for item in val_items if item.review_id is not None])
    log.info("temperature %.3f: validation ECE %.4f -> %.4f", temperature, before["ece"], after["ece"])
    if eval_items is not None:
        readable_eval, _ = data.readable(eval_items)
        metrics["evaluation_set"] = evaluate_items(model, readable_eval, classes, preprocessing, temperature,
                                                   batch_size=config.batch_size, workers=config.workers,
                                                   device=device)

    # checkpoint, card, registration
    data_summary = {"train": data.summary(train_items), "validation": data.summary(val_items),
                    "evaluation_set": data.summary(eval_items) if eval_items else None, **data_notes}
    checkpoint = Checkpoint(config.arch, classes, preprocessing, {k: v.cpu() for k, v in best["state"].items()},
                            temperature=temperature,
                            training={"name": config.name, "synthetic": config.synthetic,
                                      "config": config.recorded(), "initialisation": init_note,
                                      "recipe": recipe_record(recipe, config, init_note),
                                      "metrics": _plain(metrics), "data": _plain(data_summary)})
    metrics["attribution"] = outside_share_summary(checkpoint, [i.path for i in val_items],
                                                   [i.label for i in val_items], [i.source for i in val_items],
                                                   "validation")
    checkpoint.training["metrics"] = _plain(metrics)
    checkpoint_path = save_checkpoint(out / CHECKPOINT_NAME, checkpoint)
    write_model_card(out, name=config.name,
                     config={**config.recorded(), "recipe": recipe_record(recipe, config, init_note)},
                     data_summary=data_summary,
                     metrics=_plain(metrics), history=history, reliability=reliability, synthetic=config.synthetic)
    version_id = register(config.db, checkpoint_path, checkpoint, train_items + val_items)
    (out / STATE_NAME).unlink(missing_ok=True)
    log.info("wrote %s; registered as model version %d (inactive: `cxr-train promote %d` makes it the scorer's)",
             checkpoint_path, version_id, version_id)
    return TrainResult(checkpoint_path, version_id, metrics)


_STATE_KEYS = ("config", "epoch", "model", "optimizer", "scheduler", "history", "best", "val_sha256")


def _load_state(out: Path, config: TrainConfig) -> dict | None:
    path = out / STATE_NAME
    if not path.is_file():
        raise TrainError(f"--resume: no {STATE_NAME} in {out} (a finished run removes it)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle, weights-only and EOF errors all mean the same: nothing to resume from
        # torch's own text is long and, for weights-only errors, advises loading untrusted code: the type is enough
        raise _unusable_state(path, f"cut short or not a file torch.save wrote: {type(exc).__name__}") from None
    if (not isinstance(state, dict) or not all(key in state for key in _STATE_KEYS)
            or not isinstance(state["config"], dict)):
        raise _unusable_state(path, "not the training state this program saves")
    saved = state["config"]
    for key in ("data", "arch", "img_size", "seed", "val_fraction", "include_reviews", "eval_data"):
        if saved.get(key) != getattr(config, key):
            raise TrainError(f"--resume: {key} was {saved.get(key)!r} in the killed run, now {getattr(config, key)!r}")
    return state


def _unusable_state(path: Path, reason: str) -> TrainError:
    """``last.pt`` is written atomically, so a damaged one was cut or changed by something else (a full disk
    under a copy, a restore gone wrong): say which file, and the two ways on."""
    return TrainError(f"--resume: the training state {path} cannot be used ({reason}); restore it from a backup, "
                      f"or delete it and run without --resume to start this run over")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _plain(value: Any) -> Any:
    """JSON-safe copy (numpy scalars become Python numbers)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
