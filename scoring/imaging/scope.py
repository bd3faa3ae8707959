"""The scope check: whether a frontal chest classifier should see an image at all.

Only DICOM carries the metadata to decide; PNG and JPEG are in scope ("no_metadata"). A DICOM image is in scope when
it is a radiograph (CR or DX) meant for viewing, one frame, monochrome, of the chest where Body Part Examined says
so, and not a lateral view (by View Position or by View Code Sequence, either one enough), an oblique or a
decubitus one. The "why" is short and machine-readable, such as ``modality:CT``, ``for_processing``,
``multi_frame:10``, ``photometric:RGB``, ``body_part:EXTREMITY``, ``lateral_view:LL``, ``lateral_view:left lateral``
(coded), ``oblique_view:RLO`` or ``decubitus_view:LLD``; in scope it is ``ok``, or ``body_part_missing``.

A DX image "for processing" (its SOP class, or Presentation Intent Type FOR PROCESSING) holds the detector's raw
values, before the manufacturer's processing that makes the film a radiologist reads (and that every training film
went through): it looks nothing like one, and a score of it would mean nothing. The processed image of the same
exposure is a separate "for presentation" instance, and that one is scored.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from .header import MONOCHROME, upper

CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "TORAX", "TORACE"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT", "LEFT LATERAL", "RIGHT LATERAL"})
# View Position's other defined terms (PS3.3 C.8.1.1, C.8.11.5) for views that are not a frontal film: the lateral
# obliques (with the usual abbreviations of the anterior and posterior ones) and the lateral decubitus views (a frontal
# projection of a patient lying on one side, taken with a horizontal beam: the chest lies across the film).
OBLIQUE_VIEWS = frozenset({"RLO", "LLO", "RAO", "LAO", "RPO", "LPO"})
DECUBITUS_VIEWS = frozenset({"RLD", "LLD"})
# The lateral views of DICOM's DX View list (CID 4010) as View Code Sequence gives them: SNOMED CT codes, and the
# SNOMED RT codes older modalities write (pairs as in pydicom's SNOMED mapping).
LATERAL_VIEW_CODES = {
    "SCT:399198007": "right lateral", "SRT:R-10232": "right lateral",
    "SCT:399173006": "left lateral", "SRT:R-10236": "left lateral",
    "SCT:399067008": "lateral", "SRT:R-102CD": "lateral",
    "SCT:399352003": "lateral-medial", "SRT:R-10228": "lateral-medial",
    "SCT:399260004": "medial-lateral", "SRT:R-10224": "medial-lateral",
}
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"  # Digital X-Ray Image Storage - For Processing


def in_scope(meta: dict[str, Any]) -> tuple[bool, str]:
    """Whether a frontal chest classifier should see this image, and a short machine-readable why."""
    if meta.get("format") != "dicom":
        return True, "no_metadata"
    modality = upper(meta.get("modality"))
    if modality not in RADIOGRAPH_MODALITIES:
        return False, f"modality:{modality or 'missing'}"
    if meta.get("sop_class") == DX_FOR_PROCESSING or upper(meta.get("presentation_intent")) == "FOR PROCESSING":
        return False, "for_processing"
    frames = meta.get("frames") or 1
    if frames > 1:
        return False, f"multi_frame:{frames}"
    photometric = upper(meta.get("photometric"))
    if photometric not in MONOCHROME:
        return False, f"photometric:{photometric or 'missing'}"
    body_part = upper(meta.get("body_part"))
    if body_part and not _is_chest(body_part):
        return False, f"body_part:{body_part}"
    view = upper(meta.get("view_position"))
    for kind, views in (("lateral_view", LATERAL_VIEWS), ("oblique_view", OBLIQUE_VIEWS),
                        ("decubitus_view", DECUBITUS_VIEWS)):
        if view in views:
            return False, f"{kind}:{view}"
    coded = LATERAL_VIEW_CODES.get(meta.get("view_code") or "")
    if coded:
        return False, f"lateral_view:{coded}"
    return True, "ok" if body_part else "body_part_missing"


def _is_chest(body_part: str) -> bool:
    # Accents dropped: Body Part Examined is plain ASCII by the standard, but a localised modality may write TÓRAX.
    plain = unicodedata.normalize("NFKD", body_part).encode("ascii", "ignore").decode()
    words = "".join(c if c.isalnum() else " " for c in plain).split()
    return any(word in CHEST_BODY_PARTS for word in words)
