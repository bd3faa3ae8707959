"""Labelled images for training and evaluation: loading, patient-level splits, reviewers' corrections,
augmentation and the torch Dataset.

Every image goes through the project's reader and the one shared ``preprocess`` (via the checkpoint's
:class:`~scoring.model.Preprocessing`), so training and scoring see identical inputs.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sqlalchemy import select
from sqlalchemy.orm import Session
from torch.utils.data import Dataset

from db import attributions
from db.config import pseudonymise
from db.errors import CannotRun
from db.hashing import file_sha256
from db.models import Image, Review
from db.paths import to_fs
from db.reviews import latest_reviews
from scoring import imaging
from scoring.imaging.verified import first_holding
from scoring.model import Preprocessing

log = logging.getLogger("cxr.train")

LABELS_FILE = "labels.csv"
# Reviews with these labels say "no usable label": they never go into training.
NON_TRAINING_LABELS = frozenset({"ungradable", "other", "unsure"})


class DataError(CannotRun, ValueError):
    """Labelled data that cannot be used as given."""


@dataclass(frozen=True)
class LabelledImage:
    path: str
    label: str
    patient_id: str | None = None
    source: str | None = None
    sha256: str | None = None
    review_id: int | None = None  # set when the label comes from a reviewer

    @property
    def group(self) -> str:
        """What must never be split across train and validation: the patient, else the image itself."""
        return f"patient:{self.patient_id}" if self.patient_id else f"image:{self.sha256 or self.path}"


# --- loading --------------------------------------------------------------------------------------------

def load_labelled(data: str | Path) -> list[LabelledImage]:
    """A CSV (``file,label[,patient_id][,source]``; files relative to the CSV), a folder holding
    ``labels.csv``, or a folder with one sub-folder of images per class."""
    data = Path(data)
    if data.is_file():
        return _from_csv(data)
    if (data / LABELS_FILE).is_file():
        return _from_csv(data / LABELS_FILE)
    if data.is_dir():
        return _from_class_folders(data)
    raise DataError(f"{data}: no such file or folder")


def _from_csv(path: Path) -> list[LabelledImage]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
        items = []
        for line, row in enumerate(reader, start=2):
            if not row["file"] or not row["label"]:
                raise DataError(f"{path}:{line}: empty file or label in {row}")
            items.append(LabelledImage(str((path.parent / row["file"]).resolve()), row["label"].strip(),
                                       (row.get("patient_id") or "").strip() or None,
                                       (row.get("source") or "").strip() or None))
    if not items:
        raise DataError(f"{path}: no rows")
    return items


def _from_class_folders(root: Path) -> list[LabelledImage]:
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            items.append(LabelledImage(str(path.resolve()), folder.name, source=root.name))
    if not items:
        raise DataError(f"{root}: no class folders with images (and no {LABELS_FILE})")
    return items


def with_hashes(items: Iterable[LabelledImage]) -> list[LabelledImage]:
    return [item if item.sha256 else replace(item, sha256=file_sha256(item.path)) for item in items]


# --- reviewers' corrections -----------------------------------------------------------------------------

def reviewed_cases(session: Session) -> list[LabelledImage]:
    """The latest review of every reviewed image, with the reviewer's label (ungradable/other left out), at the
    first of the image's known places that still holds its content: a label is never learnt from another film
    saved under the reviewed one's name. A case with no copy left is left out, and counted in the log."""
    latest = latest_reviews()
    rows = session.execute(
        select(Review.id, Review.label, Image.id, Image.sha256, Image.patient_pseudonym)
        .join(latest, latest.c.review_id == Review.id)
        .join(Image, Image.id == Review.image_id)
        .order_by(Review.id))
    items, lost = [], 0
    for review_id, label, image_id, sha, pseudonym in rows:
        if label.strip().lower() in NON_TRAINING_LABELS:
            continue
        source = attributions.image_source(session, image_id)
        path = first_holding([to_fs(p) for p in source.paths], sha)
        if path is None:
            lost += 1
            continue
        items.append(LabelledImage(path, label, pseudonym, "review", sha, review_id))
    if lost:
        log.warning("reviews: %d reviewed cases left out: no copy of their image is left (changed, moved or "
                    "deleted since scoring; score the folder that holds them now)", lost)
    return items


def merge_reviews(items: list[LabelledImage], reviews: list[LabelledImage]) -> list[LabelledImage]:
    """Dataset plus reviewed cases, de-duplicated by content; a reviewer's label overrides the dataset's, and a
    reviewed film of a dataset's patient joins that patient (:func:`dataset_patients`)."""
    by_sha = {item.sha256: item for item in items}
    if None in by_sha:
        raise ValueError("merge_reviews needs hashed items (with_hashes)")
    overridden = 0
    for review in dataset_patients(items, reviews):
        existing = by_sha.get(review.sha256)
        if existing is None:
            by_sha[review.sha256] = review
        else:
            overridden += existing.label != review.label
            by_sha[review.sha256] = replace(existing, label=review.label, review_id=review.review_id)
    log.info("reviews: %d cases, %d new to the data, %d relabelled", len(reviews),
             len(by_sha) - len(items), overridden)
    return list(by_sha.values())


