"""The one model definition, preprocessing and checkpoint format shared by training, scoring and the dashboard.

A checkpoint is a plain dictionary of tensors, strings and numbers written with :func:`torch.save` and read
with ``weights_only=True``, so loading one can never execute code. It carries everything needed to use it:
architecture, classes, input size, preprocessing parameters (and their hash), the calibration (a temperature
and per-class logit offsets) and training metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from db.clitools import one_line
from db.errors import CannotRun
from db.hashing import file_sha256

CHECKPOINT_FORMAT = "cxr-review-checkpoint"
CHECKPOINT_VERSION = 1
# Version 2 adds per-class logit offsets. It is written only for a checkpoint whose offsets are not all zero, so
# software that predates offsets refuses such a file instead of scoring without its correction, and every other
# checkpoint stays byte for byte what version 1 wrote.
OFFSETS_VERSION = 2
READABLE_VERSIONS = (CHECKPOINT_VERSION, OFFSETS_VERSION)
# Bump whenever preprocess() changes what it computes: the hash then changes, and checkpoints trained with
# the old behaviour are refused instead of being fed images they were never trained on.
PREPROCESS_VERSION = 1

ARCHITECTURES: dict[str, Callable[..., models.ResNet]] = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
}


class CheckpointError(CannotRun, ValueError):
    """A checkpoint file that is not a valid CXR Review checkpoint."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No file where the checkpoint should be (still a FileNotFoundError for callers that test for one)."""


class DeviceUnavailable(CannotRun, RuntimeError):
    """The device asked for is not on this machine."""


