"""The viewer's reading of an image (scoring.imaging.viewing): values before any window and the windows on offer."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from scoring.imaging import AS_READ, apply_window, read_for_viewing, read_xray
from scoring.imaging.viewing import AUTO, FULL_RANGE, header_windows

CR = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def test_a_real_cr_film_auto_is_the_readers_window(dicom_dir):
    image = read_for_viewing(dicom_dir / CR)
    assert image.presets[0] == AS_READ and image.presets[-2:] == (AUTO, FULL_RANGE)
    assert image.values.shape == image.pixels.shape and float(image.values.max()) > 1  # stored values, not [0, 1]
    np.testing.assert_allclose(apply_window(image, image.window(AUTO)), read_xray(dicom_dir / CR).pixels, atol=1e-6)
    assert apply_window(image, None) is image.pixels
    full = apply_window(image, image.window(FULL_RANGE))
    assert full.min() == 0.0 and full.max() == 1.0


def test_monochrome1_is_inverted_after_windowing(dicom_dir):
    normal = read_for_viewing(dicom_dir / CR)
    inverted = read_for_viewing(dicom_dir / "Fake_MONOHR1.dcm")
    assert inverted.invert and not normal.invert
    np.testing.assert_allclose(apply_window(inverted, inverted.window(AUTO)),
                               1 - apply_window(normal, normal.window(AUTO)), atol=1e-6)


def test_a_png_has_no_header_windows(cxr_dev):
    png = sorted(cxr_dev.glob("*/*.png"))[0]
    image = read_for_viewing(png)
    assert image.header_windows == () and not image.invert
    np.testing.assert_array_equal(image.values, image.pixels)


def test_every_header_window_is_offered_with_its_explanation():
    ds = pydicom.Dataset()
    ds.WindowCenter = ["2048", "1000", "5"]
    ds.WindowWidth = ["4096", "500", "0"]  # the last is invalid for LINEAR
    ds.WindowCenterWidthExplanation = ["NORMAL", "HARD\x07"]
    windows = header_windows(ds)
    assert [(w.label, w.center, w.width) for w in windows] == [
        ("NORMAL (C 2048 / W 4096)", 2048, 4096), ("HARD (C 1000 / W 500)", 1000, 500)]


# (VOI LUT Function, Window Width): whether the reader applies the window and the viewer offers it, the same rule
# (display.usable_window): LINEAR and an unknown function need a width of at least 1 (LINEAR's span is width - 1).
WINDOW_RULE = [
    ("LINEAR", 1, True),
    ("LINEAR", 0.5, False),
    (None, 0.5, False),  # no function: LINEAR
    ("FOO", 0.5, False),  # was offered, with LINEAR's formula and a negative span: polarity inverted
    ("FOO", 2, True),
    ("LINEAR_EXACT", 0.5, True),
    ("LINEAR_EXACT", 0, False),
    ("SIGMOID", 0.5, True),
    ("SIGMOID", -1, False),
    ("LINEAR", "1e39", False),  # beyond float32
]


@pytest.mark.parametrize(("function", "width", "usable"), WINDOW_RULE,
                         ids=[f"{f}-{w}" for f, w, _ in WINDOW_RULE])
def test_the_viewer_offers_the_header_windows_the_reader_applies(dicom_factory, function, width, usable):
    ramp = np.linspace(1990, 2010, 64 * 64).reshape(64, 64).astype(np.uint16)
    attributes = {"WindowCenter": 2000, "WindowWidth": width} | ({"VOILUTFunction": function} if function else {})
    image = read_for_viewing(dicom_factory("rule.dcm", ramp, **attributes))
    assert (image.meta["voi"] == "window") is usable
    assert len(image.header_windows) == int(usable)
    if usable:  # the preset shows what the model reads
        np.testing.assert_allclose(apply_window(image, image.header_windows[0]), image.pixels, atol=1e-6)


def test_auto_leaves_padding_out_as_the_reader_does(pydicom_data, tmp_path):
    """pydicom-data's 693 CT without its window: 21 % of it is Pixel Padding Value -2000."""
    ds = pydicom.dcmread(pydicom_data("693_UNCR.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(tmp_path / "ct.dcm")
    image = read_for_viewing(tmp_path / "ct.dcm")
    assert image.meta["voi"] == "percentile"
    np.testing.assert_allclose(apply_window(image, image.window(AUTO)), image.pixels, atol=1e-6)
    assert image.full.center - image.full.width / 2 == -3024  # the full range still holds the padding


def test_as_read_is_the_readers_voi_lut(dicom_factory):
    """A VOI LUT is not a window of the values: "as read by the model" is the reader's display, so the viewer shows
    what the model reads (here a LUT of 12-bit data declared 16 bits, read at 12)."""
    ramp = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "OW", np.arange(4096, dtype="<u2").tobytes())
    image = read_for_viewing(dicom_factory("lut.dcm", ramp, VOILUTSequence=[item]))
    assert image.meta["voi"] == "voi_lut_12bit"
    np.testing.assert_allclose(apply_window(image, None), ramp / 4095, atol=1e-6)
