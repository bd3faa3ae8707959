"""The image as a viewer needs it: the values before any window, and the windows on offer.

The reader (``read_xray``) returns the one display the model sees. A reviewer also wants the other windows:
for DICOM the modality-LUT output (Rescale Slope/Intercept or the Modality LUT Sequence) before VOI, every
Window Centre/Width pair the header holds (with its explanation), the reader's percentile window ("auto")
and the full range of values; MONOCHROME1 is inverted after windowing, as in the reader. PNG and JPEG have
no header windows: their values are the reader's grey levels in [0, 1]. The header windows on offer are those the
reader could apply (``display.usable_window``), and "auto" is the reader's percentile window, padding left out; the
reader's VOI LUT, where the header has one, is the display "as read by the model" (the reader's own pixels).

The file is read by ``read_xray`` first (isolated, with its time limit), so a file that crashes or hangs a
decoder fails there; only then are its raw values decoded again here, in this process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import display
from .decode import quiet_third_parties
from .dicom import _geometry, _parse_dataset, _transfer_syntax
from .files import load
from .header import MONOCHROME, first_value, upper
from .pixel_data import NATIVE_SYNTAXES, decode_compressed, decode_with_pydicom, first_frame

AS_READ = "as read by the model"
AUTO = "auto (percentile)"
FULL_RANGE = "full range"
_EXPLANATION_CHARS = 48


@dataclass(frozen=True)
class Window:
    label: str
    center: float
    width: float
    function: str = "LINEAR"  # LINEAR, LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.2)


@dataclass(frozen=True, eq=False)
class ViewingImage:
    pixels: np.ndarray  # the reader's output: 2-D float32 in [0, 1], bone white
    values: np.ndarray  # float32 values before any window (DICOM: after the modality LUT)
    invert: bool  # MONOCHROME1: white is low, so windowed values are inverted
    header_windows: tuple[Window, ...]
    auto: Window
    full: Window
    meta: dict[str, Any]

    @property
    def presets(self) -> tuple[str, ...]:
        return (AS_READ, *(w.label for w in self.header_windows), AUTO, FULL_RANGE)

    def window(self, label: str) -> Window | None:
        """The window of a preset (None for ``AS_READ``, which is the reader's own display)."""
        by_label = {w.label: w for w in (*self.header_windows, self.auto, self.full)}
        return by_label.get(label)


def read_for_viewing(path: str | os.PathLike[str]) -> ViewingImage:
    from . import read_xray

    image = read_xray(path)
    values, invert, windows, keep = image.pixels, False, (), None
    if image.meta["format"] == "dicom" and image.meta.get("photometric") in MONOCHROME:
        values, invert, windows, keep = _dicom_values(os.fsencode(path))
    low, high = float(values.min()), float(values.max())
    p_low, p_high = display.percentile_range(values, keep)  # the reader's: padding left out
    return ViewingImage(
        pixels=image.pixels, values=values, invert=invert, header_windows=windows,
        auto=_window_between(AUTO, p_low, p_high), full=_window_between(FULL_RANGE, low, high), meta=image.meta)


def apply_window(image: ViewingImage, window: Window | None) -> np.ndarray:
    """2-D float32 in [0, 1], bone white; ``None`` gives the reader's display."""
    if window is None:
        return image.pixels
    out = display._window(image.values.astype(np.float32, copy=False), window.center, window.width,
                          window.function)
    return np.subtract(np.float32(1.0), out, out=out) if image.invert else out


def _window_between(label: str, low: float, high: float) -> Window:
    width = max(high - low, 1e-6)
    return Window(label, low + width / 2, width, "LINEAR_EXACT")


def _dicom_values(path: bytes) -> tuple[np.ndarray, bool, tuple[Window, ...], np.ndarray | None]:
    """The modality LUT's output, whether it is MONOCHROME1, the header windows, and where it is not padding."""
    with quiet_third_parties():
        data = load(path)
        syntax, _ = _transfer_syntax(data, path)
        ds = _parse_dataset(data, path)
        geometry = _geometry(ds, path)
        keyword = "PixelData" if "PixelData" in ds else None
        if keyword and syntax not in NATIVE_SYNTAXES:
            raw, photometric, _ = decode_compressed(ds, syntax, geometry, first_frame(ds, geometry, path), path)
        else:
            raw, photometric = decode_with_pydicom(ds, syntax, ("",), path)
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.asarray(display._modality_lut(raw, ds), dtype=np.float32)
        if not np.isfinite(values).all():
            values = raw.astype(np.float32)
        return values, photometric == "MONOCHROME1", header_windows(ds), display.not_padding(raw, ds, geometry)


def header_windows(ds: Any) -> tuple[Window, ...]:
    """Every Window Centre/Width pair of the header the reader could apply (``display.usable_window``), labelled
    with its explanation when it has one."""
    centers, widths = _numbers(ds.get("WindowCenter")), _numbers(ds.get("WindowWidth"))
    explanations = _texts(ds.get("WindowCenterWidthExplanation"))
    function = upper(ds.get("VOILUTFunction")) or "LINEAR"
    windows = []
    for i, (center, width) in enumerate(zip(centers, widths, strict=False)):
        if not display.usable_window(center, width, function):
            continue
        name = explanations[i] if i < len(explanations) and explanations[i] else f"header window {i + 1}"
        windows.append(Window(f"{name} (C {center:g} / W {width:g})", center, width, function))
    return tuple(windows)


def _numbers(value: Any) -> list[float | None]:
    if value is None:
        return []
    out = []
    for item in list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]:
        try:
            number = first_value(item)
        except (TypeError, ValueError):
            number = None
        out.append(number if number is not None and math.isfinite(number) else None)
    return out


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str | bytes) else list(value)
    return ["".join(ch for ch in str(item) if ch.isprintable()).strip()[:_EXPLANATION_CHARS] for item in items]
