"""Display transforms: stored DICOM values to [0, 1] with bone white, and the checks on the result.

Monochrome images go modality LUT (Modality LUT Sequence, or Rescale Slope/Intercept) -> the first
VOI LUT Sequence item (output scaled by its bit depth, see below), else the FIRST Window Centre/Width
with VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.2-3, mapped straight to
[0, 1]; an unknown function is LINEAR), else -- also when the window is invalid (:func:`usable_window`:
width below 1 for LINEAR, not above 0 for LINEAR_EXACT and SIGMOID) -- the 0.5-99.5 percentile range
of the pixels that are not padding -> [0, 1] -> inverted for MONOCHROME1, after windowing.
``meta["voi"]`` is ``"voi_lut"``, ``"window"`` or ``"percentile"`` accordingly (``"voi_lut_<n>bit"``
when the VOI LUT was scaled by fewer bits than it declares, below). Colour images (RGB, YBR_*, PALETTE
COLOR) are converted to luma with Pillow's weights and scaled by their bit depth without VOI (``voi``
``"none"``); ``in_scope`` rejects them.

VOI LUT bit depth. The output of a VOI LUT is divided by 2**n - 1, n the third LUT Descriptor value,
except where the LUT's data are much narrower than n says: some writers (Agfa CR is the known one)
declare 16 bits and store 12-bit data, which read at their word show the film at 6 % of white at
most. When the largest entry of the LUT needs at least ``_LUT_SLACK_BITS`` (4) bits fewer than
declared, n is taken as the smallest depth of 8 to 16 that holds that entry (16 declared, largest
entry 3000 -> 12); ``voi`` then says ``"voi_lut_12bit"``. dcm4che (issue #413) and dicom-rs (PR
#825, which names Horos and Cornerstone as doing the same) work around it likewise, but with no
margin. The margin keeps conforming LUTs as they are: a LUT whose output stops short of its top by up
to 3 bits (its largest entry at least 1/16 of the declared maximum) is scaled by its declared depth and
shows as dark as written; only a LUT that keeps every entry below 1/16 of its declared range -- a
display transform no writer means -- is rescaled. (dcm4che reads any 16-bit LUT whose top bit is
unused at its data's depth, which doubles the brightness of a conforming LUT that reaches 40 % of
its range.)

Pixel padding (PS3.3 C.7.5.1.1.2). Pixels whose stored value (before the modality LUT) is Pixel
Padding Value, or lies between it and Pixel Padding Range Limit inclusive, are left out of the
percentiles, so a collimator border does not take up the window; the window then clips them like any
pixel outside it. Both values are compared as Bits Stored bits, signed where Pixel Representation is
1, as the pixels are read (so Pixel Padding Value 65535 of a signed 16-bit image is -1). Windows and
VOI LUTs from the header are used as they are.

Presentation LUT Shape is ignored: the polarity comes from the Photometric Interpretation alone
(MONOCHROME1 inverted), as pydicom's LUT functions and torchxrayvision do. The DX image module of
PS3.3 requires IDENTITY with MONOCHROME2 and INVERSE with MONOCHROME1 (an INVERSE shape on MONOCHROME1
pixels is that one inversion, not a second), so a conforming file gives the same polarity either way;
a file where the two disagree is malformed, with no telling which of the two is wrong, and the known
such files have a wrong shape (dcm4chee-arc-light issue #3155: Fuji CR shown inverted, hence its
option to ignore the shape).

A modality transform whose output is not finite float32 is ``invalid_pixels``, and so is any final
image outside [0, 1] (:func:`check_display_range`, the last guard of every format).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import INVALID_PIXELS, error
from .header import MONOCHROME, Geometry, first_value, int_value, upper

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PERCENTILES = (0.5, 99.5)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_LUT_SLACK_BITS = 4  # a VOI LUT's data this many bits narrower than declared are read at their own depth


def to_display(
    raw: np.ndarray, ds: Any, photometric: str, geometry: Geometry, path: bytes
) -> tuple[np.ndarray, str]:
    if photometric in MONOCHROME:
        # Overflow and NaN are checked for explicitly (here and in check_display_range); numpy's warnings
        # would only reach stderr.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            values = _modality_lut(raw, ds)
            _check_modality_output(values, ds, path)
            scaled_values, voi = _apply_voi(values, raw, ds, geometry)
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


def _apply_voi(values: np.ndarray, raw: np.ndarray, ds: Any, geometry: Geometry) -> tuple[np.ndarray, str]:
    lut = _voi_lut(values, ds)
    if lut is not None:
        return lut
    window = _first_window(ds)
    if window is not None:
        return _window(values.astype(np.float32), *window), "window"
    values = values.astype(np.float32)
    return _stretch(values, *percentile_range(values, not_padding(raw, ds, geometry))), "percentile"


def _voi_lut(values: np.ndarray, ds: Any) -> tuple[np.ndarray, str] | None:
    from pydicom.pixels import apply_voi

    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    try:
        descriptor = sequence[0].LUTDescriptor
        entries, first, bits = int(descriptor[0]), int(descriptor[1]), int(descriptor[2])
        if not 1 <= bits <= 16:  # PS3.3 C.11.2.1.1 allows 8 to 16; 0 would divide by zero below
            return None
        if not np.issubdtype(values.dtype, np.integer):
            values = np.rint(values).astype(np.int64)
        last = first + (entries or 65536) - 1
        # Inputs outside the table take its first or last entry (PS3.3 C.11.2.1.1), as pydicom maps them too, but
        # clipped here first: pydicom keeps an 8-bit LUT's indices in uint8, so an input 256 or more past the first
        # one mapped would wrap round to an entry near the start (pydicom 3.0)
        limits = np.iinfo(values.dtype)
        mapped = apply_voi(np.clip(values, max(first, limits.min), min(last, limits.max)), ds, index=0)
        # Every entry of the table, as pydicom reads it (at most 65536): the first input value mapped onwards.
        table = apply_voi(np.arange(first, last + 1, dtype=np.int64), ds, index=0)
    except Exception:  # unusable LUT: fall back to the window, then the percentiles
        return None
    used = lut_bits(bits, int(table.max(initial=0)))
    label = "voi_lut" if used == bits else f"voi_lut_{used}bit"
    return np.clip(scaled(mapped, float(2**used - 1)), 0.0, 1.0), label


def lut_bits(declared: int, largest_entry: int) -> int:
    """The bit depth a VOI LUT's output is scaled by: the declared one, or where the largest entry needs at least
    ``_LUT_SLACK_BITS`` fewer bits, the smallest of 8 to 16 that holds it (see the module's docstring)."""
    needed = max(8, largest_entry.bit_length())
    return needed if declared - needed >= _LUT_SLACK_BITS else declared


def usable_window(center: float | None, width: float | None, function: str) -> bool:
    """Whether a Window Centre/Width pair can be applied (the reader's and the viewer's rule): both present and
    finite within float32 (the arithmetic of :func:`_window`), the width at least 1 for LINEAR and any unknown
    function (both use LINEAR's formula, whose span is width - 1), above 0 for LINEAR_EXACT and SIGMOID."""
    if center is None or width is None or not (abs(center) <= _FLOAT32_MAX and abs(width) <= _FLOAT32_MAX):
        return False  # absent, NaN, infinite, or too large for float32
    return width > 0 if function in ("LINEAR_EXACT", "SIGMOID") else width >= 1


def _first_window(ds: Any) -> tuple[float, float, str] | None:
    try:
        center = first_value(ds.get("WindowCenter"))
        width = first_value(ds.get("WindowWidth"))
        function = upper(ds.get("VOILUTFunction")) or "LINEAR"
    except (TypeError, ValueError):
        return None
    return (center, width, function) if usable_window(center, width, function) else None


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


def not_padding(raw: np.ndarray, ds: Any, geometry: Geometry) -> np.ndarray | None:
    """True where a pixel is not padding (PS3.3 C.7.5.1.1.2: Pixel Padding Value, or the range from it to Pixel
    Padding Range Limit, inclusive, in stored values); None where the header declares no padding."""
    value = int_value(ds, "PixelPaddingValue")
    if value is None or raw.ndim != 2 or not np.issubdtype(raw.dtype, np.integer):
        return None
    bits = min(max(geometry.bits_stored, 1), raw.dtype.itemsize * 8)
    signed = int_value(ds, "PixelRepresentation") == 1
    low = _as_stored(value, bits, signed)
    limit = int_value(ds, "PixelPaddingRangeLimit")
    if limit is None:
        return np.not_equal(raw, low)
    low, high = sorted((low, _as_stored(limit, bits, signed)))
    keep = np.less(raw, low)
    return np.logical_or(keep, np.greater(raw, high), out=keep)


def _as_stored(value: int, bits: int, signed: bool) -> int:
    """A header value as the stored pixels read it: its low ``bits`` bits, two's complement when signed (a value
    written with the other VR, US for SS or SS for US, comes out as the pixels it stands for)."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if signed and value >> (bits - 1) else value


def percentile_range(values: np.ndarray, keep: np.ndarray | None = None) -> tuple[float, float]:
    """The 0.5 and 99.5 percentiles of ``values`` where ``keep`` (all where None, or where it keeps nothing); their
    minimum and maximum where the two are equal."""
    sample = values
    if keep is not None and keep.any():
        sample = values[keep]  # a copy: np.percentile may then work in it instead of copying again
    low, high = (float(v) for v in np.percentile(sample, _PERCENTILES, overwrite_input=sample is not values))
    if high <= low:
        low, high = float(sample.min()), float(sample.max())
    return low, high


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """float32 ``values`` mapped from [low, high] to [0, 1], clipped, in place."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    out = np.subtract(values, np.float32(low), out=values)
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
