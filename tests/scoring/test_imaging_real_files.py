"""scoring.imaging on real files (cxr-dev PNGs, pydicom's test DICOMs, the shared CR film) and on every
claimed transfer syntax, written from a real PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid

from db.config import pseudonymise
from scoring.imaging import in_scope, read_xray
from scoring.imaging.scope import DX_FOR_PROCESSING
from tests.scoring.imaging_checks import EXACT, check_image, percentile_window, window_linear

PATIENT_ID = "TEST-PATIENT-0042"

MONOCHROME2_CR = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
MONOCHROME1_COPY = "Fake_MONOHR1.dcm"


def mediastinum_minus_lungs(pixels: np.ndarray) -> float:
    """Centre column of the chest minus the mean of both lung fields; bone/soft tissue white > 0."""
    rows, cols = pixels.shape
    band = slice(int(0.28 * rows), int(0.5 * rows))
    centre = pixels[band, int(0.46 * cols) : int(0.54 * cols)].mean()
    left = pixels[band, int(0.22 * cols) : int(0.35 * cols)].mean()
    right = pixels[band, int(0.65 * cols) : int(0.78 * cols)].mean()
    return float(centre - (left + right) / 2)


# --------------------------------------------------------------------------------------------
# Real files


def test_every_cxr_dev_png_reads(cxr_dev: Path) -> None:
    paths = sorted(cxr_dev.glob("*/*.png"))
    assert len(paths) == 374
    for path in paths:
        image = read_xray(path, timeout=None)
        check_image(image)
        assert image.pixels.shape == (image.meta["rows"], image.meta["cols"]), path
        assert image.meta["format"] == "png" and image.meta["mode"] == "L"
        assert image.meta["bits_stored"] == 8
        assert in_scope(image.meta) == (True, "no_metadata")


def test_isolated_reads_equal_in_process_reads(cxr_dev: Path, pydicom_data) -> None:
    paths = sorted(cxr_dev.glob("*/*.png"))[::75] + [pydicom_data("RG1_J2KI.dcm")]
    for path in paths:
        isolated, local = read_xray(path), read_xray(path, timeout=None)
        np.testing.assert_array_equal(isolated.pixels, local.pixels)
        assert isolated.meta == local.meta


def test_real_cr_monochrome2_and_its_monochrome1_relabelled_copy(dicom_dir: Path) -> None:
    # Fake_MONOHR1.dcm holds byte-identical pixel data; only the Photometric Interpretation says
    # MONOCHROME1. Read correctly, it must therefore come out as the exact inverse, not the same.
    original = pydicom.dcmread(dicom_dir / MONOCHROME2_CR)
    relabelled = pydicom.dcmread(dicom_dir / MONOCHROME1_COPY)
    assert (original.PhotometricInterpretation, relabelled.PhotometricInterpretation) == (
        "MONOCHROME2",
        "MONOCHROME1",
    )
    np.testing.assert_array_equal(original.pixel_array, relabelled.pixel_array)

    mono2 = read_xray(dicom_dir / MONOCHROME2_CR)
    mono1 = read_xray(dicom_dir / MONOCHROME1_COPY)
    check_image(mono2)
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=EXACT)
    assert mediastinum_minus_lungs(mono2.pixels) > 0.2
    assert mediastinum_minus_lungs(mono1.pixels) < -0.2
    assert mono2.meta["voi"] == "percentile" and mono2.meta["transfer_syntax"] == uid.JPEGBaseline8Bit
    assert in_scope(mono2.meta) == (True, "ok")


def test_rg1_lossless_encodings_identical_and_lossy_close(pydicom_data) -> None:
    read = {
        name: read_xray(pydicom_data(f"{name}.dcm")).pixels
        for name in ("RG1_UNCR", "RG1_J2KR", "RG1_J2KI", "RG1_UNCI")
    }
    np.testing.assert_array_equal(read["RG1_UNCR"], read["RG1_J2KR"])
    # RG1_UNCI is RG1_J2KI decompressed by its author: our JPEG 2000 decoding must match it.
    np.testing.assert_array_equal(read["RG1_J2KI"], read["RG1_UNCI"])
    # Lossy against lossless, measured: mean 0.00167, max 0.0134 (window 15000/30000).
    difference = np.abs(read["RG1_J2KI"] - read["RG1_UNCR"])
    assert difference.mean() < 0.0025
    assert difference.max() < 0.02


def test_rg1_monochrome1_is_inverted_so_bone_is_white(pydicom_data) -> None:
    image = read_xray(pydicom_data("RG1_UNCR.dcm"), timeout=None)
    assert image.meta["photometric"] == "MONOCHROME1" and image.meta["voi"] == "window"
    # Without the inversion the mediastinum would be darker than the lungs (measured +0.33).
    assert mediastinum_minus_lungs(image.pixels) > 0.2
    raw = pydicom.dcmread(pydicom_data("RG1_UNCR.dcm")).pixel_array
    np.testing.assert_allclose(image.pixels, 1.0 - window_linear(raw, 15000, 30000), atol=EXACT)


# (id, real file, bytes after its last element): fewer than an element header (8 bytes) after a complete dataset
# with its pixels, which pydicom ignores; 8 or more are an element pydicom reads (the all-zero (0000,0000) here).
TRAILING_BYTES = [
    ("siim_cr_1_zero_byte", MONOCHROME2_CR, b"\0"),
    ("siim_cr_2_zero_bytes", MONOCHROME2_CR, b"\0\0"),
    ("siim_cr_7_bytes", MONOCHROME2_CR, b"\xff" * 7),
    ("siim_cr_8_zero_bytes", MONOCHROME2_CR, b"\0" * 8),
    ("rg1_uncr_3_bytes", "RG1_UNCR.dcm", b"END"),  # native, 15 bits
    ("jpeg2000_1_byte", "JPEG2000.dcm", b"\0"),  # encapsulated, after the sequence delimiter
]


@pytest.mark.parametrize("isolated", [False, True], ids=["in_process", "isolated"])
@pytest.mark.parametrize(("name", "extra"), [case[1:] for case in TRAILING_BYTES],
                         ids=[case[0] for case in TRAILING_BYTES])
def test_trailing_bytes_after_a_complete_file_are_ignored(dicom_dir, pydicom_data, tmp_path, name, extra,
                                                          isolated) -> None:
    """A complete film with a few stray bytes at its end reads as without them (it was refused as truncated).
    A file cut inside an element stays truncated: test_imaging_bad_inputs.py's table."""
    source = dicom_dir / name if name == MONOCHROME2_CR else pydicom_data(name)
    path = tmp_path / "trailing.dcm"
    path.write_bytes(Path(source).read_bytes() + extra)
    image = read_xray(path, timeout=10 if isolated else None)
    np.testing.assert_array_equal(image.pixels, read_xray(source, timeout=None).pixels)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("RG1_UNCR.dcm", (True, "ok")),
        ("RG1_UNCI.dcm", (True, "ok")),
        ("RG1_J2KR.dcm", (True, "ok")),
        ("RG1_J2KI.dcm", (True, "ok")),
        ("RG3_UNCR.dcm", (False, "body_part:EXTREMITY")),
        ("RG3_J2KI.dcm", (False, "body_part:EXTREMITY")),
        ("693_UNCR.dcm", (False, "modality:CT")),
        ("693_J2KR.dcm", (False, "modality:CT")),
        ("MR2_UNCR.dcm", (False, "modality:MR")),
        ("MR2_J2KI.dcm", (False, "modality:MR")),
        ("US1_UNCR.dcm", (False, "modality:US")),
        ("emri_small.dcm", (False, "modality:MR")),
    ],
)
def test_scope_of_real_files(pydicom_data, name: str, expected: tuple[bool, str]) -> None:
    image = read_xray(pydicom_data(name), timeout=None)
    check_image(image)
    assert in_scope(image.meta) == expected


