"""Reduced decoding for a model's input: how far an image may shrink, and the area downsample.

``read_xray(path, min_side=N)`` may return pixels whose shorter side is at least N instead of the stored
size (the scorer asks for twice its model's input side, so that the model input still comes from an
antialiased resize). The codecs that can decode less do so first (JPEG 2000 at a coarser resolution level,
JPEG by DCT scaling, see ``pixel_data`` and ``raster``); whatever is still more than twice the size needed is
then averaged over ``f x f`` blocks, on the stored integers, before the display transforms touch it, so
that neither they nor the transfer from the decoder child handle the full-size array. ``meta["rows"]`` and
``meta["cols"]`` stay the stored size; ``meta["decode_scale"]`` is about the returned size over the stored
size, per side (1.0 for a full decode).
"""

from __future__ import annotations

import numpy as np


def area_factor(rows: int, cols: int, min_side: int | None) -> int:
    """The largest integer block size that keeps the shorter side at least ``min_side``."""
    if min_side is None:
        return 1
    return max(1, min(rows, cols) // min_side)


def reduce_to(values: np.ndarray, min_side: int | None) -> tuple[np.ndarray, int]:
    """``values`` area-downsampled as far as ``min_side`` allows, and the factor used (1: unchanged).

    Only 2-D integer arrays are reduced; anything else (colour, float pixel data) is returned as it is.
    """
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.integer):
        return values, 1
    factor = area_factor(*values.shape, min_side)
    if factor == 1:
        return values, 1
    return area_downsample(values, factor), factor


def area_downsample(values: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each ``factor x factor`` block, rounded, in the input's integer dtype.

    The output has ``ceil(n / factor)`` rows and columns, as a JPEG 2000 reduce has: the last block of a row
    or column averages the pixels it has, so the image keeps its extent and aspect ratio. The sums are integers
    in an array ``factor`` times smaller than the input, never a full-size float copy: whole blocks of rows summed
    at once (contiguous rows, 1.7x faster than a strided add per row offset), then columns by strided adds (the
    other way round, a reduction over ``factor`` adjacent values, is slower).
    """
    rows, cols = values.shape
    info = np.iinfo(values.dtype)
    largest = max(abs(int(info.min)), int(info.max)) * factor * factor
    accumulator = np.int32 if largest < 2**31 else np.int64
    whole_rows, whole_cols = rows // factor, cols // factor
    row_sums = np.empty((-(-rows // factor), cols), dtype=accumulator)
    np.sum(values[: whole_rows * factor].reshape(whole_rows, factor, cols), axis=1, dtype=accumulator,
           out=row_sums[:whole_rows])
    if whole_rows < len(row_sums):
        np.sum(values[whole_rows * factor:], axis=0, dtype=accumulator, out=row_sums[whole_rows])
    sums = np.zeros((row_sums.shape[0], -(-cols // factor)), dtype=accumulator)
    for offset in range(min(factor, cols)):
        part = row_sums[:, offset::factor]
        sums[:, : part.shape[1]] += part
    # Whole blocks share one count: a division by a scalar, 20x faster than by an array of counts.
    _divide_rounded(sums[:whole_rows, :whole_cols], factor * factor)
    if rows % factor:  # the last row of blocks, its corner included
        _divide_rounded(sums[-1], (rows % factor) * _block_lengths(cols, factor).astype(accumulator))
    if cols % factor:
        _divide_rounded(sums[:whole_rows, -1], factor * (cols % factor))
    return sums.astype(values.dtype)


def _divide_rounded(sums: np.ndarray, counts: int | np.ndarray) -> None:
    sums += counts // 2  # round half up; floor division rounds negative sums the same way
    sums //= counts


def _block_lengths(size: int, factor: int) -> np.ndarray:
    lengths = np.full(-(-size // factor), factor)
    lengths[-1] = size - factor * (len(lengths) - 1)
    return lengths
