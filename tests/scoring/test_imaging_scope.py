"""scoring.imaging.in_scope on a table of metadata: which images the chest X-ray model may score, and why not."""

from __future__ import annotations

import pytest

from scoring.imaging import in_scope
from scoring.imaging.scope import DX_FOR_PROCESSING, DX_VIEW_CODES

# --------------------------------------------------------------------------------------------
# in_scope


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"format": "png"}, (True, "no_metadata")),
        ({"format": "jpeg"}, (True, "no_metadata")),
        (
            {"format": "dicom", "modality": "CR", "body_part": "CHEST", "photometric": "MONOCHROME1"},
            (True, "ok"),
        ),
        (
            {"format": "dicom", "modality": "DX", "body_part": "THORAX", "photometric": "MONOCHROME2"},
            (True, "ok"),
        ),
        (
            {"format": "dicom", "modality": "DX", "body_part": "Chest PA", "photometric": "MONOCHROME2"},
            (True, "ok"),
        ),
        (
            {"format": "dicom", "modality": "DX", "body_part": "LUNG", "photometric": "MONOCHROME2"},
            (True, "ok"),
        ),
        (
            {"format": "dicom", "modality": "DX", "body_part": None, "photometric": "MONOCHROME2"},
            (True, "body_part_missing"),
        ),
        (
            {"format": "dicom", "modality": "CR", "body_part": "TÓRAX", "photometric": "MONOCHROME1"},
            (True, "ok"),
        ),
        (
            {"format": "dicom", "modality": "DX", "body_part": "Torace PA", "photometric": "MONOCHROME2"},
            (True, "ok"),
        ),
        (
            {"format": "dicom", "modality": "CT", "body_part": "CHEST", "photometric": "MONOCHROME2"},
            (False, "modality:CT"),
        ),
        ({"format": "dicom", "modality": None, "photometric": "MONOCHROME2"}, (False, "modality:missing")),
        (
            {"format": "dicom", "modality": "CR", "body_part": "EXTREMITY", "photometric": "MONOCHROME2"},
            (False, "body_part:EXTREMITY"),
        ),
        (
            {"format": "dicom", "modality": "CR", "body_part": "TSPINE", "photometric": "MONOCHROME2"},
            (False, "body_part:TSPINE"),
        ),
        (
            {"format": "dicom", "modality": "DX", "view_position": "LL", "photometric": "MONOCHROME2"},
            (False, "lateral_view:LL"),
        ),
        (
            {"format": "dicom", "modality": "DX", "view_position": "RL", "photometric": "MONOCHROME2"},
            (False, "lateral_view:RL"),
        ),
        (
            {"format": "dicom", "modality": "DX", "view_position": "LATERAL", "photometric": "MONOCHROME2"},
            (False, "lateral_view:LATERAL"),
        ),
        (
            {
                "format": "dicom",
                "modality": "DX",
                "view_position": "AP",
                "body_part": "CHEST",
                "photometric": "MONOCHROME2",
            },
            (True, "ok"),
        ),
        (
            {"format": "dicom", "modality": "CR", "frames": 3, "photometric": "MONOCHROME2"},
            (False, "multi_frame:3"),
        ),
        ({"format": "dicom", "modality": "CR", "photometric": "RGB"}, (False, "photometric:RGB")),
        (
            {"format": "dicom", "modality": "CR", "view_position": "RLO", "photometric": "MONOCHROME2"},
            (False, "oblique_view:RLO"),
        ),
        (
            {"format": "dicom", "modality": "DX", "view_position": "lao", "photometric": "MONOCHROME2"},
            (False, "oblique_view:LAO"),
        ),
        (
            {"format": "dicom", "modality": "DX", "view_position": "LLD", "body_part": "CHEST",
             "photometric": "MONOCHROME2"},
            (False, "decubitus_view:LLD"),
        ),
        (
            {"format": "dicom", "modality": "CR", "view_position": "PA", "body_part": "CHEST",
             "photometric": "MONOCHROME1"},
            (True, "ok"),
        ),
        (
            {"format": "dicom", "modality": "DX", "view_code": "SCT:399173006", "photometric": "MONOCHROME2"},
            (False, "lateral_view:left lateral"),
        ),
        (
            {"format": "dicom", "modality": "CR", "view_code": "SRT:R-10232", "photometric": "MONOCHROME1"},
            (False, "lateral_view:right lateral"),
        ),
        (
            {"format": "dicom", "modality": "DX", "view_position": "PA", "view_code": "SCT:399067008",
             "body_part": "CHEST", "photometric": "MONOCHROME2"},
            (False, "lateral_view:lateral"),  # the two disagree: not scored as a frontal film
        ),
        (
            {"format": "dicom", "modality": "DX", "view_position": "PA", "view_code": "SCT:272479007",
             "body_part": "CHEST", "photometric": "MONOCHROME2"},
            (True, "ok"),  # postero-anterior
        ),
        (
            {"format": "dicom", "modality": "CR", "view_code": "SRT:R-10206", "body_part": "CHEST",
             "photometric": "MONOCHROME1"},
            (True, "ok"),  # antero-posterior, in SNOMED RT
        ),
        (
            {"format": "dicom", "modality": "DX", "view_code": "SCT:399356000", "body_part": "CHEST",
             "photometric": "MONOCHROME2"},
            (False, "oblique_view:right anterior oblique"),
        ),
        (
            {"format": "dicom", "modality": "DX", "view_position": "AP", "view_code": "SRT:R-10241",
             "body_part": "CHEST", "photometric": "MONOCHROME2"},
            (False, "other_view:axial"),
        ),
        (
            {"format": "dicom", "modality": "DX", "view_position": "PA", "view_code": "99LOCAL:PA-ERECT",
             "body_part": "CHEST", "photometric": "MONOCHROME2"},
            (True, "ok"),  # a code outside DICOM's list says nothing: View Position decides
        ),
        (
            {"format": "dicom", "modality": "DX", "presentation_intent": "FOR PROCESSING",
             "photometric": "MONOCHROME2"},
            (False, "for_processing"),
        ),
        (
            {"format": "dicom", "modality": "DX", "sop_class": DX_FOR_PROCESSING, "photometric": "MONOCHROME2"},
            (False, "for_processing"),
        ),
        (
            {"format": "dicom", "modality": "DX", "presentation_intent": "for processing ", "body_part": "CHEST",
             "photometric": "MONOCHROME2"},
            (False, "for_processing"),
        ),
        (
            {"format": "dicom", "modality": "DX", "presentation_intent": "FOR PRESENTATION", "body_part": "CHEST",
             "sop_class": "1.2.840.10008.5.1.4.1.1.1.1", "photometric": "MONOCHROME2"},
            (True, "ok"),
        ),
    ],
)
def test_in_scope(meta, expected) -> None:
    assert in_scope(meta) == expected