@pytest.mark.parametrize(
    ("sop_class", "intent", "expected"),
    [
        (DX_FOR_PROCESSING, "FOR PROCESSING", (False, "for_processing")),
        (DX_FOR_PROCESSING, None, (False, "for_processing")),  # the SOP class alone says so
        (uid.DigitalXRayImageStorageForPresentation, "FOR PROCESSING", (False, "for_processing")),
        (uid.DigitalXRayImageStorageForPresentation, "FOR PRESENTATION", (True, "ok")),
    ],
    ids=["for_processing", "sop_class_only", "intent_only", "for_presentation"],
)
def test_a_dx_film_for_processing_is_out_of_scope(pydicom_data, tmp_path, sop_class, intent, expected) -> None:
    """The real CR chest film as a DX: its raw "for processing" form is not scored, its processed one is. Read
    through the isolated decoder, so the two values are known to cross from it."""
    ds = pydicom.dcmread(pydicom_data("RG1_UNCR.dcm"))
    ds.Modality = "DX"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    if intent is not None:
        ds.PresentationIntentType = intent
    ds.save_as(tmp_path / "dx.dcm")
    image = read_xray(tmp_path / "dx.dcm")
    assert (image.meta["sop_class"], image.meta["presentation_intent"]) == (sop_class, intent)
    assert in_scope(image.meta) == expected


