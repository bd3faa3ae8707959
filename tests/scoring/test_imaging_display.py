"""scoring.imaging's display transforms: windowing computed by hand, VOI LUT bit depths, pixel padding, the
Presentation LUT Shape, poisoned rescale/window/LUT values, MONOCHROME1 inversion, colour DICOMs and multi-frame
files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi

from scoring.imaging import INVALID_PIXELS, XRayReadError, in_scope, read_xray
from scoring.imaging.display import lut_bits
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


def test_an_8_bit_voi_lut_maps_inputs_past_its_end_to_its_last_entry(dicom_factory, ramp) -> None:
    """An 8-bit LUT of 256 entries over a 12-bit ramp: every input from the first mapped + 256 on takes the last entry
    (pydicom 3.0's apply_voi alone wraps them round to the first entries)."""
    first_mapped, entries = 1000, 256
    lut = np.arange(entries, dtype=np.uint8)  # entry i is i: the identity over its range
    item = Dataset()
    item.LUTDescriptor = [entries, first_mapped, 8]
    item.LUTData = lut.tolist()
    item["LUTData"].VR = "US"
    image = read_xray(dicom_factory("lut8.dcm", ramp, VOILUTSequence=[item]), timeout=None)
    index = (ramp.astype(np.int64) - first_mapped).clip(0, entries - 1)
    assert ramp.max() >= first_mapped + 2 * entries  # inputs well past the table's end
    np.testing.assert_allclose(image.pixels, lut[index] / 255, atol=EXACT)


# (LUT Descriptor bits, largest LUT entry, bits the output is scaled by). The data are read at their own depth only
# when it is at least 4 bits below the declared one (the Agfa CR deviation: 12-bit data declared 16).
VOI_LUT_DEPTHS = [
    (16, 65535, 16),  # conforming, reaching its top
    (16, 30000, 16),  # conforming, 46 % of its range: dcm4che's rule (top bit unused) would double it
    (16, 8191, 16),  # 3 bits short: taken at its word
    (16, 4095, 12),  # the Agfa CR deviation
    (16, 3000, 12),  # the same, its data not reaching their own top either
    (16, 255, 8),
    (12, 4095, 12),
    (12, 255, 8),
    (10, 63, 10),  # 8 is the least depth: 2 bits short
]


@pytest.mark.parametrize(("declared", "largest", "used"), VOI_LUT_DEPTHS,
                         ids=[f"{d}bit-max{m}" for d, m, _ in VOI_LUT_DEPTHS])
def test_voi_lut_data_narrower_than_declared(dicom_factory, ramp, declared, largest, used) -> None:
    lut = np.round(np.linspace(0, largest, 4096)).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, declared]
    item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUT Data as OW, as CR writers store it
    image = read_xray(dicom_factory("lutd.dcm", ramp, VOILUTSequence=[item]), timeout=None)
    assert lut_bits(declared, largest) == used
    assert image.meta["voi"] == ("voi_lut" if used == declared else f"voi_lut_{used}bit")
    np.testing.assert_allclose(image.pixels, lut[ramp] / (2**used - 1), atol=EXACT)


