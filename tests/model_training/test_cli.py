"""``cxr-train``'s options: their defaults are the training configuration's."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from model_training import cli
from model_training.config import ARCHITECTURE_NAMES, TrainConfig


def test_train_defaults_are_the_config_defaults():
    args = cli.build_parser().parse_args(["train", "--data", "images", "--out", "runs/a"])
    assert cli.train_config(args) == TrainConfig(data="images", out="runs/a")


def test_every_config_field_has_an_option():
    args = cli.build_parser().parse_args(["train", "--data", "d", "--out", "o", "--lr", "0.01", "--weight-decay",
                                          "0", "--no-augment", "--device", "cpu", "--db", "sqlite:///x.db"])
    config = cli.train_config(args)
    assert (config.lr, config.weight_decay, config.augment, config.device, config.db) == (0.01, 0.0, False, "cpu",
                                                                                          "sqlite:///x.db")
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= set(vars(args))


def test_the_architectures_offered_are_those_the_model_builds():
    from scoring.model import ARCHITECTURES

    args = cli.build_parser().parse_args(["train", "--data", "d", "--out", "o", "--arch", "resnet50"])
    assert args.arch == "resnet50"
    assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES


def test_list_promote_and_challenge_start_without_torch():
    """Importing torch and torchvision takes seconds; an admin's quick commands must not wait for it."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, model_training.cli; "
                             "print(sorted(m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules))"],
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_the_evaluate_summary_says_which_classes_are_too_small_for_an_interval():
    method = {"interval": "percentile", "resamples": 1000, "seed": 0, "stratified_by": "class, then patient",
              "min_patients_per_class": 10, "too_few_patients": {"normal": 1}}
    metrics = {"name": "v2", "n": 30, "accuracy": 0.8, "balanced_accuracy": 0.7, "macro_f1": 0.6, "macro_auroc": 0.9,
               "ece": 0.05, "per_class": {}, "intervals": {"_method": method}}
    text = cli._summary_text(metrics)
    assert "balanced accuracy 0.7000 " in text  # the estimate, no interval
    assert "fewer than 10 patients (normal 1)" in text
    every_class_large = {"_method": method | {"too_few_patients": {}}}
    assert "fewer than" not in cli._summary_text(metrics | {"intervals": every_class_large})