@pytest.mark.parametrize(
    ("scheme", "value", "view_code", "expected"),
    [
        ("SCT", "399173006", "SCT:399173006", (False, "lateral_view:left lateral")),
        ("SRT", "R-10232", "SRT:R-10232", (False, "lateral_view:right lateral")),
        ("SCT", "399033003", "SCT:399033003", (True, "ok")),  # frontal
        ("SRT", "R-10210", "SRT:R-10210", (False, "oblique_view:right posterior oblique")),
        ("SCT", "399110001", "SCT:399110001", (False, "other_view:tangential")),
        ("99LOCAL", "DOE^JOHN 1961", None, (True, "ok")),  # free text is not a code, and does not travel
    ],
    ids=["left_lateral", "right_lateral_snomed_rt", "frontal", "oblique_snomed_rt", "tangential", "free_text"],
)
def test_a_view_coded_as_anything_but_frontal_is_out_of_scope(pydicom_data, tmp_path, scheme, value, view_code,
                                                              expected) -> None:
    """The real CR chest film with no View Position and its view in View Code Sequence, read through the isolated
    decoder."""
    ds = pydicom.dcmread(pydicom_data("RG1_UNCR.dcm"))
    ds.ViewPosition = ""
    view = pydicom.Dataset()
    view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = value, scheme, "as written"
    ds.ViewCodeSequence = [view]
    ds.save_as(tmp_path / "coded.dcm")
    image = read_xray(tmp_path / "coded.dcm")
    assert image.meta["view_code"] == view_code
    assert in_scope(image.meta) == expected


def test_dicom_meta_has_no_phi_and_a_pseudonym(dicom_factory, source_pixels) -> None:
    path = dicom_factory("meta.dcm", source_pixels, PixelSpacing=[0.15, 0.16], BurnedInAnnotation="NO")
    image = read_xray(path)
    meta = image.meta
    assert meta["patient_pseudonym"] == pseudonymise(PATIENT_ID)
    assert meta["patient_pseudonym"].startswith("P-")
    flattened = repr(meta)
    for phi in (PATIENT_ID, "Doe", "Jane", "19700101"):
        assert phi not in flattened
    assert meta["modality"] == "CR" and meta["body_part"] == "CHEST" and meta["view_position"] == "PA"
    assert meta["study_date"] == "20240131" and meta["manufacturer"] == "Test Factory"
    assert meta["pixel_spacing"] == [0.15, 0.16]
    assert meta["burned_in_annotation"] == "NO"
    assert meta["bits_stored"] == 8 and meta["frames"] == 1 and meta["format"] == "dicom"
    assert meta["transfer_syntax"] == uid.ExplicitVRLittleEndian
    assert meta["photometric"] == "MONOCHROME2" and meta["voi"] == "percentile"
    assert (meta["rows"], meta["cols"]) == source_pixels.shape
    for key in ("study_uid", "series_uid", "sop_uid"):
        assert meta[key].startswith("1.2.826.0.1.3680043")  # pydicom's generate_uid root


def test_imager_pixel_spacing_used_when_pixel_spacing_absent(dicom_factory, source_pixels) -> None:
    meta = read_xray(dicom_factory("ips.dcm", source_pixels), timeout=None).meta
    assert meta["pixel_spacing"] == [0.2, 0.2]


def test_png_and_dicom_meta_share_their_keys(dicom_factory, source_png, source_pixels) -> None:
    png = read_xray(source_png, timeout=None).meta
    dicom = read_xray(dicom_factory("keys.dcm", source_pixels), timeout=None).meta
    assert png.keys() == dicom.keys()
    assert all(png[key] is None for key in ("modality", "patient_pseudonym", "frames", "voi"))


# --------------------------------------------------------------------------------------------
# Every claimed transfer syntax, written from a real PNG


