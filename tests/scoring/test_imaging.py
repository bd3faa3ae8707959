"""Acceptance tests for scoring.imaging: real files, every claimed transfer syntax, windowing,
a table of bad inputs, and the isolated decoder's time limit and crash handling."""

from __future__ import annotations

import io
import os
import signal
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

from db.config import pseudonymise
from scoring import imaging
from scoring.imaging import INVALID_PIXELS, XRayImage, XRayReadError, in_scope, read_xray

PATIENT_ID = "TEST-PATIENT-0042"
PATIENT_NAME = "Doe^Jane"
EXACT = 1e-6  # lossless: identical up to float32 rounding of the same arithmetic
MIRROR = 4095  # 12-bit maximum, for MONOCHROME1 copies of 12-bit data

MONOCHROME2_CR = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
MONOCHROME1_COPY = "Fake_MONOHR1.dcm"


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


def percentile_window(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values.astype(np.float64), [0.5, 99.5])
    return ((values - low) / (high - low)).clip(0, 1)


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
# JPEG 2000 20:1 max 0.080 / mean 0.0102 (8-bit), 0.068 / 0.0080 (12-bit);
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


# --------------------------------------------------------------------------------------------
# Windowing, computed by hand


@pytest.fixture
def ramp() -> np.ndarray:
    """12-bit values covering the whole range, with structure (not constant along either axis)."""
    rng = np.random.default_rng(7)
    base = np.linspace(0, 4095, 256 * 256).reshape(256, 256)
    return np.clip(base + rng.normal(0, 40, base.shape), 0, 4095).astype(np.uint16)


def test_window_centre_width(dicom_factory, ramp) -> None:
    image = read_xray(dicom_factory("w.dcm", ramp, WindowCenter=1500, WindowWidth=1000), timeout=None)
    assert image.meta["voi"] == "window"
    np.testing.assert_allclose(image.pixels, window_linear(ramp, 1500, 1000), atol=EXACT)


def test_several_windows_use_the_first(dicom_factory, ramp) -> None:
    path = dicom_factory("ww.dcm", ramp, WindowCenter=[1000, 3000], WindowWidth=[500, 4000])
    image = read_xray(path, timeout=None)
    np.testing.assert_allclose(image.pixels, window_linear(ramp, 1000, 500), atol=EXACT)


def test_window_linear_exact_and_sigmoid(dicom_factory, ramp) -> None:
    exact = read_xray(
        dicom_factory("le.dcm", ramp, WindowCenter=2000, WindowWidth=800, VOILUTFunction="LINEAR_EXACT"),
        timeout=None,
    )
    values = ramp.astype(np.float64)
    np.testing.assert_allclose(exact.pixels, ((values - 2000) / 800 + 0.5).clip(0, 1), atol=EXACT)
    sigmoid = read_xray(
        dicom_factory("sg.dcm", ramp, WindowCenter=2000, WindowWidth=800, VOILUTFunction="SIGMOID"),
        timeout=None,
    )
    np.testing.assert_allclose(sigmoid.pixels, 1 / (1 + np.exp(-4 * (values - 2000) / 800)), atol=1e-5)


def test_voi_lut_sequence(dicom_factory, ramp) -> None:
    first_mapped, entries = 100, 3900
    lut = np.round(np.sqrt(np.arange(entries) / (entries - 1)) * 65535).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [entries, first_mapped, 16]
    item.LUTData = lut.tolist()
    item["LUTData"].VR = "US"
    # The window is present too: the LUT must win.
    path = dicom_factory("lut.dcm", ramp, VOILUTSequence=[item], WindowCenter=100, WindowWidth=10)
    image = read_xray(path, timeout=None)
    assert image.meta["voi"] == "voi_lut"
    index = (ramp.astype(np.int64) - first_mapped).clip(0, entries - 1)
    np.testing.assert_allclose(image.pixels, lut[index] / 65535, atol=EXACT)