def test_a_real_conforming_voi_lut_keeps_its_depth(pydicom_data) -> None:
    """pydicom-data's vlut_04 (a 256-entry LUT declared 16 bits, reaching 65535): read at its word."""
    path = pydicom_data("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    image = read_xray(path, timeout=None)
    assert image.meta["voi"] == "voi_lut"
    np.testing.assert_allclose(image.pixels, apply_voi(ds.pixel_array, ds) / 65535, atol=EXACT)


# --------------------------------------------------------------------------------------------
# Pixel padding (PS3.3 C.7.5.1.1.2): left out of the percentile window, then clipped by it.
# The real films: pydicom-data's 693 CT (signed, 14 bits stored, Pixel Padding Value -2000 on 21 % of the
# pixels), without its window so that the percentile window applies.

CT_PADDING = -2000


def with_elements(path: Path, **changes) -> Path:
    """``path`` rewritten with each change: a value, or (VR, value) for an element written with that VR."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if isinstance(value, tuple):
            ds.pop(keyword, None)
            ds.add_new(keyword, *value)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def ct_693(pydicom_data, tmp_path: Path, name: str = "693_UNCR.dcm", **changes) -> Path:
    ds = pydicom.dcmread(pydicom_data(name))
    del ds.WindowCenter, ds.WindowWidth
    path = tmp_path / f"ct-{name}"
    ds.save_as(path)
    return with_elements(path, **changes)


def twelve_bit_film(dicom_factory, ramp, name: str, padding_value: int, pad: slice, **changes) -> Path:
    """The 12-bit ramp with the columns ``pad`` set to ``padding_value``."""
    pixels = ramp.copy()
    pixels[:, pad] = padding_value
    return with_elements(dicom_factory(name, pixels), **changes)


# (id, builder -> path, the stored values that are padding -> mask)
PADDING = [
    ("693_real", lambda d, f, r, t: ct_693(d, t), lambda v: v == CT_PADDING),
    ("693_real_jpeg2000_lossless", lambda d, f, r, t: ct_693(d, t, "693_J2KR.dcm"), lambda v: v == CT_PADDING),
    # the value written with VR US (63536 is -2000 in 16 bits): the bits are what the pixels hold
    ("693_real_value_as_us", lambda d, f, r, t: ct_693(d, t, PixelPaddingValue=("US", 63536)),
     lambda v: v == CT_PADDING),
    ("693_real_range_limit", lambda d, f, r, t: ct_693(d, t, PixelPaddingRangeLimit=("SS", -1990)),
     lambda v: (v >= CT_PADDING) & (v <= -1990)),
    # declares padding its pixels do not hold: the same percentiles as without
    ("ct_small_real_no_padded_pixel", lambda d, f, r, t: Path(d("CT_small.dcm")), lambda v: v == CT_PADDING),
    ("monochrome2_padding_0", lambda d, f, r, t: twelve_bit_film(
        f, r, "p0.dcm", 0, slice(0, 80), PixelPaddingValue=("US", 0)), lambda v: v == 0),
    ("monochrome1_padding_4095", lambda d, f, r, t: twelve_bit_film(
        f, r, "p1.dcm", 4095, slice(0, 80), PixelPaddingValue=("US", 4095), PhotometricInterpretation="MONOCHROME1"),
     lambda v: v == 4095),
    # 12-bit unsigned, the value written with VR SS: -1 is 4095 in 12 bits
    ("unsigned_value_as_ss", lambda d, f, r, t: twelve_bit_film(
        f, r, "pss.dcm", 4095, slice(-60, None), PixelPaddingValue=("SS", -1)), lambda v: v == 4095),
    # a range given limit first, holding noisy padding 0..40, part of the anatomy's darkest values too
    ("range_limit_below_value", lambda d, f, r, t: twelve_bit_film(
        f, r, "pr.dcm", 0, slice(0, 80), PixelPaddingValue=("US", 40), PixelPaddingRangeLimit=("US", 0)),
     lambda v: v <= 40),
    # every pixel in the padding range: nothing would be left, so all of them are used, as without padding
    ("all_padding", lambda d, f, r, t: twelve_bit_film(
        f, r, "pa.dcm", 0, slice(0, 0), PixelPaddingValue=("US", 0), PixelPaddingRangeLimit=("US", 4095)),
     lambda v: np.ones(v.shape, bool)),
]


@pytest.mark.parametrize(("builder", "padding"), [case[1:] for case in PADDING], ids=[case[0] for case in PADDING])
@pytest.mark.parametrize("isolated", [False, True], ids=["in_process", "isolated"])
def test_padding_is_left_out_of_the_percentile_window(pydicom_data, dicom_factory, ramp, tmp_path, builder,
                                                      padding, isolated) -> None:
    path = builder(pydicom_data, dicom_factory, ramp, tmp_path)
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array
    padded = padding(stored)
    expected = percentile_window(apply_modality_lut(stored, ds), None if padded.all() else ~padded)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        expected = 1 - expected
    image = read_xray(path, timeout=10 if isolated else None)
    assert image.meta["voi"] == "percentile"
    np.testing.assert_allclose(image.pixels, expected, atol=EXACT)
    if padded.any() and not padded.all():  # clipped by the window, to one end of it (here black, or white at 4095)
        assert np.unique(image.pixels[padded]).tolist() in ([0.0], [1.0])


def test_padding_changes_nothing_under_a_header_window(pydicom_data) -> None:
    """693's own window (C 40 / W 100 after the rescale): applied to every pixel, padding or not."""
    path = pydicom_data("693_UNCR.dcm")
    ds = pydicom.dcmread(path)
    image = read_xray(path, timeout=None)
    assert image.meta["voi"] == "window"
    np.testing.assert_allclose(image.pixels, window_linear(apply_modality_lut(ds.pixel_array, ds), 40, 100),
                               atol=EXACT)


# --------------------------------------------------------------------------------------------
# Presentation LUT Shape: ignored, polarity from the Photometric Interpretation alone (see display.py)

# (id, builder -> path) of films with the same pixels and window, each read with every shape
PRESENTATION_SOURCES = [
    # pydicom-data's lossless JPEG ultrasound: MONOCHROME2, Presentation LUT Shape IDENTITY, window 127/254
    ("real_monochrome2", lambda d, f, r: Path(d("JPGLosslessP14SV1_1s_1f_8b.dcm"))),
    ("monochrome1", lambda d, f, r: f("pm1.dcm", r, PhotometricInterpretation="MONOCHROME1",
                                      WindowCenter=1000, WindowWidth=400)),
]


@pytest.mark.parametrize("shape", ["IDENTITY", "INVERSE", None], ids=lambda s: str(s))
@pytest.mark.parametrize("builder", [case[1] for case in PRESENTATION_SOURCES],
                         ids=[case[0] for case in PRESENTATION_SOURCES])
def test_presentation_lut_shape_is_ignored(pydicom_data, dicom_factory, ramp, tmp_path, builder, shape) -> None:
    """The polarity is the Photometric Interpretation's: MONOCHROME1 inverted, whatever the shape says (PS3.3 asks
    for IDENTITY with MONOCHROME2 and INVERSE with MONOCHROME1, where a conforming file gives the same polarity;
    a file where they disagree is malformed). Pinned so that a change of this choice is a decision."""
    source = builder(pydicom_data, dicom_factory, ramp)
    ds = pydicom.dcmread(source)
    reference = read_xray(source, timeout=None).pixels
    if shape is None:
        ds.pop("PresentationLUTShape", None)
    else:
        ds.PresentationLUTShape = shape
    path = tmp_path / "shape.dcm"
    ds.save_as(path)
    image = read_xray(path, timeout=None)
    np.testing.assert_array_equal(image.pixels, reference)
    stored = ds.pixel_array.astype(np.float64)
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = window_linear(stored, centre, width)
    np.testing.assert_allclose(image.pixels, 1 - expected if ds.PhotometricInterpretation == "MONOCHROME1"
                               else expected, atol=EXACT)


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
