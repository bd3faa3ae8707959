"""Helpers shared by the test_imaging_* files: the output check, hand-written windows, and two file builders."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from scoring.imaging import XRayImage

EXACT = 1e-6  # lossless: identical up to float32 rounding of the same arithmetic


def check_image(image: XRayImage) -> None:
    pixels = image.pixels
    assert pixels.ndim == 2 and pixels.dtype == np.float32
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    assert pixels.std() > 0.01, "constant image"


def window_linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 written out by hand, output in [0, 1]."""
    values = values.astype(np.float64)
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    out = ((values - (center - 0.5)) / (width - 1) + 0.5).clip(0, 1)
    out[values <= low] = 0.0
    out[values > high] = 1.0
    return out


def percentile_window(values: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """The 0.5-99.5 percentile window, its percentiles taken where ``keep`` (all pixels where None)."""
    low, high = np.percentile(values.astype(np.float64)[keep if keep is not None else ...], [0.5, 99.5])
    return ((values - low) / (high - low)).clip(0, 1)


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def with_pixel_bytes(path: Path, change: Callable[[bytes], bytes]) -> Path:
    ds = pydicom.dcmread(path)
    ds.PixelData = change(ds.PixelData)
    ds.save_as(path)
    return path
