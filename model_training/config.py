"""The configurations of ``cxr-train train`` and ``cxr-train recalibrate``, which the CLI reads its defaults
from. Kept apart from the training code so that the CLI's quick commands (``list``, ``promote``, ``challenge``)
start without importing torch (about 4 s on a small machine)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.diagnose import shown_url

CONFIG_NAME = "config.json"
# scoring.model.ARCHITECTURES builds these (a test keeps the two lists the same)
ARCHITECTURE_NAMES = ("resnet18", "resnet34", "resnet50")
# recalibrate: fewer reviewed cases than this leave a class's offset alone (one film would otherwise set it)
MIN_CASES = 10


@dataclass
class TrainConfig:
    """Everything a run needs. Its defaults are ``cxr-train train``'s: the CLI reads them from these fields."""

    data: str
    out: str
    arch: str = "resnet18"
    img_size: int = 224
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.2
    patience: int = 5
    pretrained: str | None = None
    include_reviews: bool = False
    eval_data: str | None = None
    hflip: bool = False
    augment: bool = True
    workers: int = 2
    device: str = "auto"
    db: str | None = None
    name: str | None = None
    synthetic: bool = False
    # The retraining recipe; None: the recipe's value (RETRAIN_RECIPE with --include-reviews, else PLAIN_RECIPE).
    from_active: bool | None = None
    review_share: float | None = None
    freeze_blocks: int | None = None
    border_mask: float | None = None

    def recorded(self) -> dict[str, Any]:
        """The configuration as written into files (config.json, the checkpoint, the model card), which people
        share: the database URL's password hidden."""
        return {**dataclasses.asdict(self), "db": shown_url(self.db) if self.db else None}

    def save(self, folder: Path) -> None:
        (folder / CONFIG_NAME).write_text(json.dumps(self.recorded(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> TrainConfig:
        """The configuration a run saved in its output folder."""
        return cls.from_recorded(json.loads((folder / CONFIG_NAME).read_text()))

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> TrainConfig:
        """The configuration a run recorded (its config.json, or its checkpoint's ``training["config"]``)."""
        return cls(**{f.name: recorded[f.name] for f in dataclasses.fields(cls) if f.name in recorded})


@dataclass
class RecalibrateConfig:
    """``cxr-train recalibrate``'s options; the CLI reads its defaults from these fields."""

    source: str  # --from: a version (id, name, sha256 prefix) or a checkpoint file
    out: str
    db: str | None = None
    name: str | None = None
    min_cases: int = MIN_CASES
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"

    def recorded(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "db": shown_url(self.db) if self.db else None}
