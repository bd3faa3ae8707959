"""Attribution maps (Captum Grad-CAM, Integrated Gradients, Occlusion) for one model and one image or a batch.

Every input goes through the reader's pixels and the checkpoint's :func:`scoring.model.preprocess`; each map is
computed on the square model input and brought back to the original image's geometry (the padding cropped
off, the resize undone), as float32 with its raw value range kept for the legend.

Models are built once per checkpoint and shared; Captum attaches hooks to a model while it attributes, so every
call on a shared model holds that model's lock (calls on different models run side by side). Everything runs
on the CPU in float32, where PyTorch's kernels are deterministic: the same inputs give the same map.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion
from torch import nn

from scoring.attribution.region import outside_share
from scoring.attribution.sanity import MEASURED_SANITY
from scoring.model import Checkpoint, load_checkpoint

METHODS = ("gradcam", "integrated_gradients", "occlusion")
WHAT_A_MAP_SHOWS = "A map shows what drove the score, not where the disease is."

# Parameters that define a map (they are recorded with it and are part of its cache key). Sizes are pixels of
# the square model input; "baseline" is a pixel value of the reader's [0, 1] scale (0.0 = black, which is also
# what preprocessing pads with, so the padding never draws attribution).
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "gradcam": {"layer": "layer4"},
    "integrated_gradients": {"steps": 50, "baseline": 0.0},
    "occlusion": {"window": None, "stride": None, "baseline": 0.0},  # None: input size / 7 and / 14
}
# Parameters that only decide how the work is split (not part of the key: the map is the same).
EXECUTION_DEFAULTS: dict[str, dict[str, int]] = {
    "gradcam": {},
    "integrated_gradients": {"internal_batch_size": 25},
    "occlusion": {"perturbations_per_eval": 16},
}
GRADCAM_LAYERS = ("layer1", "layer2", "layer3", "layer4")
MODEL_CACHE_SIZE = 4


class AttributionError(ValueError):
    """A request the engine cannot answer: an unknown method, class or parameter."""


@dataclass(frozen=True)
class MethodInfo:
    label: str
    description: str
    sanity: str  # "passed", "failed" or "not checked": the randomisation check (scoring.attribution.sanity)


@dataclass(frozen=True)
class AttributionMap:
    values: np.ndarray  # float32, rows x cols of the original image (as read_xray returns it)
    method: str
    target_class: str
    params: dict[str, Any]
    value_min: float
    value_max: float
    outside_share: float  # share of positive attribution outside the central chest region; NaN: none positive
    caption: str
    sanity_ok: bool


@dataclass(frozen=True)
class Placement:
    """Where the image lies in the square model input (the arithmetic of :func:`scoring.model.preprocess`)."""

    rows: int
    cols: int
    top: int
    left: int
    new_rows: int
    new_cols: int

    @classmethod
    def of(cls, rows: int, cols: int, size: int) -> Placement:
        scale = size / max(rows, cols)
        new_rows, new_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
        return cls(rows, cols, (size - new_rows) // 2, (size - new_cols) // 2, new_rows, new_cols)

    def crop(self, square: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(square[self.top:self.top + self.new_rows, self.left:self.left + self.new_cols])

    def to_original(self, crop: np.ndarray) -> np.ndarray:
        """The cropped map resized to the original image (bilinear; antialiased where it shrinks)."""
        if crop.shape == (self.rows, self.cols):
            return crop.astype(np.float32, copy=True)
        shrinking = self.rows < crop.shape[0] or self.cols < crop.shape[1]
        tensor = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None]
        resized = F.interpolate(tensor, size=(self.rows, self.cols), mode="bilinear", align_corners=False,
                                antialias=shrinking)
        return resized[0, 0].numpy()


# --- methods' descriptions, parameters and keys -------------------------------------------------------------

def _method_info() -> dict[str, MethodInfo]:
    return {
        "gradcam": MethodInfo(
            "Grad-CAM",
            "Where in the last convolutional block's feature maps the evidence for the class lies: the block's "
            "activations weighted by the class score's mean gradient, positive part only (ReLU), upsampled "
            "bilinearly from the block's coarse grid (7 x 7 at 224 px). Parameter: layer (default layer4).",
            MEASURED_SANITY["gradcam"]),
        "integrated_gradients": MethodInfo(
            "Integrated Gradients",
            "Per pixel, how much the class score changes along a straight path from a black image (the "
            "padding colour) to this one: gradients averaged over the path (Gauss-Legendre, 50 steps by "
            "default) times the difference from black; signed. Parameters: steps, baseline (pixel value).",
            MEASURED_SANITY["integrated_gradients"]),
        "occlusion": MethodInfo(
            "Occlusion",
            "How much the class score (logit) drops when a square patch is blacked out, the patch slid "
            "over the image (window 1/7 and stride 1/14 of the input by default: 32 and 16 px at 224 px); "
            "signed, coarse, no gradients involved. Parameters: window, stride, baseline (fill value).",
            MEASURED_SANITY["occlusion"]),
    }


METHOD_INFO: dict[str, MethodInfo] = _method_info()


def resolve_params(method: str, input_size: int, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """(the map-defining parameters with defaults filled in, the execution options) for ``method``."""
    if method not in METHODS:
        raise AttributionError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    defining, execution = dict(DEFAULT_PARAMS[method]), dict(EXECUTION_DEFAULTS[method])
    for name, value in params.items():
        if name in defining:
            defining[name] = value
        elif name in execution:
            execution[name] = int(value)
        else:
            raise AttributionError(f"{method} has no parameter {name!r} (it has "
                                   f"{', '.join([*DEFAULT_PARAMS[method], *EXECUTION_DEFAULTS[method]])})")
    if method == "occlusion":
        defining["window"] = int(defining["window"] or max(1, round(input_size / 7)))
        defining["stride"] = int(defining["stride"] or max(1, round(input_size / 14)))
        if not 0 < defining["stride"] <= defining["window"] <= input_size:
            raise AttributionError(f"occlusion needs 0 < stride <= window <= {input_size}, got {defining}")
    if method == "integrated_gradients":
        defining["steps"] = int(defining["steps"])
        if defining["steps"] < 2:
            raise AttributionError(f"integrated_gradients needs at least 2 steps, got {defining['steps']}")
    if method == "gradcam" and defining["layer"] not in GRADCAM_LAYERS:
        raise AttributionError(f"gradcam layer must be one of {', '.join(GRADCAM_LAYERS)}")
    if "baseline" in defining:
        defining["baseline"] = float(defining["baseline"])
    if any(value < 1 for value in execution.values()):
        raise AttributionError(f"{method}: batch sizes must be positive, got {execution}")
    defining["input_size"] = input_size  # a map is only comparable with maps made at the same input size
    return defining, execution


def params_key(method: str, params: dict[str, Any]) -> str:
    """The sha256 of the method and its resolved parameters: part of a cached map's key."""
    return hashlib.sha256(json.dumps({"method": method, **params}, sort_keys=True).encode()).hexdigest()


