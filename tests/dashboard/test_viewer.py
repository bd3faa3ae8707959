"""What the case viewer sends to the browser (dashboard.viewer): the film's values survive their 16-bit packing,
"as read" travels only where it is not a window of them, and the overlay's clear/opaque split follows the floor.
The browser side (windowing, drag, keys) is checked in test_browser.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

from dashboard import viewer
from scoring.imaging import AS_READ, read_for_viewing


@pytest.fixture(scope="module")
def real_films(pydicom_data, dicom_dir, cxr_dev):
    return {"CR 15-bit MONOCHROME1": pydicom_data("RG1_UNCR.dcm"),
            "CR JPEG baseline": next(p for p in dicom_dir.glob("*.dcm") if not p.name.startswith("Fake")),
            "PNG": next((cxr_dev / "normal").glob("*.png"))}


@pytest.mark.parametrize("name", ["CR 15-bit MONOCHROME1", "CR JPEG baseline", "PNG"])
def test_the_values_reach_the_browser_within_half_a_code_step(real_films, name):
    image = read_for_viewing(real_films[name])
    film = viewer.film(image)
    sent = viewer.unpack_codes(film.values_png, film.low, film.high, film.bits)
    expected = viewer.fit(image.values.astype(np.float32))
    step = (film.high - film.low) / viewer.CODES
    assert sent.shape == expected.shape and max(sent.shape) <= viewer.MAX_SIDE
    assert float(np.abs(sent - expected).max()) <= step / 2 + 1e-6 * max(1.0, abs(film.high))
    if film.bits == 16:
        assert (film.low, film.high) == pytest.approx((float(image.values.min()), float(image.values.max())))


def test_eight_bit_grey_levels_travel_exactly(real_films):
    image = read_for_viewing(real_films["PNG"])
    film = viewer.film(image)
    assert film.bits == 8 and PILImage.open(io.BytesIO(film.values_png)).mode == "L"
    sent = viewer.unpack_codes(film.values_png, film.low, film.high, film.bits)
    np.testing.assert_array_equal(np.rint(sent * 255), np.rint(viewer.fit(image.values) * 255))  # the levels, exactly
    assert film.as_read_png is None  # "as read" is the window (0.5, 1) of these values: the browser makes it
    assert film.unit_scale == 255.0


def test_a_monochrome1_film_sends_its_reader_display_and_its_header_windows(real_films):
    image = read_for_viewing(real_films["CR 15-bit MONOCHROME1"])
    payload = viewer.film(image).payload(case=7, title="this study · case 7")
    assert payload["monochrome1"] and payload["asRead"].startswith("data:image/png;base64,")
    labels = [p["label"] for p in payload["presets"]]
    assert labels[0] == AS_READ and labels[-2:] == [image.auto.label, image.full.label]
    assert labels[1:-2] == [w.label for w in image.header_windows]
    shown = np.asarray(PILImage.open(io.BytesIO(viewer.film(image).as_read_png)))
    np.testing.assert_array_equal(shown, np.clip(viewer.fit(image.pixels) * 255 + 0.5, 0, 255).astype(np.uint8))


def test_the_overlay_is_clear_below_the_floor_fades_in_and_is_opaque_colour_above():
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[1, 1], heat[2, 2] = viewer.OVERLAY_FLOOR - 0.01, 1.0
    heat[0, 3], heat[3, 0] = viewer.OVERLAY_FLOOR + viewer.OVERLAY_FADE / 2, viewer.OVERLAY_FLOOR + viewer.OVERLAY_FADE
    rgba = np.asarray(PILImage.open(io.BytesIO(viewer.heat_png(heat, (4, 4)))))
    assert rgba.shape == (4, 4, 4)
    assert rgba[2, 2, 3] == 255 and rgba[1, 1, 3] == 0 and rgba[0, 0, 3] == 0
    assert rgba[0, 3, 3] in (127, 128) and rgba[3, 0, 3] == 255
    assert tuple(rgba[2, 2, :3]) == tuple(int(v, 16) for v in (viewer.colour_scale_stops()[-1][i:i + 2]
                                                               for i in (1, 3, 5)))


def test_the_overlay_matches_the_films_shown_size():
    rgba = PILImage.open(io.BytesIO(viewer.heat_png(np.ones((7, 7), dtype=np.float32), (2048, 1536))))
    assert rgba.size == viewer.fit(np.zeros((2048, 1536), dtype=np.float32)).shape[::-1]
