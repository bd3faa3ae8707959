"""Outside weights for ``--pretrained PATH``: torchxrayvision's ResNet-50 layout, mapped onto our model.

torchxrayvision's ``resnet50-res512-all`` (``xrv.models.ResNet(weights="resnet50-res512-all")``) is, as far as
this module assumes (torchxrayvision 1.x; nothing is downloaded to check it):

* a torchvision ResNet-50 whose ``conv1`` takes **one** channel (64, 1, 7, 7) and whose ``fc`` has **18**
  outputs (its pathologies); the weights file holds that network's state dict with torchvision's key names,
  and a state dict of the wrapper (``xrv_model.state_dict()``) has the same keys under a ``model.`` prefix,
  sometimes beside non-network entries (e.g. ``op_threshs``);
* trained on 512 x 512 inputs;
* fed images scaled to **[-1024, 1024]** (``xrv.datasets.normalize``: ``(2 * x / maxval - 1) * 1024``, bone
  white), i.e. ``(x - 0.5) * 2048`` for our reader's [0, 1] pixels.

Our one ``preprocess`` computes ``(x - mean) / std`` with ``mean = 0.5``, ``std = 0.25``: the same affine map up
to a factor ``std * 2048 = 512``. The first convolution has no bias and padding with zeros (the mean in both
scales), so multiplying ``conv1``'s weights by that factor makes the network compute on our tensors exactly what
it computed on torchxrayvision's: the weights are converted, the preprocessing (and its hash, which every
scorer checks) stays the one the project uses. Where the preprocessing mean is not 0.5 no exact conversion
exists and the weights are refused. The 18-output head is dropped (a new head for our classes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from scoring.model import Preprocessing

log = logging.getLogger("cxr.train")

XRV_PREFIX = "model."
XRV_OUTPUTS = 18
XRV_INPUT_SIZE = 512
XRV_INTENSITY_HALF_RANGE = 1024.0  # [0, 1] pixels -> [-1024, 1024]
XRV_EXTRA_KEYS = ("op_threshs",)   # wrapper entries that are not network weights


class PretrainedError(ValueError):
    """Outside weights that cannot be used as asked, with a message that names the offending value."""


@dataclass(frozen=True)
class Mapped:
    state: dict[str, torch.Tensor]
    layout: str               # "torchvision" or "torchxrayvision"
    note: str                 # what was done, for the checkpoint and the model card
    conv1_scale: float = 1.0  # the factor conv1's weights were multiplied by


def is_torchxrayvision(state: dict[str, torch.Tensor]) -> bool:
    """A torchxrayvision ResNet: keys under ``model.``, or a one-channel conv1 with an 18-output head."""
    if any(key.startswith(XRV_PREFIX) for key in state) and f"{XRV_PREFIX}conv1.weight" in state:
        return True
    conv1, fc = state.get("conv1.weight"), state.get("fc.weight")
    return (conv1 is not None and fc is not None and conv1.ndim == 4 and conv1.shape[1] == 1
            and fc.shape[0] == XRV_OUTPUTS)


def map_torchxrayvision(state: dict[str, torch.Tensor], preprocessing: Preprocessing) -> Mapped:
    """torchxrayvision's ResNet state dict as our model's: prefix stripped, wrapper entries and the 18-output
    head dropped, conv1 rescaled from the [-1024, 1024] intensity scale to ``preprocessing``'s."""
    if any(key.startswith(XRV_PREFIX) for key in state):
        stray = sorted(k for k in state if not k.startswith(XRV_PREFIX) and k not in XRV_EXTRA_KEYS)
        if stray:
            raise PretrainedError(f"torchxrayvision layout (keys under '{XRV_PREFIX}') with other keys {stray[:5]}")
        state = {k.removeprefix(XRV_PREFIX): v for k, v in state.items() if k.startswith(XRV_PREFIX)}
    state = {k: v for k, v in state.items() if k not in XRV_EXTRA_KEYS}
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4 or conv1.shape[1] != 1:
        raise PretrainedError(f"torchxrayvision weights need a one-channel conv1, got "
                              f"{None if conv1 is None else tuple(conv1.shape)}")
    if preprocessing.mean != 0.5:
        raise PretrainedError(f"torchxrayvision weights expect pixels scaled by (x - 0.5) * 2048; the "
                              f"preprocessing mean {preprocessing.mean} cannot be converted to that exactly")
    scale = preprocessing.std * 2 * XRV_INTENSITY_HALF_RANGE
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    state["conv1.weight"] = conv1 * scale
    if preprocessing.size != XRV_INPUT_SIZE:
        log.warning("torchxrayvision weights were trained at %d px; this run uses --img-size %d (the features "
                    "may transfer less well)", XRV_INPUT_SIZE, preprocessing.size)
    note = (f"torchxrayvision ResNet layout: 18-output head dropped, conv1 x {scale:g} to map its [-1024, 1024] "
            f"input scale onto preprocess (mean {preprocessing.mean}, std {preprocessing.std}); trained at "
            f"{XRV_INPUT_SIZE} px, used at {preprocessing.size} px")
    return Mapped(state, "torchxrayvision", note, scale)