def method_with_settings(method: str, params: dict[str, Any]) -> str:
    """The method's name with the settings that change what its map shows, e.g. 'Grad-CAM (layer4)'."""
    baseline = "black" if params.get("baseline") == 0.0 else f"{params.get('baseline')}"
    return {
        "gradcam": f"Grad-CAM ({params.get('layer')})",
        "integrated_gradients": f"Integrated Gradients ({params.get('steps')} steps, {baseline} baseline)",
        "occlusion": f"Occlusion ({params.get('window')} px window, {params.get('stride')} px stride at "
                     f"{params.get('input_size')} px, {baseline} fill)",
    }[method]


def caption(method: str, target_class: str, params: dict[str, Any], model_label: str | None) -> str:
    return (f"{method_with_settings(method, params)}, target {target_class}"
            + (f", model {model_label}" if model_label else ""))


# --- models, shared and locked ------------------------------------------------------------------------------

class PreparedModel:
    """A checkpoint's model in eval mode without parameter gradients, and the lock its Captum calls hold."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.model = checkpoint.build()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.lock = threading.Lock()

    def class_index(self, target_class: str) -> int:
        try:
            return self.checkpoint.classes.index(target_class)
        except ValueError:
            raise AttributionError(f"target class {target_class!r} is not one of the model's classes "
                                   f"{self.checkpoint.classes}") from None

    @property
    def label(self) -> str | None:
        return self.checkpoint.training.get("name") if isinstance(self.checkpoint.training, dict) else None


_models: collections.OrderedDict[tuple, tuple[Any, PreparedModel]] = collections.OrderedDict()
_models_lock = threading.Lock()


def prepared_model(checkpoint: Checkpoint | PreparedModel | str | os.PathLike) -> PreparedModel:
    """The shared model of a checkpoint (a loaded one, or a file: reloaded when the file changes)."""
    if isinstance(checkpoint, PreparedModel):
        return checkpoint
    if isinstance(checkpoint, Checkpoint):
        key: tuple = ("object", id(checkpoint))
        ref: Any = weakref.ref(checkpoint)
    else:
        path = Path(checkpoint).resolve()
        stat = path.stat()
        key, ref = ("file", str(path), stat.st_size, stat.st_mtime_ns), None
    with _models_lock:
        cached = _models.get(key)
        if cached is not None and (ref is None or cached[0]() is checkpoint):
            _models.move_to_end(key)
            return cached[1]
        prepared = PreparedModel(checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(path))
        _models[key] = (ref, prepared)
        while len(_models) > MODEL_CACHE_SIZE:
            _models.popitem(last=False)
        return prepared


# --- computing ----------------------------------------------------------------------------------------------

def _baseline(prepared: PreparedModel, value: float) -> float:
    pre = prepared.checkpoint.preprocessing
    return (value - pre.mean) / pre.std


def attribute_squares(prepared: PreparedModel, batch: torch.Tensor, targets: Sequence[int], method: str,
                      params: dict[str, Any], execution: dict[str, int]) -> np.ndarray:
    """Maps of a preprocessed batch ``(n, 1, size, size)`` in the square input geometry, ``(n, size, size)``."""
    model: nn.Module = prepared.model
    target = torch.tensor(list(targets), dtype=torch.long)
    with prepared.lock, torch.autograd.set_grad_enabled(True):
        if method == "gradcam":
            cam = LayerGradCam(model, getattr(model, params["layer"])).attribute(batch, target=target,
                                                                                 relu_attributions=True)
            maps = LayerAttribution.interpolate(cam.detach(), batch.shape[-2:], "bilinear")
        elif method == "integrated_gradients":
            maps = IntegratedGradients(model).attribute(
                batch, baselines=_baseline(prepared, params["baseline"]), target=target, n_steps=params["steps"],
                internal_batch_size=execution["internal_batch_size"] * len(batch))
        else:
            with torch.no_grad():
                window, stride = params["window"], params["stride"]
                maps = Occlusion(model).attribute(
                    batch, sliding_window_shapes=(1, window, window), strides=(1, stride, stride),
                    baselines=_baseline(prepared, params["baseline"]), target=target,
                    perturbations_per_eval=execution["perturbations_per_eval"])
    return maps.detach()[:, 0].to(torch.float32).numpy()


@dataclass(frozen=True)
class CropMap:
    """A map in the model's resolution, cropped to the image (what the cache stores), and how it was made."""

    crop: np.ndarray
    placement: Placement
    method: str
    target_class: str
    params: dict[str, Any]
    seconds: float