def dataset_patients(items: list[LabelledImage], reviews: list[LabelledImage]) -> list[LabelledImage]:
    """``reviews`` with the patient named as the dataset names it where the dataset has films of that patient: a
    dataset gives patient ids, a reviewed case the pseudonym (the keyed hash) of its id, so one patient would
    otherwise be two groups, and its films could land on both sides of the split."""
    by_pseudonym = {pseudonymise(item.patient_id): item.patient_id for item in items if item.patient_id}
    return [replace(review, patient_id=by_pseudonym.get(review.patient_id, review.patient_id)) for review in reviews]


def deduplicate(items: list[LabelledImage]) -> list[LabelledImage]:
    """One item per content hash (the first); conflicting labels for one content are an error."""
    seen: dict[str, LabelledImage] = {}
    for item in items:
        first = seen.setdefault(item.sha256, item)
        if first.label != item.label:
            raise DataError(f"{item.path} and {first.path} have the same content but labels "
                            f"{item.label!r} and {first.label!r}")
    return list(seen.values())


@dataclass(frozen=True)
class HeldOut:
    """Training candidates without a held-out set: what is kept, and how many films were removed for each reason."""

    kept: list[LabelledImage]
    same_content: int   # identical to a held-out film
    same_patient: int   # another film of a held-out patient


def without(items: list[LabelledImage], excluded: Iterable[LabelledImage]) -> HeldOut:
    """``items`` minus any content that is in ``excluded`` (e.g. a fixed evaluation set), and minus every other film
    of ``excluded``'s patients, where both name the patient with the same patient id (a model that saw a patient's
    other film would be evaluated on a patient it knows)."""
    excluded = list(excluded)
    shas = {item.sha256 for item in excluded}
    patients = {item.patient_id for item in excluded if item.patient_id}
    kept = [item for item in items if item.sha256 not in shas]
    unseen = [item for item in kept if item.patient_id not in patients]
    return HeldOut(unseen, len(items) - len(kept), len(kept) - len(unseen))


# --- splitting ------------------------------------------------------------------------------------------

def patients_by_main_label(items: list[LabelledImage]) -> tuple[dict[str, list[LabelledImage]],
                                                                dict[str, list[str]]]:
    """Each patient's images (in ``items`` order), and the patients of each main label (the label most of a
    patient's images carry), in sorted order: what splits by patient stratify on."""
    groups: dict[str, list[LabelledImage]] = defaultdict(list)
    for item in items:
        groups[item.group].append(item)
    by_label: dict[str, list[str]] = defaultdict(list)
    for name, members in sorted(groups.items()):
        by_label[Counter(m.label for m in members).most_common(1)[0][0]].append(name)
    return groups, by_label