def resolve_device(choice: str) -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU), ``cpu`` or ``cuda``."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("--device cuda was asked for, but no CUDA device is available")
    return torch.device(choice)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for a model on ``device``, for training and scoring alike; None: float32.

    ``auto`` is bf16 on CUDA (fp16 where the GPU has no bf16) and float32 on the CPU, so CPU results do not
    depend on whether the processor has bf16 instructions; ``bf16`` asks for it on the CPU too.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("fp16 autocast is for CUDA; use bf16 or fp32 on the CPU")
        return torch.float16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` (from :func:`autocast_dtype`) on ``device``; float32 (no autocast) for None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def build_model(arch: str, num_classes: int) -> models.ResNet:
    """A torchvision ResNet with a one-channel first convolution and ``num_classes`` outputs."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    net = ARCHITECTURES[arch](weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def grey_conv1_from_rgb(rgb_weight: torch.Tensor) -> torch.Tensor:
    """Fold an RGB first-layer kernel (out, 3, k, k) into one channel, preserving the response to grey input."""
    if rgb_weight.ndim != 4 or rgb_weight.shape[1] != 3:
        raise ValueError(f"expected an RGB conv1 weight of shape (out, 3, k, k), got {tuple(rgb_weight.shape)}")
    return rgb_weight.sum(dim=1, keepdim=True)


@dataclass(frozen=True)
class Preprocessing:
    """Parameters of :func:`preprocess`; stored in every checkpoint."""

    size: int
    mean: float = 0.5
    std: float = 0.25
    pad_value: float = 0.0
    version: int = PREPROCESS_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise CheckpointError(f"unknown preprocessing parameters {sorted(unknown)}")
        return cls(**values)

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def __call__(self, pixels: np.ndarray, source_shape: tuple[int, int] | None = None) -> torch.Tensor:
        return preprocess(pixels, self.size, mean=self.mean, std=self.std, pad_value=self.pad_value,
                          source_shape=source_shape)


def preprocess(pixels: np.ndarray, size: int, *, mean: float = 0.5, std: float = 0.25,
               pad_value: float = 0.0, source_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Reader pixels (2-D, [0, 1], bone white) -> a normalised ``(1, size, size)`` float32 tensor.

    The longer side is resized to ``size`` with antialiasing (aspect ratio kept), then the shorter side is
    padded symmetrically with ``pad_value`` to a square. ``source_shape`` is the stored image's (rows, cols)
    when ``pixels`` come from a reduced decode (``XRayImage.stored_shape``): the resized size and the padding
    are then those of the full image, which the reduced sides, rounded by the decoder, can miss by a row.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
    rows, cols = pixels.shape
    if rows == 0 or cols == 0:
        raise ValueError(f"empty image of shape {pixels.shape}")
    reference_rows, reference_cols = source_shape or (rows, cols)
    scale = size / max(reference_rows, reference_cols)
    new_rows, new_cols = max(1, round(reference_rows * scale)), max(1, round(reference_cols * scale))
    image = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    if (new_rows, new_cols) != (rows, cols):
        image = F.interpolate(image, size=(new_rows, new_cols), mode="bilinear", antialias=True,
                              align_corners=False)
    top, left = (size - new_rows) // 2, (size - new_cols) // 2
    image = F.pad(image, (left, size - new_cols - left, top, size - new_rows - top), value=pad_value)
    return ((image[0] - mean) / std).contiguous()


def calibrated_probabilities(logits: torch.Tensor, temperature: float,
                             offsets: torch.Tensor | list[float] | None = None) -> torch.Tensor:
    """``softmax(logits / temperature + offsets)``: the one calibration of every probability (temperature and
    per-class offsets from the checkpoint; offsets None: zeros). In float32, or float64 for float64 logits."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scaled = (logits if logits.dtype == torch.float64 else logits.float()) / temperature
    if offsets is not None:
        offsets = torch.as_tensor(offsets, dtype=scaled.dtype, device=scaled.device)
        if offsets.shape != scaled.shape[-1:]:
            raise ValueError(f"{tuple(offsets.shape)} offsets for {scaled.shape[-1]} classes")
        scaled = scaled + offsets
    return torch.softmax(scaled, dim=-1)


def normalised_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy of each row divided by log(number of classes): 0 = certain, 1 = uniform."""
    p = probabilities.clamp_min(1e-12)
    return -(p * p.log()).sum(dim=-1) / math.log(probabilities.shape[-1])


@dataclass
class Checkpoint:
    arch: str
    classes: list[str]
    preprocessing: Preprocessing
    state_dict: dict[str, torch.Tensor]
    temperature: float = 1.0
    training: dict[str, Any] = field(default_factory=dict)
    logit_offsets: list[float] | None = None  # added to the scaled logits, one per class; None: zeros

    def __post_init__(self):
        try:
            offsets = [float(b) for b in ([0.0] * len(self.classes) if self.logit_offsets is None
                                          else self.logit_offsets)]
        except (TypeError, ValueError):
            offsets = []
        if len(offsets) != len(self.classes) or not all(math.isfinite(b) for b in offsets):
            raise CheckpointError(f"logit offsets {self.logit_offsets} do not fit the classes {self.classes}")
        self.logit_offsets = offsets

    @property
    def input_size(self) -> int:
        return self.preprocessing.size

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """This version's calibrated probabilities of its model's logits."""
        return calibrated_probabilities(logits, self.temperature, self.logit_offsets)

    def build(self) -> models.ResNet:
        """The model with these weights, in eval mode."""
        net = build_model(self.arch, len(self.classes))
        net.load_state_dict(self.state_dict)
        return net.eval()


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> Path:
    """Write atomically (a killed writer leaves the old file or none, never half of one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = any(b != 0 for b in checkpoint.logit_offsets)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": OFFSETS_VERSION if offsets else CHECKPOINT_VERSION,
        "arch": checkpoint.arch,
        "classes": list(checkpoint.classes),
        "input_size": checkpoint.input_size,
        "preprocessing": checkpoint.preprocessing.to_dict(),
        "preprocessing_hash": checkpoint.preprocessing.hash,
        "temperature": float(checkpoint.temperature),
        "training": checkpoint.training,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in checkpoint.state_dict.items()},
    }
    if offsets:
        payload["logit_offsets"] = [float(b) for b in checkpoint.logit_offsets]
    with atomic_write(path) as handle:
        torch.save(payload, handle)
    return path


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A binary file written under a temporary name beside ``path``, fsynced and renamed into place when the
    block ends: a killed writer leaves the old file or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint; never executes code from the file."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointNotFound(f"model checkpoint {path} does not exist") from None
    except Exception as exc:  # pickle, zip and weights-only errors all mean "not a checkpoint we trust"
        # the first line only: torch's weights-only refusal runs to a dozen lines of advice, and a refusal is
        # logged as one line
        raise CheckpointError(f"{path}: not a loadable checkpoint ({one_line(exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a CXR Review checkpoint (format "
                              f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r})")
    if payload.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: checkpoint format version {payload.get('format_version')!r}, "
                              f"this software reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    if ("logit_offsets" in payload) != (payload["format_version"] == OFFSETS_VERSION):
        raise CheckpointError(f"{path}: logit offsets belong to format version {OFFSETS_VERSION} and only there")
    preprocessing = Preprocessing.from_dict(payload["preprocessing"])
    if preprocessing.hash != payload.get("preprocessing_hash"):
        raise CheckpointError(f"{path}: preprocessing hash {payload.get('preprocessing_hash')!r} does not match "
                              f"its parameters (hash {preprocessing.hash})")
    if preprocessing.version != PREPROCESS_VERSION:
        raise CheckpointError(f"{path}: trained with preprocessing version {preprocessing.version}, "
                              f"this software implements version {PREPROCESS_VERSION}")
    if payload["input_size"] != preprocessing.size:
        raise CheckpointError(f"{path}: input size {payload['input_size']} differs from preprocessing size "
                              f"{preprocessing.size}")
    return Checkpoint(
        arch=payload["arch"],
        classes=list(payload["classes"]),
        preprocessing=preprocessing,
        state_dict=payload["state_dict"],
        temperature=float(payload["temperature"]),
        training=payload.get("training", {}),
        logit_offsets=payload.get("logit_offsets"),
    )


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """The identity of a model version: the sha256 of the checkpoint file's bytes."""
    return file_sha256(path)
