"""The central chest region, and the share of a map's positive attribution that falls outside it.

The region is deliberately generous (conservative for the signal): it leaves out only what cannot hold lung on
a frontal chest film, so attribution counted as "outside" really is off the lungs. In coordinates normalised to
[-1, 1] across the image (u across the columns, v down the rows), a pixel is inside when

- it is not in the border band: |u| <= 0.8 and |v| <= 0.8, i.e. 10 % of each side is border, which holds the
  collimation edges, film borders, the L/R markers and the burned-in text lines along the top and bottom edges;
- it is not in a corner: |u| + |v| <= 1.4, cutting a triangle with 10 %-of-the-side legs off each inner corner,
  where text labels and markers most often sit (the lung apices and costophrenic angles stay inside).

The region follows the image geometry only (no lung segmentation), so it does not move with the anatomy: a
child's small chest in a large film, or a badly centred film, put some lung-free area inside it — which makes
the signal miss some off-lung attention, never invent it.
"""

from __future__ import annotations

import math

import numpy as np

BORDER_FRACTION = 0.10  # of each side
CORNER_CUT = 1.4  # |u| + |v| above this is a corner


def central_chest_region(rows: int, cols: int) -> np.ndarray:
    """A ``(rows, cols)`` boolean mask, True inside the central chest region (see the module docstring)."""
    if rows <= 0 or cols <= 0:
        raise ValueError(f"empty geometry {rows} x {cols}")
    v = np.abs((np.arange(rows, dtype=np.float32) + 0.5) / rows * 2 - 1)[:, None]
    u = np.abs((np.arange(cols, dtype=np.float32) + 0.5) / cols * 2 - 1)[None, :]
    limit = 1 - 2 * BORDER_FRACTION
    return (u <= limit) & (v <= limit) & (u + v <= CORNER_CUT)


def outside_share(values: np.ndarray) -> float:
    """Share of the map's positive attribution outside :func:`central_chest_region`; NaN when nothing is
    positive (there is then nothing to place)."""
    positive = np.clip(values.astype(np.float64), 0, None)
    total = float(positive.sum())
    if not total > 0:
        return math.nan
    inside = float(positive[central_chest_region(*values.shape)].sum())
    return min(1.0, max(0.0, 1 - inside / total))