# (encoding, source bits, max abs error, mean abs error) against the source after the same window.
# Lossy bounds are measured values with headroom: JPEG baseline q95 max 0.027 / mean 0.0032,
# JPEG extended 8-bit max 0.0039 / mean 0.00035, 12-bit max 0.00025 / mean 0.00002,
# JPEG 2000 20:1 max 0.080 / mean 0.0102 (8-bit), 0.068 / 0.0080 (12-bit); HTJ2K irreversible (OpenJPH step
# 0.001, about 12:1 here) 12-bit max 0.033 / mean 0.0049 (at 8 bits that step loses nothing, so it is not listed);
# JPEG-LS near-lossless is bounded by NEAR=2 stored units by definition.
SYNTAX_TABLE = [
    ("explicit_le", 8, EXACT, EXACT),
    ("explicit_le", 12, EXACT, EXACT),
    ("implicit_le", 8, EXACT, EXACT),
    ("implicit_le", 12, EXACT, EXACT),
    ("explicit_be", 8, EXACT, EXACT),
    ("explicit_be", 12, EXACT, EXACT),
    ("deflated", 8, EXACT, EXACT),
    ("deflated", 12, EXACT, EXACT),
    ("rle", 8, EXACT, EXACT),
    ("rle", 12, EXACT, EXACT),
    ("jpeg_baseline", 8, 0.05, 0.006),
    ("jpeg_extended_8", 8, 0.01, 0.001),
    ("jpeg_extended_12", 12, 0.001, 0.0001),
    ("jpeg_lossless_p14", 8, EXACT, EXACT),
    ("jpeg_lossless_p14", 12, EXACT, EXACT),
    ("jpeg_lossless_sv1", 8, EXACT, EXACT),
    ("jpeg_lossless_sv1", 12, EXACT, EXACT),
    ("jpeg_ls_lossless", 8, EXACT, EXACT),
    ("jpeg_ls_lossless", 12, EXACT, EXACT),
    ("jpeg_ls_near_lossless", 8, 2 / 255 + EXACT, 2 / 255),
    ("jpeg_ls_near_lossless", 12, 2 / 4080 + EXACT, 2 / 4080),
    ("j2k_lossless", 8, EXACT, EXACT),
    ("j2k_lossless", 12, EXACT, EXACT),
    ("j2k_lossy", 8, 0.12, 0.015),
    ("j2k_lossy", 12, 0.12, 0.015),
    ("htj2k_lossless", 8, EXACT, EXACT),
    ("htj2k_lossless", 12, EXACT, EXACT),
    ("htj2k_lossy", 12, 0.05, 0.007),
]


@pytest.mark.parametrize(("encoding", "bits", "max_error", "mean_error"), SYNTAX_TABLE)
def test_transfer_syntax_round_trip(
    dicom_factory,
    source_pixels,
    source_pixels_12bit,
    encoding: str,
    bits: int,
    max_error: float,
    mean_error: float,
) -> None:
    pixels = source_pixels if bits == 8 else source_pixels_12bit
    top = 255 if bits == 8 else 4080
    # Centre/width chosen so that LINEAR maps 0 -> 0 and `top` -> 1: the output is source / top.
    path = dicom_factory(
        f"{encoding}-{bits}.dcm", pixels, encoding, WindowCenter=top / 2 + 0.5, WindowWidth=top + 1
    )
    image = read_xray(path, timeout=None)
    check_image(image)
    assert image.meta["transfer_syntax"] == pydicom.dcmread(path).file_meta.TransferSyntaxUID
    assert image.meta["voi"] == "window"
    expected = pixels.astype(np.float64) / top
    np.testing.assert_allclose(expected, source_pixels / 255.0, atol=EXACT)
    error = np.abs(image.pixels - expected)
    assert error.max() <= max_error, f"max error {error.max():.6f}"
    assert error.mean() <= mean_error, f"mean error {error.mean():.6f}"


def test_transfer_syntax_round_trip_isolated(dicom_factory, source_pixels_12bit) -> None:
    path = dicom_factory("j2k.dcm", source_pixels_12bit, "j2k_lossless")
    np.testing.assert_array_equal(read_xray(path).pixels, read_xray(path, timeout=None).pixels)


def test_real_12bit_jpeg_extended_file(pydicom_data) -> None:
    """pydicom's JPEG-lossy.dcm (12-bit process 4, not written by GDCM) against GDCM's own reader."""
    import gdcm

    path = pydicom_data("JPEG-lossy.dcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read()
    buffer = reader.GetImage().GetBuffer().encode("utf-8", "surrogateescape")
    raw = np.frombuffer(buffer, "<u2").reshape(1024, 256)
    assert (raw[420, 140], raw[230, 120]) == (244, 95)  # pydicom's published reference values
    image = read_xray(path, timeout=None)
    np.testing.assert_allclose(image.pixels, percentile_window(raw), atol=EXACT)


def test_real_jpeg_lossless_sv1_file(pydicom_data) -> None:
    image = read_xray(pydicom_data("JPGLosslessP14SV1_1s_1f_8b.dcm"), timeout=None)
    raw = pydicom.dcmread(pydicom_data("JPGLosslessP14SV1_1s_1f_8b.dcm")).pixel_array
    np.testing.assert_allclose(image.pixels, window_linear(raw, 127, 254), atol=EXACT)
