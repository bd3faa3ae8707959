"""``cxr-train``'s options: their defaults are the training configuration's."""

from __future__ import annotations

import dataclasses

from model_training import cli
from model_training.train import TrainConfig


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
