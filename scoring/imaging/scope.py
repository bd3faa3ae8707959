"""The scope check: whether a frontal chest classifier should see an image at all.

Only DICOM carries the metadata to decide; PNG and JPEG are in scope ("no_metadata"). A DICOM image is in scope when
it is a radiograph (CR or DX) meant for viewing, one frame, monochrome, of the chest where Body Part Examined says
so, not a lateral, oblique or decubitus view by View Position, and not coded as any view but a frontal one in View
Code Sequence (either attribute is enough to leave a film out). The "why" is short and machine-readable, such as
``modality:CT``, ``for_processing``, ``multi_frame:10``, ``photometric:RGB``, ``body_part:EXTREMITY``,
``lateral_view:LL``, ``oblique_view:RLO``, ``decubitus_view:LLD`` or, coded, ``lateral_view:left lateral``,
``oblique_view:right anterior oblique`` and ``other_view:axial``; in scope it is ``ok``, or ``body_part_missing``.

A DX image "for processing" (its SOP class, or Presentation Intent Type FOR PROCESSING) holds the detector's raw
values, before the manufacturer's processing that makes the film a radiologist reads (and that every training film
went through): it looks nothing like one, and a score of it would mean nothing. The processed image of the same
exposure is a separate "for presentation" instance, and that one is scored.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from .header import MONOCHROME, upper

# What a view makes the film: in scope (frontal), or the first part of the out-of-scope "why"
FRONTAL, LATERAL, OBLIQUE, DECUBITUS, OTHER = None, "lateral_view", "oblique_view", "decubitus_view", "other_view"
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "TORAX", "TORACE"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT", "LEFT LATERAL", "RIGHT LATERAL"})
# View Position's other defined terms (PS3.3 C.8.1.1, C.8.11.5) for views that are not a frontal film: the lateral
# obliques (with the usual abbreviations of the anterior and posterior ones) and the lateral decubitus views (a frontal
# projection of a patient lying on one side, taken with a horizontal beam: the chest lies across the film).
OBLIQUE_VIEWS = frozenset({"RLO", "LLO", "RAO", "LAO", "RPO", "LPO"})
DECUBITUS_VIEWS = frozenset({"RLD", "LLD"})
# DICOM's DX View list (CID 4010), as View Code Sequence gives a view: its SNOMED CT code, the SNOMED RT code older
# modalities write (pairs as in pydicom's SNOMED mapping), its meaning and what it makes the film. Only the frontal
# projections are a frontal chest film; a code outside the list says nothing, and View Position alone decides.
DX_VIEWS = (
    ("399348003", "R-10206", "antero-posterior", FRONTAL),
    ("399033003", "R-10202", "frontal", FRONTAL),
    ("272479007", "R-40888", "postero-anterior", FRONTAL),
    ("399067008", "R-102CD", "lateral", LATERAL),
    ("399352003", "R-10228", "lateral-medial", LATERAL),
    ("399173006", "R-10236", "left lateral", LATERAL),
    ("399260004", "R-10224", "medial-lateral", LATERAL),
    ("399198007", "R-10232", "right lateral", LATERAL),
    ("399312000", "R-10208", "antero-posterior oblique", OBLIQUE),
    ("399160007", "R-10204", "frontal oblique", OBLIQUE),
    ("399132005", "R-10252", "frontal-oblique axial", OBLIQUE),
    ("260427002", "R-40783", "lateral oblique", OBLIQUE),
    ("399099002", "R-10230", "latero-medial oblique", OBLIQUE),
    ("399135007", "R-10220", "left anterior oblique", OBLIQUE),
    ("399184004", "R-10238", "left oblique", OBLIQUE),
    ("399006002", "R-10212", "left posterior oblique", OBLIQUE),
    ("260426006", "R-40782", "medial oblique", OBLIQUE),
    ("399368009", "R-10226", "medio-lateral oblique", OBLIQUE),
    ("399182000", "R-102C1", "oblique", OBLIQUE),
    ("399004004", "R-10246", "oblique axial", OBLIQUE),
    ("399225005", "R-10250", "oblique caudo-cranial", OBLIQUE),
    ("399288005", "R-10248", "oblique cranio-caudal", OBLIQUE),
    ("399059000", "R-10216", "postero-anterior oblique", OBLIQUE),
    ("399356000", "R-40985", "right anterior oblique", OBLIQUE),
    ("399236003", "R-10234", "right oblique", OBLIQUE),
    ("399038007", "R-10210", "right posterior oblique", OBLIQUE),
    ("399325008", "R-10254", "sagittal-oblique axial", OBLIQUE),
    ("399242004", "R-102C6", "acanthioparietal", OTHER),
    ("399061009", "R-10241", "axial", OTHER),
    ("399196006", "R-10244", "caudo-cranial", OTHER),
    ("399162004", "R-10242", "cranio-caudal", OTHER),
    ("399335002", "R-102C4", "dorsoplantar", OTHER),
    ("260499007", "R-40810", "occlusal projection", OTHER),
    ("399351005", "R-102C7", "orbitoparietal", OTHER),
    ("399316002", "R-102C8", "parieto-orbital", OTHER),
    ("399272005", "R-102C5", "parietoacanthial", OTHER),
    ("399071006", "R-102C3", "plantodorsal", OTHER),
    ("30730003", "G-A145", "sagittal", OTHER),
    ("399255003", "R-10256", "submentovertical", OTHER),
    ("399110001", "R-102C2", "tangential", OTHER),
    ("119376003", "G-8300", "tissue specimen", OTHER),
    ("399360002", "R-10257", "verticosubmental", OTHER),
)
# "SCHEME:VALUE" (as ``meta["view_code"]`` has it) -> (why the film is out of scope or None for a frontal view,
# meaning)
DX_VIEW_CODES = {f"{scheme}:{code}": (kind, meaning) for sct, srt, meaning, kind in DX_VIEWS
                 for scheme, code in (("SCT", sct), ("SRT", srt))}
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
    for kind, views in ((LATERAL, LATERAL_VIEWS), (OBLIQUE, OBLIQUE_VIEWS), (DECUBITUS, DECUBITUS_VIEWS)):
        if view in views:
            return False, f"{kind}:{view}"
    kind, meaning = DX_VIEW_CODES.get(meta.get("view_code") or "", (FRONTAL, ""))
    if kind is not FRONTAL:
        return False, f"{kind}:{meaning}"
    return True, "ok" if body_part else "body_part_missing"


def _is_chest(body_part: str) -> bool:
    # Accents dropped: Body Part Examined is plain ASCII by the standard, but a localised modality may write TÓRAX.
    plain = unicodedata.normalize("NFKD", body_part).encode("ascii", "ignore").decode()
    words = "".join(c if c.isalnum() else " " for c in plain).split()
    return any(word in CHEST_BODY_PARTS for word in words)