def test_no_window_means_percentile_window(dicom_factory, ramp) -> None:
    image = read_xray(dicom_factory("p.dcm", ramp), timeout=None)
    assert image.meta["voi"] == "percentile"
    np.testing.assert_allclose(image.pixels, percentile_window(ramp), atol=EXACT)


def test_invalid_window_falls_back_to_percentile(dicom_factory, ramp) -> None:
    image = read_xray(dicom_factory("w0.dcm", ramp, WindowCenter=100, WindowWidth=0), timeout=None)
    assert image.meta["voi"] == "percentile"
    np.testing.assert_allclose(image.pixels, percentile_window(ramp), atol=EXACT)


def test_rescale_before_window(dicom_factory, ramp) -> None:
    path = dicom_factory(
        "r.dcm", ramp, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=2500, WindowWidth=3001
    )
    image = read_xray(path, timeout=None)
    rescaled = ramp.astype(np.float64) * 2 - 1000
    np.testing.assert_allclose(image.pixels, window_linear(rescaled, 2500, 3001), atol=EXACT)


def test_rescale_without_window(dicom_factory, ramp) -> None:
    path = dicom_factory("rp.dcm", ramp, RescaleSlope=0.5, RescaleIntercept=-20)
    image = read_xray(path, timeout=None)
    np.testing.assert_allclose(image.pixels, percentile_window(ramp * 0.5 - 20), atol=EXACT)


# --------------------------------------------------------------------------------------------
# Poisoned display transforms: never NaN, never outside [0, 1]

POISONED_RESCALE = [
    # (RescaleSlope, RescaleIntercept) as the DS strings a hostile or broken header carries
    ("1e38", "0"),
    ("NaN", "0"),
    ("inf", "0"),
    ("-inf", "0"),
    ("1", "1e308"),
    ("1", "-1e308"),
    ("1", "NaN"),
]


@pytest.mark.parametrize(("slope", "intercept"), POISONED_RESCALE)
@pytest.mark.parametrize("isolated", [False, True], ids=["in_process", "isolated"])
def test_poisoned_rescale_is_invalid_pixels(dicom_factory, ramp, slope, intercept, isolated) -> None:
    path = dicom_factory("rs.dcm", ramp, RescaleSlope=slope, RescaleIntercept=intercept)
    with pytest.raises(XRayReadError) as caught:
        read_xray(path, timeout=30 if isolated else None)
    assert caught.value.reason == INVALID_PIXELS
    assert "Rescale Slope" in str(caught.value)


def test_the_real_siim_film_with_a_huge_slope(dicom_dir, tmp_path) -> None:
    """The issue's repro: the shared CR film with Rescale Slope 1e38 read all-NaN and was 'in scope'."""
    ds = pydicom.dcmread(next(dicom_dir.glob("1.2.276.*.dcm")))
    ds.RescaleSlope, ds.RescaleIntercept = "1e38", "0"
    ds.save_as(tmp_path / "poisoned.dcm")
    with pytest.raises(XRayReadError) as caught:
        read_xray(tmp_path / "poisoned.dcm")
    assert caught.value.reason == INVALID_PIXELS


POISONED_WINDOWS = [
    # attributes -> the window is unusable, so the percentile window applies and the pixels stay finite
    {"WindowCenter": "NaN", "WindowWidth": 400},
    {"WindowCenter": 2000, "WindowWidth": "NaN"},
    {"WindowCenter": "inf", "WindowWidth": "inf"},
    {"WindowCenter": "1e308", "WindowWidth": "1e308"},
    {"WindowCenter": "-1e308", "WindowWidth": "1e300"},
]


@pytest.mark.parametrize("attributes", POISONED_WINDOWS, ids=lambda a: f"c={a['WindowCenter']},w={a['WindowWidth']}")
def test_poisoned_window_falls_back_to_percentile(dicom_factory, ramp, attributes) -> None:
    image = read_xray(dicom_factory("pw.dcm", ramp, **attributes), timeout=None)
    assert image.meta["voi"] == "percentile"
    np.testing.assert_allclose(image.pixels, percentile_window(ramp), atol=EXACT)


