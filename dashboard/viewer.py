"""What the case viewer sends to the browser, and the viewer itself (``viewer.js``, a small Streamlit component).

Windowing happens in the browser, as in a PACS viewer: the film's values before any window travel once, packed
as 16-bit codes in an RGB PNG (red the high byte, green the low byte), and the browser maps them through the
chosen window at every drag. 16 bits keep a 12-15-bit film's steps (the shrink to ``MAX_SIDE`` averages them
anyway), and 8-bit sources exactly (255 divides 65535). The reader's own display ("as read by the model") is sent
as grey levels only where it is not a window of those values (DICOM).

The overlay's colour scale is fixed: 0 is no positive attribution to the target class, 1 is the strongest
positive attribution in this map; values below ``OVERLAY_FLOOR`` are left transparent, and the colour fades in over
``OVERLAY_FADE`` above it (a hard edge drew the floor's contour as a line, stepped where a small film is enlarged,
that looked like a boundary in the film). The map travels as an RGBA
PNG; its opacity is the browser's, so blinking or changing it costs no round trip.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image as PILImage

from scoring.imaging import AS_READ, ViewingImage
from scoring.imaging.viewing import Window

MAX_SIDE = 1024  # pixels sent to the browser per picture
CODES = 65535
COLOUR_SCALE = "inferno"
OVERLAY_FLOOR = 0.15
OVERLAY_FADE = 0.1  # from clear at the floor to opaque at floor + fade
_JS = Path(__file__).with_name("viewer.js")


@dataclass(frozen=True)
class Film:
    """One film as the browser needs it (plain values, JSON-ready through :meth:`payload`)."""
    values_png: bytes  # RGB: value codes 0..CODES over [low, high]; or grey: 8-bit levels over [0, 1] (bits 8)
    bits: int
    low: float
    high: float
    as_read_png: bytes | None  # grey; None where "as read" is a window of the values
    windows: tuple[Window, ...]  # the presets after "as read", in the select's order
    monochrome1: bool  # windowed values are inverted before display
    unit_scale: float  # shown window values are value * unit_scale (8-bit sources: grey levels 0-255)
    rows: int
    cols: int

    def payload(self, *, case: int, title: str) -> dict:
        return dict(case=case, title=title, values=data_url(self.values_png), bits=self.bits, low=self.low,
                    high=self.high,
                    asRead=data_url(self.as_read_png) if self.as_read_png else None, monochrome1=self.monochrome1,
                    unitScale=self.unit_scale, rows=self.rows, cols=self.cols,
                    presets=[dict(label=AS_READ, center=0.5, width=1.0, function="LINEAR_EXACT")]
                    + [dict(label=w.label, center=w.center, width=w.width, function=w.function)
                       for w in self.windows])


def film(image: ViewingImage) -> Film:
    values = fit(np.asarray(image.values, dtype=np.float32))
    is_window_of_values = image.values is image.pixels  # PNG, JPEG, colour DICOM: values are the display
    levels = values * np.float32(255)
    if is_window_of_values and np.abs(levels - np.rint(levels)).max(initial=0.0) < 1e-3:
        # 8-bit grey levels (most PNG and JPEG): half the bytes, and exact
        packed, bits, low, high = _png(np.rint(levels).astype(np.uint8)), 8, 0.0, 1.0
    else:
        low, high = float(image.full.center - image.full.width / 2), float(image.full.center + image.full.width / 2)
        packed, bits = pack_codes(values, low, high), 16
    return Film(values_png=packed, bits=bits, low=low, high=high,
                as_read_png=None if is_window_of_values else grey_png(image.pixels),
                windows=(*image.header_windows, image.auto, image.full), monochrome1=image.invert,
                unit_scale=255.0 if image.meta.get("format") != "dicom" else 1.0,
                rows=int(image.values.shape[0]), cols=int(image.values.shape[1]))


def fit(array: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Shrunk (area average) so that the longer side is at most ``max_side``; float32 in and out."""
    rows, cols = array.shape
    scale = max(rows, cols) / max_side
    if scale <= 1:
        return array
    size = (max(1, round(cols / scale)), max(1, round(rows / scale)))
    return np.asarray(PILImage.fromarray(array.astype(np.float32), mode="F").resize(size, PILImage.BOX),
                      dtype=np.float32)


def pack_codes(values: np.ndarray, low: float, high: float) -> bytes:
    span = high - low if high > low else 1.0
    codes = np.clip(np.rint((values - np.float32(low)) * np.float32(CODES / span)), 0, CODES).astype(np.uint16)
    rgb = np.zeros((*codes.shape, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1] = codes >> 8, codes & 0xFF
    return _png(rgb)


def unpack_codes(png: bytes, low: float, high: float, bits: int = 16) -> np.ndarray:
    """The values the browser works with (the inverse of :func:`film`'s packing, for tests and checks)."""
    rgb = np.asarray(PILImage.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    codes = rgb[..., 0] * 257 if bits == 8 else rgb[..., 0] * 256 + rgb[..., 1]
    return np.float32(low) + codes * np.float32((high - low) / CODES)


def grey_png(pixels: np.ndarray) -> bytes:
    return _png(np.clip(fit(pixels) * 255 + 0.5, 0, 255).astype(np.uint8))


def normalised_attribution(values: np.ndarray, value_max: float) -> np.ndarray:
    """Positive attribution on the fixed [0, 1] scale (1 = the map's maximum)."""
    top = float(value_max) if value_max and value_max > 0 else float(np.max(values, initial=0.0))
    if not top > 0:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip(values / np.float32(top), 0.0, 1.0).astype(np.float32)


def heat_png(attribution: np.ndarray, shape: tuple[int, int]) -> bytes:
    """The map (on the fixed scale) as RGBA at the film's shown size: clear below ``OVERLAY_FLOOR``, opaque colour
    from ``OVERLAY_FLOOR + OVERLAY_FADE`` up, and in between fading in."""
    rows, cols = fit(np.zeros(shape, dtype=np.float32)).shape if max(shape) > MAX_SIDE else shape
    heat = np.asarray(PILImage.fromarray(attribution.astype(np.float32), mode="F").resize((cols, rows),
                                                                                          PILImage.BILINEAR))
    rgba = np.empty((rows, cols, 4), dtype=np.uint8)
    rgba[..., :3] = np.clip(colormaps[COLOUR_SCALE](heat)[..., :3] * 255 + 0.5, 0, 255).astype(np.uint8)
    opacity = np.clip((heat - OVERLAY_FLOOR) / OVERLAY_FADE, 0.0, 1.0)
    rgba[..., 3] = np.rint(opacity * 255).astype(np.uint8)
    return _png(rgba)


def colour_scale_stops(n: int = 11) -> list[str]:
    """The legend's colours, 0 to 1, as CSS colours."""
    colours = (colormaps[COLOUR_SCALE](i / (n - 1))[:3] for i in range(n))
    return ["#" + "".join(f"{int(c * 255 + 0.5):02x}" for c in rgb) for rgb in colours]


def script() -> str:
    return _JS.read_text(encoding="utf-8")


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
