"""A synthetic demo cohort of chest-film phantoms, so that a fresh machine shows a working product.

``write_demo_cohort(out_dir, n=240, seed=0, size=256)`` writes ``n`` labelled phantoms (classes
``covid``, ``normal``, ``pneumonia``, balanced to within one; drawn by :mod:`model_training.phantoms`),
``labels.csv``, a few broken files and a few out-of-scope DICOMs, and returns a :class:`DemoCohort`
describing what it wrote.

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

DICOM variety
    CR and DX, PA and AP, in the transfer syntaxes of :data:`COHORT_ENCODINGS` (explicit and
    implicit VR little endian, RLE, JPEG 2000 lossless, JPEG-LS lossless, JPEG lossless SV1,
    JPEG baseline; encoded by :mod:`scoring.dicom_encoding`), some stored MONOCHROME1 (values
    inverted, so readers must invert them back), 8, 12 or 16 bits stored, Window Centre/Width on
    all but the 8-bit files, and some with Rescale Slope/Intercept. UIDs come from
    ``pydicom.uid.generate_uid`` with entropy from the seed.

Determinism
    Every image has its own random stream derived from ``(seed, patient, study)``, so the same
    seed gives byte-identical files (PNG and DICOM alike, UIDs included). :func:`render_cohort`
    gives the same phantoms in memory (with their lung masks), before encoding.

``labels.csv`` is written last: a folder without it holds an interrupted run.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_training.phantoms import (
    CLASSES,
    MIN_SIZE,
    Anatomy,
    Disease,
    Phantom,
    random_anatomy,
    random_disease,
    render_ct_slice,
    render_hand,
    render_lateral,
    render_phantom,
)
from scoring.dicom_encoding import ENCODINGS, encode_and_save

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
# DICOM and PNG files


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