@pytest.mark.parametrize("bits", [0, 17, 64])
def test_voi_lut_with_an_impossible_bit_depth_is_not_used(dicom_factory, ramp, bits) -> None:
    """LUT Descriptor bits 0 divided by zero; the standard allows 8 to 16 (we accept 1 to 16)."""
    item = Dataset()
    item.LUTDescriptor = [4096, 0, bits]
    item.LUTData = list(range(4096))
    item["LUTData"].VR = "US"
    image = read_xray(dicom_factory("lb.dcm", ramp, VOILUTSequence=[item]), timeout=None)
    assert image.meta["voi"] == "percentile"
    assert np.isfinite(image.pixels).all()


def test_huge_but_finite_rescale_with_a_window_never_gives_nan(dicom_factory, ramp) -> None:
    """Values near the float32 limit pass the modality check; the window arithmetic may still overflow,
    and the last guard turns that into invalid_pixels rather than NaN pixels."""
    path = dicom_factory("hw.dcm", ramp, RescaleSlope="8e34", RescaleIntercept="-1.6e38")
    try:
        image = read_xray(path, timeout=None)
    except XRayReadError as exc:
        assert exc.reason == INVALID_PIXELS
    else:
        assert np.isfinite(image.pixels).all()
        assert 0.0 <= image.pixels.min() <= image.pixels.max() <= 1.0


@pytest.mark.parametrize("window", [None, (1200, 900)], ids=["percentile", "window"])
def test_monochrome1_equals_monochrome2_of_the_same_data(dicom_factory, ramp, window) -> None:
    mono2_attrs, mono1_attrs = {}, {"PhotometricInterpretation": "MONOCHROME1"}
    if window:
        centre, width = window
        mono2_attrs.update(WindowCenter=centre, WindowWidth=width)
        mono1_attrs.update(WindowCenter=MIRROR + 1 - centre, WindowWidth=width)  # mirrored window
    mono2 = read_xray(dicom_factory("m2.dcm", ramp, **mono2_attrs), timeout=None)
    mono1 = read_xray(dicom_factory("m1.dcm", (MIRROR - ramp).astype(np.uint16), **mono1_attrs), timeout=None)
    np.testing.assert_allclose(mono1.pixels, mono2.pixels, atol=1e-5)


def test_monochrome1_window_applies_before_inversion(dicom_factory, ramp) -> None:
    path = dicom_factory(
        "m1w.dcm", ramp, PhotometricInterpretation="MONOCHROME1", WindowCenter=1000, WindowWidth=400
    )
    image = read_xray(path, timeout=None)
    np.testing.assert_allclose(image.pixels, 1.0 - window_linear(ramp, 1000, 400), atol=EXACT)
    assert image.pixels[ramp < 700].min() == 1.0  # below the window: white after inversion


def test_colour_dicoms_become_grey(pydicom_data) -> None:
    for name in (
        "US1_UNCR.dcm",
        "SC_rgb_rle.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "OBXXXX1A.dcm",
        "SC_ybr_full_uncompressed.dcm",
    ):
        image = read_xray(pydicom_data(name), timeout=None)
        check_image(image)
        assert image.meta["voi"] == "none"
        assert in_scope(image.meta)[0] is False


