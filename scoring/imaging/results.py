"""What a successful read returns: :class:`XRayImage` and the metadata every format shares.

Every ``meta`` has the same keys: ``format`` ("png" | "jpeg" | "dicom"), ``rows``, ``cols`` (the stored size, before
any processing: EXIF orientations 5-8 transpose ``pixels``), ``mode`` and ``exif_orientation`` (PNG/JPEG; None for
DICOM), ``bits_stored`` (8 or 16 for PNG, 8 for JPEG) and the DICOM keys ``modality``, ``body_part``,
``view_position``, ``study_date``, ``study_uid``, ``series_uid``, ``sop_uid``, ``sop_class``,
``presentation_intent``, ``view_code`` (View Code Sequence's first code, "SCHEME:VALUE"), ``manufacturer``,
``photometric``, ``pixel_spacing`` ([row, col] mm from Pixel Spacing, else Imager Pixel Spacing),
``burned_in_annotation``, ``transfer_syntax``, ``frames``, ``voi`` and ``patient_pseudonym``, which are None for
PNG/JPEG and for absent values; ``decode_scale`` (1.0, or less after a reduced decode: see ``downsample``). No
PatientName, PatientID, BirthDate or other identifying data: ``patient_pseudonym`` is
``db.config.pseudonymise(PatientID)``, computed in the calling process (so it uses the caller's ``CXR_HOME`` and
key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

DICOM_META_KEYS = (
    "modality",
    "body_part",
    "view_position",
    "view_code",
    "study_date",
    "study_uid",
    "series_uid",
    "sop_uid",
    "sop_class",
    "presentation_intent",
    "manufacturer",
    "photometric",
    "bits_stored",
    "pixel_spacing",
    "burned_in_annotation",
    "transfer_syntax",
    "frames",
    "voi",
    "patient_pseudonym",
)


@dataclass(frozen=True, eq=False)
class XRayImage:
    pixels: np.ndarray  # 2-D float32 in [0, 1], bone white
    meta: dict[str, Any]

    @property
    def stored_shape(self) -> tuple[int, int]:
        """(rows, cols) of the image as stored, oriented like ``pixels``: larger than ``pixels.shape`` after a
        reduced decode, whose integer factors round the sides."""
        shown_rows, shown_cols = self.pixels.shape[:2]
        rows, cols = int(self.meta.get("rows") or shown_rows), int(self.meta.get("cols") or shown_cols)
        if (rows > cols) != (shown_rows > shown_cols):  # turned by an EXIF orientation
            rows, cols = cols, rows
        return rows, cols


class Decoded(NamedTuple):
    """What a decoder hands back, in this process or from the isolated child."""

    pixels: np.ndarray
    meta: dict[str, Any]
    patient_id: str | None  # never leaves the package: replaced by a pseudonym in read_xray


def base_meta(kind: str, rows: int, cols: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"format": kind, "rows": rows, "cols": cols, "decode_scale": 1.0, "mode": None}
    meta["exif_orientation"] = None
    meta.update(dict.fromkeys(DICOM_META_KEYS))
    return meta
