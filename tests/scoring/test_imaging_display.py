"""scoring.imaging's display transforms: windowing computed by hand, poisoned rescale/window/LUT values,
MONOCHROME1 inversion, colour DICOMs and multi-frame files."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from scoring.imaging import INVALID_PIXELS, XRayReadError, in_scope, read_xray
from tests.scoring.imaging_checks import EXACT, check_image, percentile_window, window_linear, with_pixel_bytes

MIRROR = 4095  # 12-bit maximum, for MONOCHROME1 copies of 12-bit data


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


# --------------------------------------------------------------------------------------------
# MONOCHROME1, colour and multi-frame


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