def test_rgb_dicom_uses_luminance(dicom_factory, chest_dataset_factory, tmp_path) -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    ds = chest_dataset_factory(rgb[..., 0])
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(tmp_path / "rgb.dcm", enforce_file_format=True)
    image = read_xray(tmp_path / "rgb.dcm", timeout=None)
    assert image.pixels.shape == (64, 64)
    np.testing.assert_allclose(image.pixels, (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, atol=1e-5)
    assert in_scope(image.meta) == (False, "photometric:RGB")


def test_multi_frame_decodes_the_first_frame(pydicom_data) -> None:
    path = pydicom_data("emri_small.dcm")
    image = read_xray(path, timeout=None)
    frames = pydicom.dcmread(path).pixel_array
    assert image.meta["frames"] == 10 and image.pixels.shape == frames.shape[1:]
    np.testing.assert_allclose(image.pixels, percentile_window(frames[0]), atol=EXACT)
    assert in_scope({**image.meta, "modality": "DX"}) == (False, "multi_frame:10")


def test_multi_frame_cr_is_out_of_scope(dicom_factory, ramp) -> None:
    frames = np.stack([ramp, MIRROR - ramp]).astype(np.uint16)
    path = dicom_factory("mf.dcm", ramp, NumberOfFrames=2)
    with_pixel_bytes(path, lambda _: frames.tobytes())
    image = read_xray(path, timeout=None)
    np.testing.assert_allclose(image.pixels, percentile_window(ramp), atol=EXACT)
    assert in_scope(image.meta) == (False, "multi_frame:2")


# --------------------------------------------------------------------------------------------
# PNG and JPEG details


def test_16bit_png(tmp_path, source_pixels) -> None:
    values = source_pixels.astype(np.uint16) * 257
    Image.fromarray(values).save(tmp_path / "16.png")
    image = read_xray(tmp_path / "16.png", timeout=None)
    assert image.meta["mode"] == "I;16" and image.meta["bits_stored"] == 16
    np.testing.assert_allclose(image.pixels, values / 65535, atol=EXACT)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "1"])
def test_colour_and_palette_png_become_grey(tmp_path, source_pixels, mode: str) -> None:
    grey = Image.fromarray(source_pixels)
    converted = grey.convert(mode)
    converted.save(tmp_path / f"{mode}.png")
    image = read_xray(tmp_path / f"{mode}.png", timeout=None)
    assert image.meta["mode"] == mode
    expected = np.asarray(converted.convert("L")) / 255.0 if mode in ("P", "1") else source_pixels / 255.0
    np.testing.assert_allclose(image.pixels, expected, atol=EXACT)


def test_coloured_png_uses_luminance(tmp_path) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "c.png")
    image = read_xray(tmp_path / "c.png", timeout=None)
    np.testing.assert_allclose(image.pixels, (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, atol=1 / 255)


def test_exif_orientation_applied(tmp_path, source_pixels) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(source_pixels).save(tmp_path / "rot.png", exif=exif)
    image = read_xray(tmp_path / "rot.png", timeout=None)
    assert image.meta["exif_orientation"] == 6
    assert (image.meta["rows"], image.meta["cols"]) == source_pixels.shape  # as stored
    np.testing.assert_allclose(image.pixels, np.rot90(source_pixels, k=-1) / 255.0, atol=EXACT)


def test_jpeg_close_to_source(tmp_path, source_pixels) -> None:
    (tmp_path / "x.jpg").write_bytes(jpeg_bytes(source_pixels))
    image = read_xray(tmp_path / "x.jpg")
    assert image.meta["format"] == "jpeg" and image.meta["mode"] == "L"
    difference = np.abs(image.pixels - source_pixels / 255.0)
    assert difference.mean() < 0.006 and difference.max() < 0.05  # q95, measured 0.0032 / 0.027


def test_format_comes_from_content_not_name(tmp_path, source_png) -> None:
    misnamed = tmp_path / "really-a-png.dcm"
    misnamed.write_bytes(source_png.read_bytes())
    assert read_xray(misnamed, timeout=None).meta["format"] == "png"


# --------------------------------------------------------------------------------------------
# Bad inputs


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png() -> bytes:
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
    data = png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
    return imaging.PNG_SIGNATURE + header + data + png_chunk(b"IEND", b"")


def bad_idat_crc(png: bytes) -> bytes:
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack_from(">I", png, start)
    crc_at = start + 8 + length
    return png[:crc_at] + bytes([png[crc_at] ^ 0xFF]) + png[crc_at + 1 :]


def replace_frame(path: Path, cut: Callable[[bytes], bytes]) -> Path:
    """Shorten the first frame's codestream but keep the encapsulation consistent."""
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([cut(frame)])
    ds.save_as(path)
    return path


def truncate(path: Path, keep: Callable[[int], int]) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])
    return path


