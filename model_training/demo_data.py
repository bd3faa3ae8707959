"""A synthetic demo cohort of chest-film phantoms, so that a fresh machine shows a working product.

``write_demo_cohort(out_dir, n=240, seed=0, size=256)`` writes ``n`` labelled phantoms (classes
``covid``, ``normal``, ``pneumonia``, balanced to within one), ``labels.csv``, a few broken files
and a few out-of-scope DICOMs, and returns a :class:`DemoCohort` describing what it wrote.

Nothing here is a patient. Every image is drawn from geometry and noise; every DICOM carries an
obviously fake name (``DEMO^PATIENT-0007``), ``Manufacturer`` "CXR Review demo" and
``ImageComments`` "Synthetic phantom, not a patient".

Layout of ``out_dir``
    ``labels.csv``        columns ``file,label,patient_id,source,view,format``; ``file`` relative to
                          ``out_dir``, ``source`` always ``synthetic``, ``format`` ``png`` or ``dicom``
    ``<label>/*.png|dcm``  the labelled phantoms; about 30 % DICOM (every class gets the same share),
                          the rest PNG (mostly 8-bit, every fifth PNG 16-bit). Some patients have a
                          follow-up study (a second image), so splits must be made per patient.
    ``broken/``           files that cannot be read (not in ``labels.csv``); ``DemoCohort.broken``
                          names each with the :mod:`scoring.imaging` failure reason it must give
    ``out_of_scope/``     readable DICOMs a frontal chest classifier must not see (a lateral chest,
                          a hand, an axial CT slice); ``DemoCohort.out_of_scope`` gives the reason
                          ``scoring.imaging.in_scope`` reports for each

Phantoms
    Built as a map of X-ray attenuation along each ray (soft tissue thickness minus the air in the
    lungs, plus bone, heart, breasts, hila and vessel markings), turned into film brightness with
    ``1 - exp(-k * density)`` and a per-image gamma, then blurred and given correlated quantum
    noise. Bone and dense tissue are bright, air is dark, the heart bulges to the image's right
    (the patient's left). Per patient: body and lung size, heart size and position, diaphragm
    height, rib spacing, soft-tissue thickness, sex (breast shadows), gastric bubble; per image:
    a few degrees of rotation, shift, scale, exposure, contrast, blur and noise; AP views get a
    larger heart and higher clavicles.

    Disease replaces part of the air in the lungs (so it can never appear outside them):
    ``covid`` bilateral, peripheral, mostly lower-zone patchy ground glass (4-9 soft blobs per
    lung, peaks replacing up to 0.25-0.8 of the air, the two sides within a factor of two);
    ``pneumonia`` one lobar consolidation (0.3-0.95 of the air) in one lung, upper, middle or
    lower zone, ragged but sharp along the horizontal fissure where there is one, often with air
    bronchograms; ``normal`` clear lungs. About a quarter of the diseased images are mild (fainter,
    and for pneumonia smaller). Anatomy, view, exposure and noise are drawn independently of the
    class, and every class gets the same share of each file format, so none of them gives the
    label away.

DICOM variety
    CR and DX, PA and AP, in the transfer syntaxes of :data:`COHORT_ENCODINGS` (explicit and
    implicit VR little endian, RLE, JPEG 2000 lossless, JPEG-LS lossless, JPEG lossless SV1,
    JPEG baseline), some stored MONOCHROME1 (values inverted, so readers must invert them back),
    8, 12 or 16 bits stored, Window Centre/Width on all but the 8-bit files, and some with Rescale
    Slope/Intercept. UIDs come from ``pydicom.uid.generate_uid`` with entropy from the seed.

Determinism
    Every image has its own random stream derived from ``(seed, patient, study)``, so the same
    seed gives byte-identical files (PNG and DICOM alike, UIDs included). :func:`render_cohort`
    gives the same phantoms in memory (with their lung masks), before encoding.

``labels.csv`` is written last: a folder without it holds an interrupted run.

The DICOM encoders (:func:`encode_and_save`, :func:`pillow_jpeg`, :func:`gdcm_transcode`,
:data:`ENCODINGS`) are public so that tests can write DICOMs in the same ways.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ("covid", "normal", "pneumonia")
SOURCE = "synthetic"
LABELS_CSV = "labels.csv"
CSV_COLUMNS = ("file", "label", "patient_id", "source", "view", "format")
BROKEN_DIR = "broken"
OUT_OF_SCOPE_DIR = "out_of_scope"
MANUFACTURER = "CXR Review demo"
IMAGE_COMMENTS = "Synthetic phantom, not a patient"
DICOM_FRACTION = 0.3
PNG16_EVERY = 5  # every fifth PNG is 16-bit
FOLLOW_UP_PROBABILITY = 0.2  # of a patient having a second study
MILD_FRACTION = 0.25
MIN_SIZE = 32

# encoding name -> Transfer Syntax UID; the names that tests/scoring/conftest.py uses too
ENCODINGS: dict[str, str] = {
    "explicit_le": "1.2.840.10008.1.2.1",
    "implicit_le": "1.2.840.10008.1.2",
    "explicit_be": "1.2.840.10008.1.2.2",
    "deflated": "1.2.840.10008.1.2.1.99",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg_baseline": "1.2.840.10008.1.2.4.50",
    "jpeg_extended_8": "1.2.840.10008.1.2.4.51",
    "jpeg_extended_12": "1.2.840.10008.1.2.4.51",
    "jpeg_lossless_p14": "1.2.840.10008.1.2.4.57",
    "jpeg_lossless_sv1": "1.2.840.10008.1.2.4.70",
    "jpeg_ls_lossless": "1.2.840.10008.1.2.4.80",
    "jpeg_ls_near_lossless": "1.2.840.10008.1.2.4.81",
    "j2k_lossless": "1.2.840.10008.1.2.4.90",
    "j2k_lossy": "1.2.840.10008.1.2.4.91",
}
JPEG_LS_NEAR = 2  # the largest error JPEG-LS near-lossless may make, in stored units
J2K_LOSSY_RATIO = 20
_NATIVE_ENCODINGS = ("explicit_le", "implicit_le", "deflated")
_GDCM_ENCODINGS = ("jpeg_extended_8", "jpeg_extended_12", "jpeg_lossless_p14", "jpeg_lossless_sv1")

# UID root of pydicom's generate_uid (registered to pydicom); entropy makes the UIDs reproducible
_UID_PREFIX = "1.2.826.0.1.3680043.8.498."
_CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
_DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class DicomStyle:
    """How one DICOM phantom is stored."""

    encoding: str  # a key of ENCODINGS
    photometric: str  # MONOCHROME1 or MONOCHROME2
    bits_stored: int  # 8, 12 or 16
    rescale: tuple[float, float] | None = None  # (slope, intercept)
    window: bool = True


# The DICOM phantoms cycle through these; every second round flips MONOCHROME1/2 (not for JPEG
# baseline, always MONOCHROME2). Any n >= 19 gives at least one DICOM of each.
COHORT_STYLES: tuple[DicomStyle, ...] = (
    DicomStyle("explicit_le", "MONOCHROME2", 12),
    DicomStyle("jpeg_ls_lossless", "MONOCHROME1", 12),
    DicomStyle("implicit_le", "MONOCHROME2", 16, rescale=(1.0, -1024.0)),
    DicomStyle("rle", "MONOCHROME1", 12, rescale=(0.5, 0.0)),
    DicomStyle("j2k_lossless", "MONOCHROME2", 16),
    DicomStyle("jpeg_baseline", "MONOCHROME2", 8, window=False),
    DicomStyle("jpeg_lossless_sv1", "MONOCHROME1", 12, rescale=(1.0, -1024.0)),
)
COHORT_ENCODINGS: tuple[str, ...] = tuple(style.encoding for style in COHORT_STYLES)


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class DemoImage:
    """One labelled phantom, as listed in labels.csv."""

    file: str  # relative to the cohort folder, POSIX separators
    label: str
    patient_id: str
    view: str
    format: str  # "png" or "dicom"
    encoding: str  # "png8", "png16" or a key of ENCODINGS
    photometric: str | None  # DICOM only
    severity: float  # 0 for normal; else the severity drawn (peak fraction of lung air replaced, before patchiness)


@dataclass(frozen=True)
class ExpectedFailure:
    """A file the demo run must not score, and the reason it should report."""

    file: str  # relative to the cohort folder
    reason: str  # an XRayReadError reason (broken) or the why of in_scope() (out of scope)


@dataclass(frozen=True)
class DemoCohort:
    out_dir: Path
    seed: int
    size: int
    images: list[DemoImage]
    broken: list[ExpectedFailure]
    out_of_scope: list[ExpectedFailure]
    class_counts: dict[str, int] = field(default_factory=dict)
    format_counts: dict[str, int] = field(default_factory=dict)  # png8, png16, dicom:<encoding>
    n_patients: int = 0

    @property
    def labels_csv(self) -> Path:
        return self.out_dir / LABELS_CSV

    def summary(self) -> str:
        classes = ", ".join(f"{label} {count}" for label, count in sorted(self.class_counts.items()))
        formats = ", ".join(f"{name} {count}" for name, count in sorted(self.format_counts.items()))
        return (
            f"{len(self.images)} synthetic images of {self.n_patients} patients in {self.out_dir} "
            f"({classes}); formats: {formats}; plus {len(self.broken)} broken and "
            f"{len(self.out_of_scope)} out-of-scope files"
        )


# --------------------------------------------------------------------------------------------
# Phantom anatomy and rendering


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


# --------------------------------------------------------------------------------------------
# DICOM encoding (shared with the tests)


def pillow_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    """An 8-bit grey JPEG baseline codestream made by Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def gdcm_transcode(ds: Any, encoding: str, scratch: Path) -> Any:
    """Compress ``ds`` with GDCM (JPEG extended 8/12-bit, JPEG lossless process 14 or SV1) and
    return the result as a pydicom dataset; ``scratch`` is a folder for the two temporary files."""
    import gdcm
    import pydicom

    targets = {
        "jpeg_extended_8": gdcm.TransferSyntax.JPEGExtendedProcess2_4,
        "jpeg_extended_12": gdcm.TransferSyntax.JPEGExtendedProcess2_4,
        "jpeg_lossless_p14": gdcm.TransferSyntax.JPEGLosslessProcess14,
        "jpeg_lossless_sv1": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
    }
    if encoding not in targets:
        raise ValueError(f"GDCM does not encode {encoding!r} here; expected one of {', '.join(targets)}")
    source, result = Path(scratch) / f"gdcm-in-{encoding}.dcm", Path(scratch) / f"gdcm-out-{encoding}.dcm"
    ds.save_as(source, enforce_file_format=True)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    if not reader.Read():
        raise RuntimeError("GDCM cannot read the native source")
    image = reader.GetImage()
    if encoding == "jpeg_extended_12":
        # GDCM picks the JPEG sample precision from Bits Allocated; with 16 it writes a
        # non-standard 16-bit lossy stream. Claiming 12 makes it write a standard 12-bit SOF1.
        pixel_format = image.GetPixelFormat()
        pixel_format.SetBitsAllocated(12)
        image.SetPixelFormat(pixel_format)
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(targets[encoding]))
    change.SetInput(image)
    if not change.Change():
        raise RuntimeError(f"GDCM cannot encode {encoding}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(result))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {encoding}")
    out = pydicom.dcmread(result)
    out.BitsAllocated = ds.BitsAllocated  # undo the Bits Allocated claim above
    out.BitsStored, out.HighBit = ds.BitsStored, ds.HighBit
    source.unlink(missing_ok=True)
    result.unlink(missing_ok=True)
    return out


