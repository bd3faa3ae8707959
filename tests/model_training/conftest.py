"""Shared by the training tests: a small real data set, a configuration that trains in seconds, and a way to
kill a run half-way."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from model_training import train
from model_training.config import TrainConfig

PER_CLASS = 12


@pytest.fixture(scope="module")
def small_set(tmp_path_factory, cxr_dev) -> Path:
    """A CSV of 12 real images per class from cxr-dev, keeping their patient ids and sources."""
    with open(cxr_dev / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = []
    for label in ("covid", "normal", "pneumonia"):
        chosen += [row for row in rows if row["label"] == label][:PER_CLASS]
    return write_training_csv(cxr_dev, chosen, tmp_path_factory.mktemp("small") / "small.csv")


@pytest.fixture(scope="module")
def interleaved_set(tmp_path_factory, cxr_dev) -> Path:
    """Like ``small_set``, but its covid images are three films each of four patients, interleaved (each patient's
    first film, then each one's second, ...): a CSV in which no patient's films are together."""
    with open(cxr_dev / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    films: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        if row["label"] == "covid":
            films.setdefault(row["patient_id"], []).append(row)
    patients = [members[:3] for members in films.values() if len(members) >= 3][:4]
    chosen = [patient[k] for k in range(3) for patient in patients]
    for label in ("normal", "pneumonia"):
        chosen += [row for row in rows if row["label"] == label][:PER_CLASS]
    return write_training_csv(cxr_dev, chosen, tmp_path_factory.mktemp("interleaved") / "interleaved.csv")


def write_training_csv(cxr_dev: Path, rows: list[dict[str, str]], path: Path) -> Path:
    """A training CSV of these rows of cxr-dev's labels.csv, with absolute file paths."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "label", "patient_id", "source"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"file": str(cxr_dev / row["file"]), "label": row["label"],
                             "patient_id": row["patient_id"], "source": row["source"]})
    return path


def tiny_config(data_path, out, db_url, **overrides) -> TrainConfig:
    values = dict(data=str(data_path), out=str(out), img_size=64, epochs=2, batch_size=8, workers=0, db=db_url,
                  seed=3)
    values.update(overrides)
    return TrainConfig(**values)


def kill_at_epoch(monkeypatch, epoch: int):
    """Make training die (like a kill) when it starts ``epoch``; returns the real epoch function."""
    real_epoch = train.train_one_epoch

    def killed(*args, **kwargs):
        if args[-1] == epoch:
            raise KeyboardInterrupt("killed")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", killed)
    return real_epoch