def with_transfer_syntax(path: Path, syntax: str) -> Path:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([ds.PixelData])
    ds.save_as(path, implicit_vr=False, little_endian=True)
    return path


def without_pixel_data(path: Path) -> Path:
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    return path


def with_pixel_bytes(path: Path, change: Callable[[bytes], bytes]) -> Path:
    ds = pydicom.dcmread(path)
    ds.PixelData = change(ds.PixelData)
    ds.save_as(path)
    return path


def with_size(path: Path, rows: int, cols: int) -> Path:
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rows, cols
    ds.save_as(path)
    return path


class Sources:
    """What the bad-input builders start from."""

    def __init__(self, tmp_path: Path, png: bytes, pixels: np.ndarray, dicom_factory) -> None:
        self.tmp_path, self.png, self.pixels, self.dicom = tmp_path, png, pixels, dicom_factory

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp_path / name
        path.write_bytes(data)
        return path

    def dcm(self, encoding: str) -> Path:
        return self.dicom(f"src-{encoding}.dcm", self.pixels, encoding)


def fifo(s: Sources) -> Path:
    path = s.tmp_path / "x.png"
    os.mkfifo(path)
    return path


def dangling(s: Sources) -> Path:
    path = s.tmp_path / "link.png"
    path.symlink_to(s.tmp_path / "gone.png")
    return path


def directory(s: Sources) -> Path:
    path = s.tmp_path / "x.png"
    path.mkdir()
    return path


RANDOM = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()