def encode_and_save(ds: Any, pixels: np.ndarray, encoding: str, path: Path, scratch: Path | None = None) -> None:
    """Store ``ds`` (native pixel data equal to ``pixels``) at ``path`` in ``encoding``, a key of
    :data:`ENCODINGS`. Encoders: pydicom for the native syntaxes, deflate and RLE; Pillow for
    JPEG baseline (8-bit); GDCM for JPEG extended and JPEG lossless; pyjpegls (through pydicom)
    for JPEG-LS; pylibjpeg-openjpeg (through pydicom) for JPEG 2000. Lossless encodings keep the
    SOP Instance UID, the lossy JPEG-LS and JPEG 2000 ones get a new one. ``scratch`` is a folder
    for GDCM's temporary files (a temporary folder when None)."""
    from pydicom.encaps import encapsulate

    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    syntax = ENCODINGS[encoding]
    if encoding in _NATIVE_ENCODINGS:
        ds.file_meta.TransferSyntaxUID = syntax
    elif encoding == "explicit_be":
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
    elif encoding == "jpeg_baseline":
        if pixels.dtype != np.uint8:
            raise ValueError("JPEG baseline needs 8-bit pixels")
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([pillow_jpeg(pixels)])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    elif encoding in _GDCM_ENCODINGS:
        if scratch is None:
            with tempfile.TemporaryDirectory(prefix="cxr-gdcm-") as tmp:
                ds = gdcm_transcode(ds, encoding, Path(tmp))
        else:
            ds = gdcm_transcode(ds, encoding, scratch)
    elif encoding == "jpeg_ls_near_lossless":  # lossy: a new SOP Instance UID, as DICOM asks
        ds.compress(syntax, jls_error=JPEG_LS_NEAR)
    elif encoding == "j2k_lossy":
        ds.compress(syntax, j2k_cr=[J2K_LOSSY_RATIO])
    else:  # lossless: the same image, so the same SOP Instance UID (and reproducible files)
        ds.compress(syntax, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def demo_uid(seed: int, *parts: object) -> str:
    """A UID reproducible from the seed and ``parts`` (pydicom's root, hashed entropy)."""
    from pydicom.uid import generate_uid

    return generate_uid(_UID_PREFIX, entropy_srcs=["cxr-review-demo", str(seed), *map(str, parts)])


@dataclass(frozen=True)
class _Study:
    patient_no: int
    study_no: int  # 1 for the first study, 2 for a follow-up
    label: str
    view: str
    modality: str
    sex: str
    birth_date: dt.date
    study_date: dt.date

    @property
    def patient_id(self) -> str:
        return f"DEMO-{self.patient_no:04d}"

    @property
    def stem(self) -> str:
        return f"demo_{self.patient_no:04d}_{self.study_no}"


def _base_dataset(seed: int, study: _Study, sop_class: str, rows: int, cols: int, series: str = "1") -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset

    key = (study.patient_no, study.study_no)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = demo_uid(seed, "sop", *key, series)
    ds.file_meta.TransferSyntaxUID = ENCODINGS["explicit_le"]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"DEMO{study.patient_no:04d}{study.study_no}"
    ds.Modality = study.modality
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "Synthetic chest phantom"
    ds.InstitutionName = "Synthetic data (no institution)"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC DEMO"
    ds.PatientName = f"DEMO^PATIENT-{study.patient_no:04d}"
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date.strftime("%Y%m%d")
    ds.PatientSex = study.sex
    age = (study.study_date - study.birth_date).days // 365
    ds.PatientAge = f"{age:03d}Y"
    ds.StudyInstanceUID = demo_uid(seed, "study", *key)
    ds.SeriesInstanceUID = demo_uid(seed, "series", *key, series)
    ds.StudyID = f"{study.study_no}"
    ds.SeriesNumber = series
    ds.InstanceNumber = "1"
    ds.ImageComments = IMAGE_COMMENTS
    ds.BurnedInAnnotation = "NO"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    return ds


def _chest_dicom(
    image: np.ndarray,
    style: DicomStyle,
    study: _Study,
    seed: int,
    rng: np.random.Generator,
    body_part: str = "CHEST",
) -> tuple[Any, np.ndarray]:
    """A dataset for the display image ``image`` (float [0, 1], bone white) and its stored pixels."""
    size = image.shape[0]
    sop_class = _DX_STORAGE if study.modality == "DX" else _CR_STORAGE
    ds = _base_dataset(seed, study, sop_class, *image.shape)
    ds.BodyPartExamined = body_part
    ds.ViewPosition = study.view
    ds.PatientOrientation = ["L", "F"] if study.view != "LL" else ["A", "F"]
    ds.ImagerPixelSpacing = [f"{400.0 / size:.4f}"] * 2
    if study.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    top = (1 << style.bits_stored) - 1
    if style.bits_stored == 8:
        lo, hi = 0, top
    else:  # not the whole range, like a real detector
        lo = int(rng.integers(top // 40, top // 12))
        hi = int(top - rng.integers(top // 50, top // 15))
    values = lo + image.astype(np.float64) * (hi - lo)
    if style.photometric == "MONOCHROME1":
        values = top - values
    stored = np.rint(values).astype(np.uint8 if style.bits_stored == 8 else np.uint16)
    ds.PhotometricInterpretation = style.photometric
    ds.BitsAllocated = 8 if style.bits_stored == 8 else 16
    ds.BitsStored = style.bits_stored
    ds.HighBit = style.bits_stored - 1
    slope, intercept = style.rescale or (1.0, 0.0)
    if style.rescale is not None:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"
    if style.window:
        # LINEAR window (PS3.3 C.11.2.1.2) covering the used range, in modality (rescaled) units
        a, b = sorted(
            (lo * slope + intercept, hi * slope + intercept)
            if style.photometric == "MONOCHROME2"
            else ((top - hi) * slope + intercept, (top - lo) * slope + intercept)
        )
        width = b - a + 1
        ds.WindowCenter = f"{a + 0.5 + (width - 1) / 2:.1f}"
        ds.WindowWidth = f"{width:.1f}"
        ds.VOILUTFunction = "LINEAR"
    ds.PixelData = stored.tobytes()
    return ds, stored


def _write_chest_dicom(
    path: Path,
    image: np.ndarray,
    style: DicomStyle,
    study: _Study,
    seed: int,
    rng: np.random.Generator,
    scratch: Path,
    body_part: str = "CHEST",
) -> None:
    ds, stored = _chest_dicom(image, style, study, seed, rng, body_part)
    encode_and_save(ds, stored, style.encoding, path, scratch)


def _write_png(path: Path, image: np.ndarray, bits: int) -> None:
    from PIL import Image

    if bits == 16:
        array = np.rint(image.astype(np.float64) * 65535).astype(np.uint16)
    else:
        array = np.rint(image.astype(np.float64) * 255).astype(np.uint8)
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=6)


# --------------------------------------------------------------------------------------------
# The cohort


@dataclass(frozen=True)
class _Planned:
    study: _Study
    kind: str  # png8, png16 or dicom
    style: DicomStyle | None


def _plan(n: int, seed: int) -> list[_Planned]:
    """Studies in generation order: classes interleaved, follow-ups after their first study,
    formats spread alike over the classes, DICOM styles cycling in generation order."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    per_class = {label: n // len(CLASSES) + (1 if i < n % len(CLASSES) else 0) for i, label in enumerate(CLASSES)}
    # within each class: patients with one or two studies; the first patient always has two
    groups: dict[str, list[int]] = {}
    for label in CLASSES:
        sizes, left = [], per_class[label]
        while left > 0:
            two = left >= 2 and (not sizes or rng.random() < FOLLOW_UP_PROBABILITY)
            sizes.append(2 if two else 1)
            left -= sizes[-1]
        groups[label] = sizes
    # format of the k-th image of each class: DICOM evenly spread, every fifth PNG 16-bit
    kinds: dict[str, list[str]] = {}
    for label in CLASSES:
        count = per_class[label]
        n_dicom = math.ceil(DICOM_FRACTION * count)
        is_dicom = [math.floor((k + 1) * n_dicom / count) > math.floor(k * n_dicom / count) for k in range(count)]
        out, png_seen = [], 0
        for flag in is_dicom:
            if flag:
                out.append("dicom")
            else:
                out.append("png16" if png_seen % PNG16_EVERY == PNG16_EVERY - 1 else "png8")
                png_seen += 1
        kinds[label] = out
    # interleave the classes patient by patient
    planned: list[_Planned] = []
    position = dict.fromkeys(CLASSES, 0)
    patient_index = dict.fromkeys(CLASSES, 0)
    patient_no = 0
    dicom_no = 0
    while any(patient_index[label] < len(groups[label]) for label in CLASSES):
        for label in CLASSES:
            if patient_index[label] >= len(groups[label]):
                continue
            studies = groups[label][patient_index[label]]
            patient_index[label] += 1
            patient_no += 1
            sex = "F" if rng.random() < 0.5 else "M"
            birth = dt.date(1935, 1, 1) + dt.timedelta(days=int(rng.integers(0, 70 * 365)))
            first = dt.date(2020, 3, 1) + dt.timedelta(days=int(rng.integers(0, 4 * 365)))
            modality = "CR" if rng.random() < 0.5 else "DX"
            for study_no in range(1, studies + 1):
                date = first + dt.timedelta(days=0 if study_no == 1 else int(rng.integers(3, 30)))
                view = "AP" if rng.random() < 0.25 else "PA"
                kind = kinds[label][position[label]]
                position[label] += 1
                style = None
                if kind == "dicom":
                    round_, index = divmod(dicom_no, len(COHORT_STYLES))
                    style = COHORT_STYLES[index]
                    if round_ % 2 == 1 and style.encoding != "jpeg_baseline":
                        flipped = "MONOCHROME2" if style.photometric == "MONOCHROME1" else "MONOCHROME1"
                        style = DicomStyle(style.encoding, flipped, style.bits_stored, style.rescale, style.window)
                    dicom_no += 1
                study = _Study(patient_no, study_no, label, view, modality, sex, birth, date)
                planned.append(_Planned(study, kind, style))
    return planned


def _anatomy_for(seed: int, study: _Study) -> tuple[Anatomy, Disease]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, study.patient_no]))
    return random_anatomy(rng, study.sex), random_disease(study.label, rng)


def _render_study(seed: int, study: _Study, size: int) -> tuple[Phantom, float, np.random.Generator]:
    anatomy, disease = _anatomy_for(seed, study)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, study.patient_no, study.study_no]))
    severity_scale = 1.0 if study.study_no == 1 else float(rng.uniform(0.6, 1.25))
    phantom = render_phantom(
        study.label,
        size=size,
        rng=rng,
        anatomy=anatomy,
        disease=disease,
        view=study.view,
        severity_scale=severity_scale,
    )
    return phantom, min(0.97, disease.severity * severity_scale), rng


def _relative(item: _Planned) -> str:
    return f"{item.study.label}/{item.study.stem}.{'dcm' if item.kind == 'dicom' else 'png'}"


def render_cohort(n: int = 240, seed: int = 0, size: int = 256) -> Iterator[tuple[str, Phantom]]:
    """The phantoms that ``write_demo_cohort(out_dir, n, seed, size)`` writes, in memory and
    before encoding: ``(file relative to out_dir, phantom)`` in generation order."""
    for item in _plan(n, seed):
        phantom, _severity, _rng = _render_study(seed, item.study, size)
        yield _relative(item), phantom


def write_demo_cohort(
    out_dir: Path | str, n: int = 240, seed: int = 0, size: int = 256, *, overwrite: bool = False
) -> DemoCohort:
    """Write the synthetic demo cohort into ``out_dir`` (see the module docstring).

    ``out_dir`` must be empty or absent; with ``overwrite`` the previous cohort's files
    (``labels.csv`` and the class, ``broken`` and ``out_of_scope`` folders) are removed first and
    anything else is left alone.
    """
    if n < len(CLASSES):
        raise ValueError(f"n must be at least {len(CLASSES)}, not {n}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}, not {size}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace a demo cohort there")
        for name in (*CLASSES, BROKEN_DIR, OUT_OF_SCOPE_DIR):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        (out / LABELS_CSV).unlink(missing_ok=True)
    for name in CLASSES:
        (out / name).mkdir(parents=True, exist_ok=True)

    images: list[DemoImage] = []
    with tempfile.TemporaryDirectory(prefix="cxr-demo-") as tmp:
        scratch = Path(tmp)
        for item in _plan(n, seed):
            study = item.study
            phantom, severity, rng = _render_study(seed, study, size)
            relative = _relative(item)
            if item.kind == "dicom":
                assert item.style is not None
                _write_chest_dicom(out / relative, phantom.pixels, item.style, study, seed, rng, scratch)
                encoding, photometric = item.style.encoding, item.style.photometric
            else:
                _write_png(out / relative, phantom.pixels, 16 if item.kind == "png16" else 8)
                encoding, photometric = item.kind, None
            images.append(
                DemoImage(
                    relative,
                    study.label,
                    study.patient_id,
                    study.view,
                    "dicom" if item.kind == "dicom" else "png",
                    encoding,
                    photometric,
                    round(severity, 4),
                )
            )
        broken = _write_broken(out, seed, size, scratch)
        out_of_scope = _write_out_of_scope(out, seed, size, scratch)

    images.sort(key=lambda image: image.file)
    with open(out / LABELS_CSV, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for image in images:
            writer.writerow([image.file, image.label, image.patient_id, SOURCE, image.view, image.format])
    formats = Counter(image.encoding if image.format == "png" else f"dicom:{image.encoding}" for image in images)
    return DemoCohort(
        out_dir=out,
        seed=seed,
        size=size,
        images=images,
        broken=broken,
        out_of_scope=out_of_scope,
        class_counts=dict(Counter(image.label for image in images)),
        format_counts=dict(formats),
        n_patients=len({image.patient_id for image in images}),
    )


def _extra_study(number: int, label: str = "normal", view: str = "PA", modality: str = "CR") -> _Study:
    # patient numbers from 9000 up: never those of the labelled cohort
    return _Study(
        9000 + number,
        1,
        label,
        view,
        modality,
        "F" if number % 2 else "M",
        dt.date(1960, 1, 1) + dt.timedelta(days=97 * number),
        dt.date(2023, 6, 1),
    )


def _write_broken(out: Path, seed: int, size: int, scratch: Path) -> list[ExpectedFailure]:
    """Files the reader must refuse, each with the reason it must give."""
    folder = out / BROKEN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    image = render_phantom("normal", size=size, rng=rng).pixels
    failures: list[ExpectedFailure] = []

    png = folder / "truncated.png"
    _write_png(png, image, 8)
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 2])
    failures.append(ExpectedFailure(f"{BROKEN_DIR}/truncated.png", "truncated"))

    crc = folder / "bad_crc.png"
    _write_png(crc, image, 8)
    data = bytearray(crc.read_bytes())
    data[len(data) // 2] ^= 0x5A  # a flipped byte inside IDAT: the chunk CRC no longer matches
    crc.write_bytes(bytes(data))
    failures.append(ExpectedFailure(f"{BROKEN_DIR}/bad_crc.png", "corrupt"))

    dcm = folder / "truncated.dcm"
    style = DicomStyle("explicit_le", "MONOCHROME2", 12)
    _write_chest_dicom(dcm, image, style, _extra_study(1), seed, rng, scratch)
    data = dcm.read_bytes()
    dcm.write_bytes(data[: len(data) * 3 // 5])
    failures.append(ExpectedFailure(f"{BROKEN_DIR}/truncated.dcm", "truncated"))

    (folder / "empty.dcm").write_bytes(b"")
    failures.append(ExpectedFailure(f"{BROKEN_DIR}/empty.dcm", "empty"))

    (folder / "report.dcm").write_text(
        "SYNTHETIC DEMO REPORT\nThis is a text file with a .dcm name, not a DICOM file.\n"
        "Findings: none (there is no patient).\n",
        encoding="utf-8",
    )
    failures.append(ExpectedFailure(f"{BROKEN_DIR}/report.dcm", "not_an_image"))

    # a DICOM object without pixels (e.g. a stray key-object note in an export folder)
    ds = _base_dataset(seed, _extra_study(2), _CR_STORAGE, size, size)
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    del ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PixelRepresentation
    ds.save_as(folder / "no_pixels.dcm", enforce_file_format=True)
    failures.append(ExpectedFailure(f"{BROKEN_DIR}/no_pixels.dcm", "no_pixel_data"))
    return failures


def _write_out_of_scope(out: Path, seed: int, size: int, scratch: Path) -> list[ExpectedFailure]:
    """Readable DICOMs that a frontal chest classifier must not see."""
    folder = out / OUT_OF_SCOPE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    failures: list[ExpectedFailure] = []

    lateral = _extra_study(3, view="LL", modality="DX")
    _write_chest_dicom(
        folder / "lateral_chest.dcm",
        render_lateral(size, rng),
        DicomStyle("explicit_le", "MONOCHROME2", 12),
        lateral,
        seed,
        rng,
        scratch,
    )
    failures.append(ExpectedFailure(f"{OUT_OF_SCOPE_DIR}/lateral_chest.dcm", "lateral_view:LL"))

    hand = _extra_study(4, view="PA", modality="CR")
    _write_chest_dicom(
        folder / "hand.dcm",
        render_hand(size, rng),
        DicomStyle("explicit_le", "MONOCHROME1", 12),
        hand,
        seed,
        rng,
        scratch,
        body_part="HAND",
    )
    failures.append(ExpectedFailure(f"{OUT_OF_SCOPE_DIR}/hand.dcm", "body_part:HAND"))

    ct = _extra_study(5, modality="CT")
    ds = _base_dataset(seed, ct, _CT_STORAGE, size, size)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BodyPartExamined = "CHEST"
    ds.PixelSpacing = [f"{380.0 / size:.4f}"] * 2
    ds.SliceThickness = "2.5"
    ds.ImagePositionPatient = ["-190", "-190", "-120"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    hu = render_ct_slice(size, rng)
    stored = np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "-1024", "HU"
    ds.WindowCenter, ds.WindowWidth = "-600", "1500"  # lung window
    ds.PixelData = stored.tobytes()
    encode_and_save(ds, stored, "explicit_le", folder / "ct_chest_axial.dcm", scratch)
    failures.append(ExpectedFailure(f"{OUT_OF_SCOPE_DIR}/ct_chest_axial.dcm", "modality:CT"))
    return failures
