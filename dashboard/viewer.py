"""Pictures for the case viewer: windowed grey images and attribution overlays as PNG, shown in a plotly figure
(zoom, pan, side by side with shared axes). Rendering is server-side numpy; the browser gets small PNGs.

The overlay's colour scale is fixed: 0 is no positive attribution to the target class, 1 is the strongest
positive attribution in this map; values below ``OVERLAY_FLOOR`` are left transparent.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
from matplotlib import colormaps
from PIL import Image as PILImage
from plotly.subplots import make_subplots

MAX_SIDE = 1024  # pixels sent to the browser per picture
COLOUR_SCALE = "inferno"
OVERLAY_FLOOR = 0.15
LEGEND_TITLE = "share of the map's<br>strongest positive<br>attribution"


def fit(array: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Shrunk (area average) so that the longer side is at most ``max_side``; float32 in [0, 1] in and out."""
    rows, cols = array.shape
    scale = max(rows, cols) / max_side
    if scale <= 1:
        return array
    size = (max(1, round(cols / scale)), max(1, round(rows / scale)))
    return np.asarray(PILImage.fromarray(array.astype(np.float32), mode="F").resize(size, PILImage.BOX),
                      dtype=np.float32)


def grey_png(pixels: np.ndarray, *, invert: bool = False) -> bytes:
    shown = fit(pixels)
    if invert:
        shown = 1.0 - shown
    return _png(np.clip(shown * 255 + 0.5, 0, 255).astype(np.uint8))


def normalised_attribution(values: np.ndarray, value_max: float) -> np.ndarray:
    """Positive attribution on the fixed [0, 1] scale (1 = the map's maximum)."""
    top = float(value_max) if value_max and value_max > 0 else float(np.max(values, initial=0.0))
    if not top > 0:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip(values / np.float32(top), 0.0, 1.0).astype(np.float32)


def overlay_png(pixels: np.ndarray, attribution: np.ndarray, *, opacity: float, invert: bool = False) -> bytes:
    """The grey image with the attribution blended in (``attribution`` on the fixed scale, same geometry)."""
    grey = fit(pixels)
    if invert:
        grey = 1.0 - grey
    heat = fit(attribution, max(grey.shape))
    if heat.shape != grey.shape:
        heat = np.asarray(PILImage.fromarray(heat, mode="F").resize(grey.shape[::-1], PILImage.BILINEAR))
    colours = colormaps[COLOUR_SCALE](heat)[..., :3].astype(np.float32)
    alpha = (opacity * (heat >= OVERLAY_FLOOR))[..., None].astype(np.float32)
    blended = grey[..., None] * (1 - alpha) + colours * alpha
    return _png(np.clip(blended * 255 + 0.5, 0, 255).astype(np.uint8))


def figure(pictures: list[tuple[str, bytes]], *, shape: tuple[int, int], zoom_key: int, legend: bool = False,
           width: int = 560) -> go.Figure:
    """One panel per picture, zoom and pan shared; ``zoom_key`` changes to reset the zoom. The height follows the
    image's aspect ratio for a figure about ``width`` pixels wide."""
    rows, cols = shape
    fig = make_subplots(rows=1, cols=len(pictures), subplot_titles=[title for title, _ in pictures],
                        shared_xaxes=True, shared_yaxes=True, horizontal_spacing=0.01)
    for i, (_, png) in enumerate(pictures, start=1):
        step = cols / _png_width(png)
        fig.add_trace(go.Image(source="data:image/png;base64," + base64.b64encode(png).decode("ascii"),
                               dx=step, dy=step, hoverinfo="skip"), row=1, col=i)
    if legend:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                                 marker=dict(colorscale=COLOUR_SCALE, cmin=0, cmax=1, color=[0], showscale=True,
                                             colorbar=dict(title=dict(text=LEGEND_TITLE), tickvals=[0, 0.5, 1],
                                                           thickness=14, len=0.6))))
    fig.update_xaxes(visible=False, range=[0, cols], constrain="domain", constraintoward="left")
    fig.update_yaxes(visible=False, range=[rows, 0], scaleanchor="x", constrain="domain", constraintoward="top")
    panel_width = (width - (90 if legend else 0)) / len(pictures)
    fig.update_layout(height=int(min(900, max(300, panel_width * rows / cols + 30))),
                      margin=dict(l=0, r=0, t=28, b=0), dragmode="pan", uirevision=zoom_key,
                      paper_bgcolor="black", plot_bgcolor="black", font=dict(color="#ddd"))
    return fig


PLOTLY_CONFIG = {"scrollZoom": True, "displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _png_width(png: bytes) -> int:
    return int.from_bytes(png[16:20], "big")  # IHDR width