def compute_crops(checkpoint: Checkpoint | PreparedModel | str | os.PathLike, images: Sequence[np.ndarray],
                  method: str, target_classes: Sequence[str], **params: Any) -> list[CropMap]:
    """Maps of several images at once (one forward and backward pass per batch), cropped to each image."""
    if len(images) != len(target_classes):
        raise AttributionError(f"{len(images)} images but {len(target_classes)} target classes")
    if not images:
        return []
    prepared = prepared_model(checkpoint)
    size = prepared.checkpoint.input_size
    defining, execution = resolve_params(method, size, params)
    targets = [prepared.class_index(name) for name in target_classes]
    batch = torch.stack([prepared.checkpoint.preprocessing(pixels) for pixels in images])
    started = time.perf_counter()
    squares = attribute_squares(prepared, batch, targets, method, defining, execution)
    seconds = (time.perf_counter() - started) / len(images)
    crops = []
    for pixels, square, name in zip(images, squares, target_classes, strict=True):
        placement = Placement.of(*pixels.shape, size)
        crops.append(CropMap(placement.crop(square), placement, method, name, defining, seconds))
    return crops


def finish(crop: CropMap, model_label: str | None) -> AttributionMap:
    """The map in the original image's geometry, with its range, outside share and caption. The outside share is
    measured on the crop (the map's own resolution, the image's geometry): the region scales with the image."""
    values = crop.placement.to_original(crop.crop)
    return AttributionMap(
        values=values, method=crop.method, target_class=crop.target_class, params=dict(crop.params),
        value_min=float(values.min()), value_max=float(values.max()), outside_share=outside_share(crop.crop),
        caption=caption(crop.method, crop.target_class, crop.params, model_label),
        sanity_ok=METHOD_INFO[crop.method].sanity == "passed")


def compute_map(checkpoint: Checkpoint | PreparedModel | str | os.PathLike, pixels: np.ndarray, method: str,
                target_class: str, **params: Any) -> AttributionMap:
    """One map for one image (``pixels`` as :func:`scoring.imaging.read_xray` returns them)."""
    prepared = prepared_model(checkpoint)
    return finish(compute_crops(prepared, [pixels], method, [target_class], **params)[0], prepared.label)


def gradcam_batch(checkpoint: Checkpoint | PreparedModel | str | os.PathLike, images: Sequence[np.ndarray],
                  target_classes: Sequence[str], *, batch_size: int = 16, **params: Any) -> list[AttributionMap]:
    """Grad-CAM for many images, ``batch_size`` at a time (what the nightly precompute uses)."""
    prepared = prepared_model(checkpoint)
    maps: list[AttributionMap] = []
    for start in range(0, len(images), batch_size):
        crops = compute_crops(prepared, images[start:start + batch_size], "gradcam",
                              target_classes[start:start + batch_size], **params)
        maps += [finish(crop, prepared.label) for crop in crops]
    return maps