def validation_draw(group: str, seed: int) -> float:
    """A number in [0, 1) fixed by the group and the seed alone (a hash of the group keyed with the seed)."""
    digest = hashlib.blake2b(group.encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big") / 2**64


def patient_split(items: list[LabelledImage], val_fraction: float, seed: int) -> tuple[list, list]:
    """Train/validation split by patient (no patient in both): a patient (an image without a patient id on its own)
    is in validation when its :func:`validation_draw` is below ``val_fraction``. The assignment depends on nothing
    else in the data, so with the same seed and fraction every version puts a film in the same split: adding
    reviews, or reviewing a dataset image, never moves a film that an earlier version trained on into the
    validation split of a version retrained from it. Each split keeps the order of ``items``.

    Classes get ``val_fraction`` of their patients in validation on average, not exactly. A class none of whose
    patients draws training would not be learnt: its patient with the highest draw trains (logged), until more
    patients of that class arrive."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    groups, by_label = patients_by_main_label(items)
    val_groups = {name for name in groups if validation_draw(name, seed) < val_fraction}
    for label, names in sorted(by_label.items()):
        if set(names) <= val_groups:
            kept = max(names, key=lambda name: validation_draw(name, seed))
            val_groups.discard(kept)
            log.warning("split: all %d patients of class %r draw validation with seed %d; one of them is trained "
                        "on instead, and may move to validation once more patients of that class arrive",
                        len(names), label, seed)
    train = [item for item in items if item.group not in val_groups]
    val = [item for item in items if item.group in val_groups]
    return train, val


# --- augmentation ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Augmentation:
    """Film-plausible changes: small rotation/scale/shift, brightness/contrast/gamma; no left-right flip
    by default (the heart is on the patient's left, and L/R markers matter)."""

    degrees: float = 7.0
    scale: float = 0.08
    shift: float = 0.05
    brightness: float = 0.08
    contrast: float = 0.15
    gamma: float = 0.2
    hflip: bool = False
    border: float = 0.0  # up to this share of the side masked per edge (against text and border shortcuts)

    def intensity(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """In reader space ([0, 1]) before preprocessing."""
        gamma = float(np.exp(rng.uniform(-self.gamma, self.gamma)))
        contrast = 1.0 + rng.uniform(-self.contrast, self.contrast)
        brightness = rng.uniform(-self.brightness, self.brightness)
        out = np.power(np.clip(pixels, 0.0, 1.0), gamma)
        out = (out - 0.5) * contrast + 0.5 + brightness
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def geometry(self, tensor: torch.Tensor, rng: np.random.Generator, fill: float) -> torch.Tensor:
        """On the preprocessed (1, S, S) tensor; uncovered corners get ``fill`` (the padding value)."""
        angle = np.deg2rad(rng.uniform(-self.degrees, self.degrees))
        scale = 1.0 + rng.uniform(-self.scale, self.scale)
        tx, ty = rng.uniform(-self.shift, self.shift, size=2) * 2  # affine_grid coordinates span [-1, 1]
        flip = -1.0 if self.hflip and rng.random() < 0.5 else 1.0
        cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
        theta = torch.tensor([[cos * flip, -sin, tx], [sin * flip, cos, ty]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta, [1, *tensor.shape], align_corners=False)
        shifted = tensor[None] - fill  # grid_sample fills with zeros: sample the offset image
        return (F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
                + fill)

    def mask_border(self, tensor: torch.Tensor, rng: np.random.Generator, fill: float) -> torch.Tensor:
        """Each edge, with probability ½, gets a band of up to ``border`` of the side set to ``fill`` (the
        padding value), so letters, markers and film edges in the border band cannot carry the label alone."""
        if self.border <= 0:
            return tensor
        size = tensor.shape[-1]
        widths = [int(rng.uniform(0, self.border) * size) if rng.random() < 0.5 else 0 for _ in range(4)]
        out = tensor.clone()
        top, bottom, left, right = widths
        if top:
            out[..., :top, :] = fill
        if bottom:
            out[..., size - bottom:, :] = fill
        if left:
            out[..., :, :left] = fill
        if right:
            out[..., :, size - right:] = fill
        return out


# --- the dataset ----------------------------------------------------------------------------------------

class LabelledDataset(Dataset):
    """(tensor, class index) pairs; an unreadable file raises, naming it (training data must be clean)."""

    def __init__(self, items: list[LabelledImage], classes: list[str], preprocessing: Preprocessing,
                 augmentation: Augmentation | None = None, seed: int = 0):
        unknown = sorted({item.label for item in items} - set(classes))
        if unknown:
            raise DataError(f"labels {unknown} are not among the model's classes {classes}")
        self.items, self.classes = items, classes
        self.preprocessing, self.augmentation = preprocessing, augmentation
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Augmentations depend on (seed, epoch, draw) only, so a run is reproducible and resumable."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``key``: an index, or ``(draw, index)`` (see :class:`~model_training.predictions.NumberedDraws`), the
        draw's position in the epoch seeding its augmentation, so a case drawn twice is augmented twice."""
        draw, index = key if isinstance(key, tuple) else (key, key)
        item = self.items[index]
        # Decoded as the scorer decodes it (at twice the input side), so training sees what scoring sees.
        image = imaging.read_xray(item.path, min_side=2 * self.preprocessing.size)
        if self.augmentation is None:
            return self.preprocessing(image.pixels, image.stored_shape), self.classes.index(item.label)
        rng = np.random.default_rng([self.seed, self.epoch, draw])
        tensor = self.preprocessing(self.augmentation.intensity(image.pixels, rng), image.stored_shape)
        pad = (self.preprocessing.pad_value - self.preprocessing.mean) / self.preprocessing.std
        tensor = self.augmentation.mask_border(self.augmentation.geometry(tensor, rng, pad), rng, pad)
        return tensor, self.classes.index(item.label)


def readable(items: list[LabelledImage]) -> tuple[list[LabelledImage], list[tuple[str, str]]]:
    """Split items into those the reader accepts (and are in scope) and (path, reason) for the rest."""
    good, bad = [], []
    for item in items:
        try:
            meta = imaging.read_xray(item.path).meta
        except imaging.XRayReadError as exc:
            bad.append((item.path, exc.reason))
            continue
        ok, reason = imaging.in_scope(meta)
        (good.append(item) if ok else bad.append((item.path, reason)))
    return good, bad


def log_left_out(rejected: list[tuple[str, str]], step: str) -> None:
    """How many files ``step`` leaves out for each reason, at WARNING; their file names at DEBUG only (``-v``), as
    names carry patient names and record numbers at many sites."""
    for reason, count in sorted(Counter(reason for _, reason in rejected).items()):
        log.warning("%s: %d file(s) left out (%s); -v lists them", step, count, reason)
    for path, reason in rejected:
        log.debug("%s: left out (%s): %s", step, reason, Path(path).name)


def summary(items: list[LabelledImage]) -> dict:
    """Counts per class and per source, for the model card."""
    return {"images": len(items),
            "patients": len({item.group for item in items}),
            "per_class": dict(sorted(Counter(item.label for item in items).items())),
            "per_source": dict(sorted(Counter(item.source or "unknown" for item in items).items())),
            "per_source_class": {source: dict(sorted(Counter(i.label for i in items
                                                             if (i.source or "unknown") == source).items()))
                                 for source in sorted({item.source or "unknown" for item in items})},
            "from_reviews": sum(item.review_id is not None for item in items)}