def test_the_view_codes_are_dicoms_dx_views() -> None:
    """Pinned to pydicom's copy of DICOM's DX View list (CID 4010) and its SNOMED CT to SNOMED RT mapping: every view
    there is in the table under both codes with its meaning, nothing else is, and only the three frontal projections
    leave a film in scope."""
    from pydicom.sr._cid_dict import cid_concepts
    from pydicom.sr._snomed_dict import mapping
    from pydicom.sr.codedict import codes

    dx_views = [getattr(codes.SCT, name) for name in cid_concepts[4010]["SCT"]]
    expected = {f"SCT:{code.value}": code.meaning.lower() for code in dx_views}
    expected |= {f"SRT:{mapping['SCT'][code.value]}": code.meaning.lower() for code in dx_views}
    assert {key: meaning for key, (_, meaning) in DX_VIEW_CODES.items()} == expected
    frontal = {meaning for kind, meaning in DX_VIEW_CODES.values() if kind is None}
    assert frontal == {"frontal", "postero-anterior", "antero-posterior"}
    laterals = {meaning for kind, meaning in DX_VIEW_CODES.values() if kind == "lateral_view"}
    assert laterals == {m for m in expected.values() if "lateral" in m and "oblique" not in m}
    obliques = {meaning for kind, meaning in DX_VIEW_CODES.values() if kind == "oblique_view"}
    assert obliques == {m for m in expected.values() if "oblique" in m}