# (id, builder, reason, text the message must contain besides the file name)
BAD_INPUTS = [
    ("empty", lambda s: s.file("e.png", b""), "empty", "0 bytes"),
    ("127_zero_bytes", lambda s: s.file("z.dcm", b"\0" * 127), "not_an_image", "127 bytes"),
    ("127_bytes_of_png", lambda s: s.file("p.png", s.png[:127]), "truncated", "file ends at 127"),
    ("random_bytes", lambda s: s.file("r.png", RANDOM), "not_an_image", RANDOM[:4].hex(" ")),
    ("text_as_dcm", lambda s: s.file("t.dcm", b"patient notes\n" * 40), "not_an_image", "70 61 74"),
    ("text_as_png", lambda s: s.file("t.png", b"hello"), "not_an_image", "5 bytes"),
    (
        "preamble_without_dicm",
        lambda s: s.file("n.dcm", b"\0" * 128 + b"DICX" + b"\0" * 64),
        "not_an_image",
        "DICX",
    ),
    ("bmp", lambda s: s.file("b.png", bmp_bytes(s.pixels)), "not_an_image", "42 4d"),
    ("png_cut_at_50", lambda s: s.file("c50.png", s.png[:50]), "truncated", "file ends at 50"),
    ("png_cut_in_half", lambda s: s.file("c2.png", s.png[: len(s.png) // 2]), "truncated", "IDAT"),
    ("png_without_last_20", lambda s: s.file("c20.png", s.png[:-20]), "truncated", "file ends"),
    ("png_bad_idat_crc", lambda s: s.file("crc.png", bad_idat_crc(s.png)), "corrupt", "bad CRC in b'IDAT'"),
    (
        "png_bad_ihdr_crc",
        lambda s: s.file("ih.png", s.png[:29] + b"\0\0\0\0" + s.png[33:]),
        "corrupt",
        "IHDR",
    ),
    ("png_100000x100000", lambda s: s.file("huge.png", huge_png()), "too_large", "100000x100000"),
    (
        "jpeg_cut_at_20",
        lambda s: s.file("j20.jpg", jpeg_bytes(s.pixels)[:20]),
        "truncated",
        "first JPEG scan",
    ),
    (
        "jpeg_cut_in_half",
        lambda s: s.file("j2.jpg", jpeg_bytes(s.pixels)[: len(jpeg_bytes(s.pixels)) // 2]),
        "truncated",
        "truncated",
    ),
    ("jpeg_without_last_2", lambda s: s.file("je.jpg", jpeg_bytes(s.pixels)[:-2]), "truncated", "truncated"),
    ("dicom_cut_at_200", lambda s: truncate(s.dcm("explicit_le"), lambda n: 200), "truncated", "200"),
    (
        "dicom_cut_mid_pixels",
        lambda s: truncate(s.dcm("explicit_le"), lambda n: n // 2),
        "truncated",
        "ends early",
    ),
    (
        "dicom_without_last_20",
        lambda s: truncate(s.dcm("explicit_le"), lambda n: n - 20),
        "truncated",
        "ends early",
    ),
    ("deflated_cut", lambda s: truncate(s.dcm("deflated"), lambda n: n - 100), "truncated", "deflated"),
    (
        "j2k_cut_mid_frame",
        lambda s: truncate(s.dcm("j2k_lossless"), lambda n: n // 2),
        "truncated",
        "delimiter",
    ),
    (
        "j2k_without_last_20",
        lambda s: truncate(s.dcm("j2k_lossless"), lambda n: n - 20),
        "truncated",
        "ends early",
    ),
    (
        "j2k_codestream_cut",
        lambda s: replace_frame(s.dcm("j2k_lossy"), lambda f: f[: len(f) // 2]),
        "truncated",
        "FFD9",
    ),
    (
        "jpeg_codestream_cut",
        lambda s: replace_frame(s.dcm("jpeg_baseline"), lambda f: f[:-40]),
        "truncated",
        "FFD9",
    ),
    (
        "jpeg_ls_codestream_cut",
        lambda s: replace_frame(s.dcm("jpeg_ls_lossless"), lambda f: f[: len(f) // 3]),
        "truncated",
        "FFD9",
    ),
    (
        "rle_segment_cut",
        lambda s: replace_frame(s.dcm("rle"), lambda f: f[: len(f) // 2]),
        "truncated",
        "RLE",
    ),
    (
        "dicom_without_pixel_data",
        lambda s: without_pixel_data(s.dcm("explicit_le")),
        "no_pixel_data",
        "1.2.840.10008.5.1.4.1.1.1",
    ),
    (
        "pixel_data_too_short",
        lambda s: with_pixel_bytes(s.dcm("explicit_le"), lambda b: b[:-1000]),
        "truncated",
        "needs",
    ),
    (
        "pixel_data_too_long",
        lambda s: with_pixel_bytes(s.dcm("explicit_le"), lambda b: b + b"\0" * 1000),
        "decode_failed",
        "needs",
    ),
    (
        "made_up_transfer_syntax",
        lambda s: with_transfer_syntax(s.dcm("explicit_le"), "1.2.3.4.5.6.7.8"),
        "unsupported_transfer_syntax",
        "1.2.3.4.5.6.7.8",
    ),
    (
        "mpeg2_transfer_syntax",
        lambda s: with_transfer_syntax(s.dcm("explicit_le"), uid.MPEG2MPML),
        "unsupported_transfer_syntax",
        uid.MPEG2MPML,
    ),
    (
        "dicom_60000x60000",
        lambda s: with_size(s.dcm("explicit_le"), 60000, 60000),
        "too_large",
        "60000x60000",
    ),
    ("directory_named_png", directory, "not_a_file", "directory"),
    ("fifo_named_png", fifo, "not_a_file", "FIFO"),
    ("dangling_symlink", dangling, "not_found", "gone.png"),
    ("missing_file", lambda s: s.tmp_path / "nothing-here.png", "not_found", "no such file"),
]


def bmp_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "BMP")
    return buffer.getvalue()


@pytest.fixture
def sources(tmp_path, source_png, source_pixels, dicom_factory) -> Sources:
    return Sources(tmp_path, source_png.read_bytes(), source_pixels, dicom_factory)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("isolated", [False, True], ids=["in_process", "isolated"])
@pytest.mark.parametrize(
    ("builder", "reason", "detail"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input(sources: Sources, builder, reason: str, detail: str, isolated: bool) -> None:
    path = builder(sources)
    started = time.monotonic()
    with pytest.raises(XRayReadError) as caught:
        read_xray(path, timeout=10.0 if isolated else None)
    assert time.monotonic() - started < 5
    error = caught.value
    assert error.reason == reason, str(error)
    assert error.reason in imaging.REASONS
    assert str(path) in str(error)
    assert detail in str(error)


def test_bad_input_table_is_large_enough() -> None:
    assert len(BAD_INPUTS) >= 20
    assert {reason for _, _, reason, _ in BAD_INPUTS} >= {
        "empty",
        "not_an_image",
        "truncated",
        "corrupt",
        "no_pixel_data",
        "unsupported_transfer_syntax",
        "too_large",
        "decode_failed",
        "not_a_file",
        "not_found",
    }


def test_errors_are_picklable_with_reason() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(XRayReadError("truncated", "x.png: cut")))
    assert (error.reason, str(error)) == ("truncated", "x.png: cut")


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root reads files whatever their mode, so chmod 000 proves nothing"
)
def test_unreadable_file(tmp_path, source_png) -> None:
    path = tmp_path / "locked.png"
    path.write_bytes(source_png.read_bytes())
    path.chmod(0)
    for timeout in (None, 10.0):
        with pytest.raises(XRayReadError) as caught:
            read_xray(path, timeout=timeout)
        assert caught.value.reason == "unreadable" and "permission denied" in str(caught.value)


def test_permission_error_maps_to_unreadable(tmp_path, source_png, monkeypatch) -> None:
    """Works as root too: the open itself is made to fail as it would for another user."""
    path = tmp_path / "locked.png"
    path.write_bytes(source_png.read_bytes())

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(imaging.files.os, "open", refuse)
    with pytest.raises(XRayReadError) as caught:
        read_xray(path, timeout=None)
    assert caught.value.reason == "unreadable" and str(path) in str(caught.value)


def test_deflate_bomb_is_too_large(dicom_factory, monkeypatch) -> None:
    path = dicom_factory("bomb.dcm", np.zeros((512, 512), np.uint16), "deflated")
    assert path.stat().st_size < 4096
    # Where the inflated-size check looks it up; the file itself is far below the limit anyway.
    monkeypatch.setattr(imaging.dicom, "MAX_FILE_BYTES", 64 * 1024)  # the dataset inflates to 512 kB
    with pytest.raises(XRayReadError) as caught:
        read_xray(path, timeout=None)
    assert caught.value.reason == "too_large" and "inflates" in str(caught.value)


def test_non_utf8_file_names(tmp_path, source_png) -> None:
    folder = os.fsencode(tmp_path)
    good = os.path.join(folder, b"\xff\xfe.png")
    with open(good, "wb") as handle:
        handle.write(source_png.read_bytes())
    for timeout in (None, 10.0):
        assert read_xray(good, timeout=timeout).pixels.shape == read_xray(source_png).pixels.shape
        assert read_xray(os.fsdecode(good), timeout=timeout).meta["format"] == "png"

    bad = os.path.join(folder, b"\xfe\xff-bad.png")
    with open(bad, "wb") as handle:
        handle.write(b"not an image at all")
    for timeout in (None, 10.0):
        with pytest.raises(XRayReadError) as caught:
            read_xray(bad, timeout=timeout)
        message = str(caught.value)
        assert caught.value.reason == "not_an_image"
        assert "\\xfe\\xff-bad.png" in message
        message.encode("utf-8")  # printable anywhere: no lone surrogates


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
    ],
)
def test_in_scope(meta, expected) -> None:
    assert in_scope(meta) == expected


# --------------------------------------------------------------------------------------------
# The isolated decoder


@pytest.fixture
def fresh_reader(monkeypatch):
    """Each test starts and leaves a child without the test delay."""
    imaging.stop_reader_process()
    yield monkeypatch
    monkeypatch.delenv(imaging.TEST_DELAY_ENV, raising=False)
    imaging.stop_reader_process()


def assert_reaped(pid: int) -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@pytest.mark.timeout(60)
def test_timeout_kills_the_child_and_the_next_read_works(fresh_reader, source_png) -> None:
    fresh_reader.setenv(imaging.TEST_DELAY_ENV, "30")
    pid = imaging.start_reader_process()
    started = time.monotonic()
    with pytest.raises(XRayReadError) as caught:
        read_xray(source_png, timeout=1.0)
    elapsed = time.monotonic() - started
    assert caught.value.reason == "timeout" and str(source_png) in str(caught.value)
    assert 1.0 <= elapsed < 4.0  # kill and reap take milliseconds; the rest is slack for busy CI
    assert imaging.reader_process_pid() is None
    assert_reaped(pid)

    fresh_reader.delenv(imaging.TEST_DELAY_ENV)
    check_image(read_xray(source_png, timeout=30.0))
    assert imaging.reader_process_pid() not in (None, pid)


@pytest.mark.timeout(60)
def test_crash_is_decode_failed_and_the_next_read_works(fresh_reader, source_png) -> None:
    fresh_reader.setenv(imaging.TEST_DELAY_ENV, "5")
    pid = imaging.start_reader_process()
    killer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
    killer.start()
    with pytest.raises(XRayReadError) as caught:
        read_xray(source_png, timeout=30.0)
    killer.join()
    assert caught.value.reason == "decode_failed"
    assert f"decoder crashed (signal {int(signal.SIGKILL)})" in str(caught.value)
    assert_reaped(pid)

    fresh_reader.delenv(imaging.TEST_DELAY_ENV)
    check_image(read_xray(source_png))


def test_child_killed_between_reads_is_replaced_silently(fresh_reader, source_png) -> None:
    pid = imaging.start_reader_process()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    check_image(read_xray(source_png))
    assert imaging.reader_process_pid() not in (None, pid)


def test_forked_process_starts_its_own_child(fresh_reader, source_png) -> None:
    import multiprocessing

    parent_child = imaging.start_reader_process()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    worker = context.Process(target=_read_in_fork, args=(str(source_png), queue))
    worker.start()
    worker.join(60)
    shape, pid = queue.get(timeout=5)
    assert shape == list(read_xray(source_png, timeout=None).pixels.shape)
    assert pid not in (None, parent_child)
    assert imaging.reader_process_pid() == parent_child
    check_image(read_xray(source_png))  # the parent's child is untouched


def _read_in_fork(path: str, queue) -> None:
    image = read_xray(path)
    queue.put((list(image.pixels.shape), imaging.reader_process_pid()))
    imaging.stop_reader_process()


def test_child_does_not_load_torch(fresh_reader, source_png) -> None:
    read_xray(source_png)
    pid = imaging.reader_process_pid()
    maps = Path(f"/proc/{pid}/maps")
    if not maps.exists():
        pytest.skip("no /proc on this platform")
    loaded = maps.read_text()
    assert "torch" not in loaded
    assert "numpy" in loaded  # the check can see Python extension modules at all


def test_child_exits_with_its_parent_and_is_reaped(source_png, tmp_path) -> None:
    import subprocess
    import sys

    script = (
        "import sys; from scoring.imaging import read_xray, reader_process_pid; "
        "read_xray(sys.argv[1]); print(reader_process_pid())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(source_png)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.strip())
    # A zombie would still answer signal 0: the parent's atexit handler must have waited for it.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_timeout_must_be_positive(source_png) -> None:
    with pytest.raises(ValueError):
        read_xray(source_png, timeout=0)
