"""Synthetic chest-film phantoms: frontal chests (covid, pneumonia or normal) for the demo cohort,
and a lateral chest, a hand and an axial CT slice for its out-of-scope files. Nothing here is a patient.

A frontal phantom is a map of X-ray attenuation along each ray (soft tissue thickness minus the air
in the lungs, plus bone, heart, breasts, hila and vessel markings), turned into film brightness with
``1 - exp(-k * density)`` and a per-image gamma, then blurred and given correlated quantum noise.
Bone and dense tissue are bright, air is dark, the heart bulges to the image's right (the patient's
left). Per patient: body and lung size, heart size and position, diaphragm height, rib spacing,
soft-tissue thickness, sex (breast shadows), gastric bubble; per image: a few degrees of rotation,
shift, scale, exposure, contrast, blur and noise; AP views get a larger heart and higher clavicles.

Disease replaces part of the air in the lungs (so it can never appear outside them): ``covid``
bilateral, peripheral, mostly lower-zone patchy ground glass (4-9 soft blobs per lung, peaks
replacing up to 0.25-0.8 of the air, the two sides within a factor of two); ``pneumonia`` one lobar
consolidation (0.3-0.95 of the air) in one lung, upper, middle or lower zone, ragged but sharp along
the horizontal fissure where there is one, often with air bronchograms; ``normal`` clear lungs. About
a quarter of the diseased images are mild (fainter, and for pneumonia smaller). Anatomy, view,
exposure and noise are drawn independently of the class, so none of them gives the label away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CLASSES = ("covid", "normal", "pneumonia")
MILD_FRACTION = 0.25
MIN_SIZE = 32


@dataclass(frozen=True)
class Anatomy:
    """Per-patient geometry; coordinates are in [-1, 1] across the image, y down, x to the
    image's right (the patient's left on a PA film)."""

    sex: str  # "F" or "M"
    lung_width: float  # scale of the lung fields across
    lung_height: float
    body_width: float
    heart_size: float
    heart_shift: float  # to the image's right
    dome_height: float  # base level of the diaphragm domes (larger is lower)
    dome_curve: float
    rib_spacing: float
    rib_start: float
    tissue: float  # soft-tissue thickness factor
    breast: float  # breast shadow density (0 for men)
    gastric_bubble: float  # size of the stomach gas bubble, 0 for none
    vessels: float  # prominence of vascular markings


@dataclass(frozen=True)
class Disease:
    """Per-patient disease pattern; ``severity`` is scaled per study for follow-ups."""

    label: str
    severity: float = 0.0
    side: int = 0  # pneumonia: -1 the image's left (patient's right lung), +1 the image's right
    zone: str = ""  # pneumonia: upper, middle or lower
    centre: tuple[float, float] = (0.0, 0.0)  # pneumonia: lung-relative (across, down)
    extent: tuple[float, float] = (0.0, 0.0)  # pneumonia: lung-relative sigmas
    bronchograms: bool = False
    blobs: tuple[tuple[int, float, float, float, float], ...] = ()  # covid: (side, across, down, sigma, weight)
    side_weights: tuple[float, float] = (1.0, 1.0)  # covid: (image-left lung, image-right lung)
    seed: int = 0  # for the texture of the opacity


@dataclass(frozen=True)
class Phantom:
    """A rendered phantom: ``pixels`` 2-D float32 in [0, 1], bone white; boolean lung masks
    (aerated lung, heart and diaphragm excluded) for the image's left and right lung; the
    fraction of air replaced by disease (float32, 0 where clear)."""

    pixels: np.ndarray
    lung_left: np.ndarray  # image left = the patient's right lung on a PA film
    lung_right: np.ndarray
    opacity: np.ndarray


def random_anatomy(rng: np.random.Generator, sex: str | None = None) -> Anatomy:
    """A random patient; the same stream gives the same anatomy whatever ``sex`` says."""
    values = rng.uniform(size=15)
    sex = sex or ("F" if values[0] < 0.5 else "M")

    def between(index: int, lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * values[index])

    return Anatomy(
        sex=sex,
        lung_width=between(1, 0.9, 1.06),
        lung_height=between(2, 0.88, 1.05),
        body_width=between(3, 0.86, 0.97),
        heart_size=between(4, 0.85, 1.2),
        heart_shift=between(5, -0.03, 0.05),
        dome_height=between(6, 0.76, 0.86),
        dome_curve=between(7, 0.24, 0.34),
        rib_spacing=between(8, 0.15, 0.175),
        rib_start=between(9, -0.86, -0.8),
        tissue=between(10, 0.85, 1.2),
        breast=between(11, 0.05, 0.22) if sex == "F" else 0.0,
        gastric_bubble=between(12, 0.6, 1.2) if values[13] < 0.65 else 0.0,
        vessels=between(14, 0.6, 1.4),
    )


def random_disease(label: str, rng: np.random.Generator, mild: bool | None = None) -> Disease:
    if label not in CLASSES:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(CLASSES)}")
    if label == "normal":
        return Disease("normal")
    if mild is None:
        mild = bool(rng.random() < MILD_FRACTION)
    seed = int(rng.integers(2**31))
    if label == "covid":
        severity = float(rng.uniform(0.25, 0.4) if mild else rng.uniform(0.45, 0.8))
        weaker = float(rng.uniform(0.5, 1.0))
        side_weights = (1.0, weaker) if rng.random() < 0.5 else (weaker, 1.0)
        blobs = []
        for side in (-1, 1):
            for _ in range(int(rng.integers(4, 10))):
                across = float(rng.uniform(0.25, 1.0))  # 1 = at the lateral chest wall
                down = float(rng.uniform(-0.1, 0.9) if rng.random() < 0.8 else rng.uniform(-0.6, 0.1))
                blobs.append((side, across, down, float(rng.uniform(0.09, 0.19)), float(rng.uniform(0.5, 1.0))))
        return Disease("covid", severity, blobs=tuple(blobs), side_weights=side_weights, seed=seed)
    severity = float(rng.uniform(0.3, 0.5) if mild else rng.uniform(0.55, 0.95))
    side = -1 if rng.random() < 0.55 else 1
    zone = str(rng.choice(["upper", "middle", "lower"], p=[0.25, 0.3, 0.45]))
    down = {"upper": rng.uniform(-0.55, -0.3), "middle": rng.uniform(-0.05, 0.2), "lower": rng.uniform(0.35, 0.6)}[zone]
    across = float(rng.uniform(-0.3, 0.6))
    scale = 0.6 if mild else 1.0
    extent = (float(rng.uniform(0.35, 0.6) * scale), float(rng.uniform(0.2, 0.32) * scale))
    bronchograms = bool(not mild and rng.random() < 0.6)
    return Disease("pneumonia", severity, side, zone, (across, float(down)), extent, bronchograms, seed=seed)


@dataclass(frozen=True)
class _Pose:
    angle: float  # radians
    scale: float
    shift: tuple[float, float]
    exposure: float  # k in 1 - exp(-k * density)
    gamma: float
    background: float
    blur: float  # sigma in pixels at 256 px
    noise: float


def _random_pose(rng: np.random.Generator) -> _Pose:
    return _Pose(
        angle=math.radians(float(rng.uniform(-4.0, 4.0))),
        scale=float(rng.uniform(0.92, 1.04)),
        shift=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.05))),
        exposure=float(rng.uniform(1.2, 1.9)),
        gamma=float(rng.uniform(0.8, 1.25)),
        background=float(rng.uniform(0.0, 0.06)),
        blur=float(rng.uniform(0.5, 1.3)),
        noise=float(rng.uniform(0.008, 0.03)),
    )


def render_phantom(
    label: str = "normal",
    *,
    size: int = 256,
    rng: np.random.Generator | int | None = None,
    anatomy: Anatomy | None = None,
    disease: Disease | None = None,
    view: str = "PA",
    severity_scale: float = 1.0,
) -> Phantom:
    """Render one frontal chest phantom. ``rng`` (a Generator or a seed) drives whatever
    ``anatomy`` and ``disease`` do not fix, and the per-image pose, exposure and noise."""
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}, not {size}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    anatomy = anatomy or random_anatomy(rng)
    disease = disease or random_disease(label, rng)
    return _render(anatomy, disease, _random_pose(rng), size, view.upper(), severity_scale, rng)


def _grid(size: int, pose: _Pose) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical coordinates of every pixel centre, after the pose (rotation, scale, shift)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    x = x - np.float32(pose.shift[0])
    y = y - np.float32(pose.shift[1] + 0.1)
    c, s = np.float32(math.cos(pose.angle)), np.float32(math.sin(pose.angle))
    inv = np.float32(1.0 / pose.scale)
    return (c * x + s * y) * inv, (-s * x + c * y) * inv + np.float32(0.1)


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """A smooth step from 0 (d << 0) to 1 (d >> 0) over about ``width``."""
    return (0.5 + 0.5 * np.tanh(d * np.float32(1.0 / width))).astype(np.float32, copy=False)


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - np.float32(lo)) * np.float32(1.0 / (hi - lo)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur by FFT, with reflected borders (no wrap-around)."""
    if sigma <= 0.05:
        return image.astype(np.float32, copy=True)
    pad = int(math.ceil(3 * sigma)) + 1
    padded = np.pad(image.astype(np.float32, copy=False), pad, mode="reflect")
    rows, cols = padded.shape
    fy = np.fft.fftfreq(rows).astype(np.float32)
    fx = np.fft.rfftfreq(cols).astype(np.float32)
    kernel = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fy[:, None] ** 2 + fx[None, :] ** 2))
    out = np.fft.irfft2(np.fft.rfft2(padded) * kernel, s=padded.shape)
    return out[pad:-pad, pad:-pad].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Correlated noise scaled to [0, 1]; ``sigma`` is a fraction of the image width."""
    coarse = max(16, min(size, 64))  # generate small and resample: the result is smooth anyway
    field_ = _gaussian_blur(rng.standard_normal((coarse, coarse)).astype(np.float32), sigma * coarse)
    field_ -= field_.min()
    field_ /= max(float(field_.max()), 1e-6)
    if coarse != size:
        field_ = _resize(field_, size)
    return field_


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image, mode="F").resize((size, size), Image.Resampling.BILINEAR))


def _angular_noise(rng: np.random.Generator, count: int, smooth: float) -> np.ndarray:
    """Smooth periodic noise over ``count`` angle samples, scaled to [0, 1]."""
    white = rng.standard_normal(count).astype(np.float32)
    freqs = np.fft.rfftfreq(count).astype(np.float32)
    smoothed = np.fft.irfft(np.fft.rfft(white) * np.exp(-2.0 * (math.pi * smooth * freqs) ** 2), n=count)
    smoothed -= smoothed.min()
    return (smoothed / max(float(smoothed.max()), 1e-6)).astype(np.float32)


class _Lung:
    """One lung's geometry: an egg wider at the base, cut by the diaphragm dome and the
    mediastinum. ``side`` -1 is the image's left."""

    def __init__(self, side: int, anatomy: Anatomy, view: str) -> None:
        self.side = side
        self.cx = side * 0.4 * anatomy.lung_width
        self.cy = -0.04
        self.a = 0.31 * anatomy.lung_width
        self.b = 0.8 * anatomy.lung_height
        # the patient's right hemidiaphragm (image left) sits a little higher
        self.dome_base = anatomy.dome_height + (0.0 if side > 0 else -0.04) + (-0.04 if view == "AP" else 0.0)
        self.dome_curve = anatomy.dome_curve

    def half_width(self, y: np.ndarray) -> np.ndarray:
        yy = (y - np.float32(self.cy)) * np.float32(1.0 / self.b)
        return np.float32(self.a) * (1.0 + 0.28 * np.clip(yy, -1.0, 1.0))

    def local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lung-relative coordinates: across (1 = lateral wall, -1 = medial), down (-1 apex, 1 base)."""
        across = (x - np.float32(self.cx)) * np.float32(self.side) / self.half_width(y)
        down = (y - np.float32(self.cy)) * np.float32(1.0 / self.b)
        return across, down

    def point(self, across: float, down: float) -> tuple[float, float]:
        y = self.cy + down * self.b
        half = self.a * (1.0 + 0.28 * max(-1.0, min(1.0, down)))
        return self.cx + self.side * across * half, y

    def dome(self, x: np.ndarray) -> np.ndarray:
        t = (x - np.float32(self.cx - 0.05 * self.side)) * np.float32(1.0 / (1.3 * self.a))
        return np.float32(self.dome_base) - np.float32(self.dome_curve) * np.clip(1.0 - t * t, 0.0, 1.0)

    def masks(self, x: np.ndarray, y: np.ndarray, edge: float) -> tuple[np.ndarray, np.ndarray]:
        """(soft lung field, air depth profile in [0, 1])."""
        across, down = self.local(x, y)
        # below the middle the egg reaches well under the domes, which then form the lung bases
        # and sharp lateral costophrenic angles
        down = np.where(down < 0, down, down * np.float32(0.72))
        r2 = np.abs(across) ** 2.8 + np.abs(down) ** np.where(down < 0, np.float32(2.2), np.float32(3.0))
        radius = r2 ** np.float32(1.0 / 2.8)
        egg = _soft((1.0 - radius) * np.float32(min(self.a, self.b)), edge)
        below = _soft(self.dome(x) - y, edge)
        # the mediastinum widens towards the hila and the heart; the aortic knob bulges to the left
        mediastinum = np.float32(0.1) + np.float32(0.06) * _smoothstep(-0.35, 0.15, y)
        mediastinum = mediastinum + np.float32(0.07) * np.exp(-(((y + 0.4) / 0.09) ** 2)) * (self.side > 0)
        medial = _soft(np.float32(self.side) * x - mediastinum, edge)
        field_ = egg * below * medial
        depth = np.clip(1.0 - r2, 0.0, 1.0) ** 0.3
        return field_, depth * field_


def _rib_profile(d: np.ndarray) -> np.ndarray:
    """A rib's cross-section against its distance from the centre line in half-thicknesses:
    1 inside, a little brighter at the cortex, soft at the edge."""
    inside = _soft(1.0 - d, 0.18)
    return inside * (0.65 + 0.35 * np.minimum(d * d, 1.0))


def _render(
    anatomy: Anatomy,
    disease: Disease,
    pose: _Pose,
    size: int,
    view: str,
    severity_scale: float,
    rng: np.random.Generator,
) -> Phantom:
    f32 = np.float32
    x, y = _grid(size, pose)
    ax = np.abs(x)
    edge = 1.6 / size  # soft edges of about one pixel
    ap = view == "AP"

    # Body: neck, shoulders, chest wall; thickness falls off towards the sides
    knots_y = [-1.6, -1.1, -0.99, -0.86, -0.7, 0.2, 1.6]
    knots_w = [0.21, 0.22, 0.5, 0.88, 0.97, 0.93, 0.86]
    width = np.interp(y, knots_y, [w * anatomy.body_width / 0.92 for w in knots_w]).astype(np.float32)
    body = _soft(width - ax, edge)
    thickness = body * np.clip(1.0 - (x / width) ** 2, 0.0, 1.0) ** 0.45 * f32(anatomy.tissue)

    # Lungs and heart
    lungs = [_Lung(-1, anatomy, view), _Lung(1, anatomy, view)]
    heart_size = anatomy.heart_size * (1.12 if ap else 1.0)
    # the cardiac silhouette: wider to the image's right (the patient's left), its lower half
    # continuing straight down into the diaphragm so that no lung shows below it
    hx = 0.05 + anatomy.heart_shift
    hy = 0.5 * (lungs[0].dome_base + lungs[1].dome_base) - anatomy.dome_curve + 0.04 + (0.02 if ap else 0.0)
    dy = y - f32(hy)
    dx = x - f32(hx) + f32(0.25) * np.minimum(dy, 0.0)  # the upper heart leans towards the midline
    half = np.where(dx > 0, f32(0.31 * heart_size), f32(0.19 * heart_size))
    heart_r2 = (dx / half) ** 2 + (np.minimum(dy, 0.0) / f32(0.42 * heart_size)) ** 2
    heart_shadow = _soft((1.0 - np.sqrt(heart_r2)) * f32(0.2 * heart_size), edge)

    fields, depths = [], []
    for lung in lungs:
        field_, depth = lung.masks(x, y, edge)
        fields.append(field_)
        depths.append(depth * (1.0 - 0.9 * heart_shadow))
    opacity = _disease_opacity(disease, lungs, x, y, size, severity_scale)
    air = depths[0] + depths[1]
    air_after = air * (1.0 - opacity)
    below_domes = _soft(y - np.minimum(lungs[0].dome(x), lungs[1].dome(x)), 0.02) * body

    # Soft tissue minus the air in the lungs; mediastinum, heart, liver/spleen, breasts, hila,
    # trachea, gastric bubble
    density = thickness * (1.0 - 0.78 * air_after)
    mediastinum = _soft(0.13 + 0.06 * _smoothstep(-0.35, 0.15, y) - ax, 0.03) * _soft(0.5 - y, 0.1) * body
    density += f32(0.25) * np.maximum(np.maximum(mediastinum, heart_shadow), below_domes)
    if anatomy.breast > 0:
        for side in (-1, 1):
            bx, by = side * 0.5 * anatomy.lung_width, 0.42
            r2 = ((x - f32(bx)) / f32(0.36)) ** 2 + ((y - f32(by)) / f32(0.26)) ** 2
            density += f32(anatomy.breast) * _soft(1.0 - np.sqrt(r2), 0.025) * _smoothstep(0.1, 0.45, y) * body
    for lung in lungs:
        hxl, hyl = lung.side * 0.2 * anatomy.lung_width, -0.06
        density += f32(0.12) * np.exp(-(((x - f32(hxl)) / 0.06) ** 2 + ((y - f32(hyl)) / 0.11) ** 2))
    trachea = _soft(0.03 - np.abs(x - 0.01), edge) * _soft(-0.3 - y, 0.02)
    density -= f32(0.22) * trachea * thickness
    if anatomy.gastric_bubble > 0:
        gx, gy = 0.4 * anatomy.lung_width, lungs[1].dome_base + 0.06
        g2 = ((x - f32(gx)) / f32(0.1 * anatomy.gastric_bubble)) ** 2 + ((y - f32(gy)) / f32(0.05)) ** 2
        bubble = _soft(1.0 - np.sqrt(g2), 0.04) * _soft(y - lungs[1].dome(x) - 0.02, edge)
        density -= f32(0.4) * bubble * thickness

    # Vascular markings: branching streaks radiating from the hila, fading to the periphery
    markings = np.zeros_like(x)
    for lung, field_ in zip(lungs, fields, strict=True):
        hxl, hyl = lung.side * 0.2 * anatomy.lung_width, -0.05
        r = np.sqrt((x - f32(hxl)) ** 2 + (y - f32(hyl)) ** 2)
        phi = np.arctan2(y - f32(hyl), (x - f32(hxl)) * f32(lung.side))
        streak = np.zeros_like(x)
        for count, smooth, weight in ((1024, 2.0, 0.55), (1024, 5.0, 0.45)):
            table = _angular_noise(rng, count, smooth)
            wobble = float(rng.uniform(0.3, 0.9))
            index = ((phi + f32(wobble) * r * r) * f32(count / (2 * math.pi))).astype(np.int64) % count
            streak += f32(weight) * table[index] ** 3
        markings += streak * np.exp(-r / f32(0.35)) * field_
    density += f32(0.4 * anatomy.vessels) * markings

    # Bones: spine, clavicles, humeral heads, posterior and anterior ribs. Ribs show best over the
    # lungs; over the mediastinum and abdomen they are faint.
    lung_field = np.maximum(fields[0], fields[1])
    bone = np.zeros_like(x)
    vertebra = 0.6 + 0.4 * np.cos((y + 0.3) * f32(math.pi / 0.095)) ** 2
    spine = _soft(0.065 - ax, 0.012) * vertebra * _soft(1.2 - y, 0.05)
    pedicle = np.exp(-(((ax - 0.045) / 0.012) ** 2)) * np.cos((y + 0.32) * f32(math.pi / 0.095)) ** 8
    bone += f32(0.22) * spine + f32(0.12) * pedicle
    clav_top = -0.8 if ap else -0.7
    for side in (-1, 1):
        t = (x * f32(side) - f32(0.06)) * f32(1.0 / 0.66)
        centre = f32(clav_top) - f32(0.1) * t + f32(0.035) * np.sin(t * f32(2 * math.pi))
        d = np.abs(y - centre) * f32(1.0 / 0.03)
        bone += f32(0.3) * _rib_profile(d) * _soft(t, 0.03) * _soft(1.0 - t, 0.03)
    wall = width - f32(0.04)
    count = 10
    steps = np.arange(count, dtype=np.float32)
    levels = f32(anatomy.rib_start) + f32(anatomy.rib_spacing) * steps * (1.0 + 0.03 * steps)
    halves = f32(0.019) + f32(0.0012) * steps
    visibility = 0.35 + 0.65 * lung_field
    for side in (-1, 1):
        u_s = np.maximum(x * f32(side) - f32(0.06), 0.0)
        # posterior ribs: up and out from the spine, then down along the lateral wall
        curve = f32(-0.3) * u_s + f32(0.75) * u_s * u_s * u_s / f32(0.4)
        rel = (y - curve)[None, :, :] - levels[:, None, None]
        d = np.min(np.abs(rel) / halves[:, None, None], axis=0)
        lateral = _soft(wall - ax, 0.02) * _soft(x * f32(side) - 0.06, 0.015)
        bone += f32(0.13) * _rib_profile(d) * lateral * visibility
        # anterior ribs: from the lateral wall, down and in, fading before the midline
        first = -0.62 if not ap else -0.7
        ant_levels = f32(first) + f32(anatomy.rib_spacing * 1.15) * np.arange(6, dtype=np.float32)
        reach = np.maximum(wall - ax, 0.0)
        ant_curve = y - f32(0.55) * reach + f32(0.25) * reach * reach
        rel = ant_curve[None, :, :] - ant_levels[:, None, None]
        d = np.min(np.abs(rel), axis=0) * f32(1.0 / 0.028)
        fade = _soft(ax - 0.28, 0.08) * _soft(wall - ax, 0.02) * (x * side > 0)
        bone += f32(0.05) * _rib_profile(d) * fade * visibility
    density += bone * _soft(width - ax + 0.02, edge)

    # Film: attenuation -> brightness, exposure and gamma; blur; correlated quantum noise
    image = 1.0 - np.exp(-f32(pose.exposure) * np.maximum(density, 0.0))
    image = f32(pose.background) + (1.0 - f32(pose.background)) * image
    image = np.clip(image, 0.0, 1.0) ** f32(pose.gamma)
    scale = size / 256.0
    image = _gaussian_blur(image, pose.blur * scale)
    noise = _gaussian_blur(rng.standard_normal((size, size)).astype(np.float32), 0.7 * scale)
    image += f32(pose.noise * 1.6) * noise * (0.4 + 0.6 * np.sqrt(np.clip(image, 0.0, 1.0)))
    image = np.clip(image, 0.0, 1.0).astype(np.float32)

    masks = [(field_ > 0.5) & (heart_shadow < 0.5) for field_ in fields]
    return Phantom(image, masks[0], masks[1], opacity.astype(np.float32))


def _disease_opacity(
    disease: Disease, lungs: Sequence[_Lung], x: np.ndarray, y: np.ndarray, size: int, severity_scale: float
) -> np.ndarray:
    """The fraction of lung air that disease replaces, in [0, 1]."""
    f32 = np.float32
    opacity = np.zeros_like(x)
    severity = min(0.97, disease.severity * severity_scale)
    if disease.label == "normal" or severity <= 0:
        return opacity
    rng = np.random.default_rng(disease.seed)
    if disease.label == "covid":
        patchy = 0.45 + 0.55 * _smooth_noise(rng, size, 0.04)
        fine = 0.8 + 0.2 * _smooth_noise(rng, size, 0.015)
        for lung, weight in zip(lungs, disease.side_weights, strict=True):
            across, _down = lung.local(x, y)
            peripheral = 0.6 + 0.4 * _smoothstep(-0.2, 0.9, across)
            total = np.zeros_like(x)
            for side, b_across, b_down, sigma, b_weight in disease.blobs:
                if side != lung.side:
                    continue
                bx, by = lung.point(b_across, b_down)
                total += f32(b_weight) * np.exp(-((x - f32(bx)) ** 2 + (y - f32(by)) ** 2) * f32(0.5 / sigma**2))
            opacity += f32(weight) * np.tanh(1.5 * total) * peripheral
        return np.clip(f32(severity) * opacity * patchy * fine, 0.0, 1.0)
    # pneumonia: a lobar consolidation in one lung
    lung = lungs[0] if disease.side < 0 else lungs[1]
    across, down = lung.local(x, y)
    ca, cd = disease.centre
    sa, sd = disease.extent
    envelope = np.exp(-0.5 * (((across - f32(ca)) / f32(sa)) ** 2 + ((down - f32(cd)) / f32(sd)) ** 2))
    ragged = 0.7 + 0.6 * _smooth_noise(rng, size, 0.025)
    region = _smoothstep(0.12, 0.55, envelope * ragged)
    if disease.side < 0 and disease.zone in ("upper", "middle"):
        # the horizontal fissure bounds the right upper and middle lobes sharply
        fissure = f32(lung.cy + 0.05 * lung.b)
        region = region * (_soft(fissure - y, 0.012) if disease.zone == "upper" else _soft(y - fissure, 0.012))
    texture = 0.85 + 0.15 * _smooth_noise(rng, size, 0.03)
    consolidation = f32(severity) * region * texture
    if disease.bronchograms:
        hx, hy = lung.side * 0.2, -0.05
        r = np.sqrt((x - f32(hx)) ** 2 + (y - f32(hy)) ** 2)
        phi = np.arctan2(y - f32(hy), (x - f32(hx)) * f32(lung.side))
        table = _angular_noise(rng, 2048, 3.0)
        index = ((phi + f32(0.5) * r) * f32(2048 / (2 * math.pi))).astype(np.int64) % 2048
        tubes = _smoothstep(0.72, 0.9, table[index]) * _smoothstep(0.12, 0.25, r)
        consolidation = consolidation * (1.0 - 0.55 * tubes * region)
    return np.clip(consolidation, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Out-of-scope phantoms: a lateral chest, a hand, an axial CT slice


def _film(density: np.ndarray, rng: np.random.Generator, size: int, exposure: float = 1.5) -> np.ndarray:
    image = 1.0 - np.exp(-np.float32(exposure) * np.maximum(density, 0.0))
    image = _gaussian_blur(image.astype(np.float32), 0.8 * size / 256)
    image += np.float32(0.015) * rng.standard_normal(image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def render_lateral(size: int, rng: np.random.Generator) -> np.ndarray:
    """A left lateral chest phantom (patient facing the image's left)."""
    f32 = np.float32
    axis = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    edge = 1.6 / size
    depth = np.interp(y, [-1.6, -0.9, -0.6, 1.6], [0.35, 0.45, 0.75, 0.8]).astype(np.float32)
    body = _soft(depth - np.abs(x + 0.02), edge)
    thickness = body * np.clip(1.0 - (x / depth) ** 2, 0.0, 1.0) ** 0.3
    lung = _soft(1.0 - np.sqrt(((x + 0.02) / 0.55) ** 2 + ((y + 0.02) / 0.75) ** 2), 0.02)
    dome = 0.5 - 0.15 * np.clip(1.0 - ((x + 0.05) / 0.6) ** 2, 0.0, 1.0)
    lung = lung * _soft(dome - y, edge)
    heart = _soft(1.0 - np.sqrt(((x + 0.25) / 0.28) ** 2 + ((y - 0.3) / 0.25) ** 2), 0.03)
    air = lung * (1.0 - 0.7 * heart)
    density = thickness * (1.0 - 0.75 * air) + f32(0.3) * heart
    spine_x = 0.5
    spine = _soft(0.09 - np.abs(x - spine_x + 0.08 * y), edge)
    vertebra = 0.5 + 0.5 * np.cos((y + 0.3) * f32(2 * math.pi / 0.11)) ** 2
    density += f32(0.5) * spine * vertebra * body
    sternum = _soft(0.025 - np.abs(x + 0.62 - 0.06 * y), edge) * _soft(0.4 - np.abs(y + 0.2), 0.02)
    density += f32(0.35) * sternum
    return _film(density, rng, size)


def render_hand(size: int, rng: np.random.Generator) -> np.ndarray:
    """A PA hand phantom: palm, five fingers, metacarpals and phalanges."""
    f32 = np.float32
    axis = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    edge = 1.6 / size
    palm = _soft(1.0 - np.sqrt((x / 0.42) ** 2 + ((y - 0.45) / 0.4) ** 2), 0.02)
    soft = palm.copy()
    bone = np.zeros_like(x)
    fingers = [(-0.3, -0.35, 0.55), (-0.1, -0.55, 0.62), (0.1, -0.6, 0.66), (0.28, -0.5, 0.6), (0.5, 0.05, 0.45)]
    for i, (fx, tip, length) in enumerate(fingers):
        angle = -0.6 if i == 4 else 0.05 * (i - 1.5)
        base_y = tip + length
        px = (x - f32(fx)) * f32(math.cos(angle)) - (y - f32(base_y)) * f32(math.sin(angle))
        py = (x - f32(fx)) * f32(math.sin(angle)) + (y - f32(base_y)) * f32(math.cos(angle))
        finger = _soft(0.075 - np.abs(px), edge) * _soft(py + length, 0.03) * _soft(0.3 - py, 0.03)
        soft = np.maximum(soft, finger)
        seg = length / 3.2
        for k in range(3):
            cy = -seg * (k + 0.5) - 0.02
            bone += _soft(1.0 - np.sqrt((px / 0.045) ** 2 + ((py - f32(cy)) / f32(seg * 0.45)) ** 2), 0.02)
        metacarpal_y = 0.25
        bone += _soft(1.0 - np.sqrt((px / 0.045) ** 2 + ((py - f32(metacarpal_y)) / 0.22) ** 2), 0.02)
    density = f32(0.5) * soft + f32(0.6) * bone * soft
    return _film(density, rng, size, exposure=2.0)


def render_ct_slice(size: int, rng: np.random.Generator) -> np.ndarray:
    """An axial chest CT slice in Hounsfield units (float32)."""
    f32 = np.float32
    axis = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    edge = 1.6 / size
    body = _soft(1.0 - np.sqrt((x / 0.85) ** 2 + (y / 0.6) ** 2), edge)
    hu = f32(-1000.0) + f32(1040.0) * body
    for side in (-1, 1):
        lung = _soft(1.0 - np.sqrt(((x - side * 0.38) / 0.3) ** 2 + ((y + 0.02) / 0.42) ** 2), edge)
        hu -= f32(900.0) * lung
    heart = _soft(1.0 - np.sqrt(((x - 0.08) / 0.22) ** 2 + ((y + 0.15) / 0.2) ** 2), edge)
    hu = hu * (1 - heart) + f32(40.0) * heart
    spine = _soft(1.0 - np.sqrt((x / 0.09) ** 2 + ((y - 0.42) / 0.09) ** 2), edge)
    hu = hu * (1 - spine) + f32(700.0) * spine
    table = _soft(0.02 - np.abs(y - 0.75), edge) * _soft(0.9 - np.abs(x), edge)
    hu += f32(1200.0) * table
    hu += f32(12.0) * rng.standard_normal(hu.shape).astype(np.float32)
    return hu.astype(np.float32)
