"""Display transforms: stored DICOM values to [0, 1] with bone white, and the checks on the result.

Monochrome images go modality LUT (Modality LUT Sequence, or Rescale Slope/Intercept) -> the first
VOI LUT Sequence item (output scaled by its declared bit depth), else the FIRST Window Centre/Width
with VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.2-3, mapped straight to
[0, 1]), else -- also when the window is invalid, e.g. width 0 -- the 0.5-99.5 percentile range ->
[0, 1] -> inverted for MONOCHROME1, after windowing. ``meta["voi"]`` is ``"voi_lut"``, ``"window"``
or ``"percentile"`` accordingly. Colour images (RGB, YBR_*, PALETTE COLOR) are converted to luma
with Pillow's weights and scaled by their bit depth without VOI (``voi`` ``"none"``); ``in_scope``
rejects them.

A modality transform whose output is not finite float32 is ``invalid_pixels``, and so is any final
image outside [0, 1] (:func:`check_display_range`, the last guard of every format).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import INVALID_PIXELS, error
from .header import MONOCHROME, Geometry, first_value, upper

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PERCENTILES = (0.5, 99.5)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def to_display(
    raw: np.ndarray, ds: Any, photometric: str, geometry: Geometry, path: bytes
) -> tuple[np.ndarray, str]:
    if photometric in MONOCHROME:
        # Overflow and NaN are checked for explicitly (here and in check_display_range); numpy's warnings
        # would only reach stderr.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            values = _modality_lut(raw, ds)
            _check_modality_output(values, ds, path)
            scaled_values, voi = _apply_voi(values, ds)
        if photometric == "MONOCHROME1":
            scaled_values = np.subtract(np.float32(1.0), scaled_values, out=scaled_values)
        return np.ascontiguousarray(scaled_values, dtype=np.float32), voi
    return _colour_to_grey(raw, ds, photometric, geometry), "none"


def check_display_range(pixels: np.ndarray, path: bytes) -> None:
    """The last guard of every path: what leaves the reader is finite and in [0, 1]."""
    if pixels.size == 0:
        return
    low, high = float(pixels.min()), float(pixels.max())
    if not (0.0 <= low <= high <= 1.0):  # False for NaN too
        raise error(INVALID_PIXELS, path, f"the display transform gives values in [{low:g}, {high:g}], "
                                          "not in [0, 1]")


def scaled(values: np.ndarray, top: float) -> np.ndarray:
    out = values.astype(np.float32)
    out *= np.float32(1.0 / top)
    return out


def _modality_lut(raw: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
        try:
            return apply_modality_lut(raw, ds)
        except Exception:  # a broken modality LUT: the stored values are the best we have
            return raw
    return raw


def _check_modality_output(values: np.ndarray, ds: Any, path: bytes) -> None:
    """A NaN, infinite or huge Rescale Slope/Intercept (valid DS strings all) would turn every pixel into
    NaN further on; refuse the image here, naming the values, instead of scoring noise."""
    if values.size == 0 or np.issubdtype(values.dtype, np.integer):
        return
    low, high = float(values.min()), float(values.max())  # NaN propagates through min/max
    if math.isfinite(low) and math.isfinite(high) and max(-low, high) <= _FLOAT32_MAX:
        return
    if "ModalityLUTSequence" in ds:
        source = "the Modality LUT Sequence"
    else:
        slope, intercept = _first_value_or_text(ds, "RescaleSlope"), _first_value_or_text(ds, "RescaleIntercept")
        source = f"Rescale Slope {slope} and Intercept {intercept}"
    raise error(INVALID_PIXELS, path, f"{source} give pixel values in [{low:g}, {high:g}], "
                                      "not finite float32 values")


def _first_value_or_text(ds: Any, keyword: str) -> str:
    """The value as the float it was read as (never the header's text), or what is wrong with it."""
    try:
        value = first_value(ds.get(keyword))
    except (TypeError, ValueError):
        return "(unreadable)"
    return "(absent)" if value is None else f"{value:g}"


def _apply_voi(values: np.ndarray, ds: Any) -> tuple[np.ndarray, str]:
    lut = _voi_lut(values, ds)
    if lut is not None:
        return lut, "voi_lut"
    window = _first_window(ds)
    if window is not None:
        return _window(values.astype(np.float32), *window), "window"
    return _percentile_window(values.astype(np.float32)), "percentile"


def _voi_lut(values: np.ndarray, ds: Any) -> np.ndarray | None:
    from pydicom.pixels import apply_voi

    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    try:
        bits = int(sequence[0].LUTDescriptor[2])
        if not 1 <= bits <= 16:  # PS3.3 C.11.2.1.1 allows 8 to 16; 0 would divide by zero below
            return None
        if not np.issubdtype(values.dtype, np.integer):
            values = np.rint(values).astype(np.int64)
        mapped = apply_voi(values, ds, index=0)
    except Exception:  # unusable LUT: fall back to the window, then the percentiles
        return None
    return np.clip(scaled(mapped, float(2**bits - 1)), 0.0, 1.0)


def _first_window(ds: Any) -> tuple[float, float, str] | None:
    try:
        center = first_value(ds.get("WindowCenter"))
        width = first_value(ds.get("WindowWidth"))
        function = upper(ds.get("VOILUTFunction")) or "LINEAR"
    except (TypeError, ValueError):
        return None
    if center is None or width is None or not (abs(center) <= _FLOAT32_MAX and abs(width) <= _FLOAT32_MAX):
        return None  # absent, NaN, infinite, or too large for the float32 arithmetic of _window
    valid = width > 0 if function in ("LINEAR_EXACT", "SIGMOID") else width >= 1
    return (center, width, function) if valid else None


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 and C.11.2.1.3, straight to [0, 1] (pydicom maps to the stored-bit range)."""
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (values - np.float32(center)) / np.float32(width)))).astype(
            np.float32
        )
    if function == "LINEAR_EXACT":
        low, span = center - width / 2, width
    else:  # LINEAR, also for unknown functions
        low, span = center - 0.5 - (width - 1) / 2, width - 1
    if span == 0:
        return (values > low).astype(np.float32)
    out = values - np.float32(low)
    out *= np.float32(1.0 / span)
    return np.clip(out, 0.0, 1.0, out=out)


def _percentile_window(values: np.ndarray) -> np.ndarray:
    low, high = (float(v) for v in np.percentile(values, _PERCENTILES))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    out = values - np.float32(low)
    out *= np.float32(1.0 / (high - low))
    return np.clip(out, 0.0, 1.0, out=out)


def _colour_to_grey(raw: np.ndarray, ds: Any, photometric: str, geometry: Geometry) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(raw, ds)
        top = float(np.iinfo(rgb.dtype).max) if np.issubdtype(rgb.dtype, np.integer) else 1.0
    else:
        rgb = raw
        top = float(2 ** min(geometry.bits_stored, 32) - 1)
    if rgb.ndim == 2:  # a colour interpretation with one sample: treat it as grey
        grey = rgb.astype(np.float32)
    else:
        grey = rgb[..., :3].astype(np.float32) @ _LUMA
    return np.clip(scaled(grey, top), 0.0, 1.0)
