"""The viewer's reading of an image (scoring.imaging.viewing): values before any window and the windows on offer."""

from __future__ import annotations

import numpy as np
import pydicom

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
