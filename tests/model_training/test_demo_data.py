"""The synthetic demo cohort: layout, readability, failures, DICOM variety, determinism, no PHI, and
class patterns that are really there."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from model_training import demo_data
from model_training.demo_data import (
    CLASSES,
    COHORT_ENCODINGS,
    ENCODINGS,
    Disease,
    random_anatomy,
    random_disease,
    render_cohort,
    render_phantom,
    write_demo_cohort,
)
from scoring.imaging import XRayReadError, in_scope, read_xray

N = 36  # 12 per class: more than one round of the 7 DICOM styles
SIZE = 128


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> demo_data.DemoCohort:
    return write_demo_cohort(tmp_path_factory.mktemp("demo") / "cohort", n=N, seed=0, size=SIZE)


def _rows(cohort: demo_data.DemoCohort) -> list[dict[str, str]]:
    with open(cohort.out_dir / "labels.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _dicoms(cohort: demo_data.DemoCohort) -> list[Path]:
    return [cohort.out_dir / row["file"] for row in _rows(cohort) if row["format"] == "dicom"]


# --- layout --------------------------------------------------------------------------------------------


def test_labels_csv_matches_the_files(cohort):
    rows = _rows(cohort)
    assert list(rows[0]) == ["file", "label", "patient_id", "source", "view", "format"]
    assert len(rows) == N == len(cohort.images)
    listed = {row["file"] for row in rows}
    root = cohort.out_dir
    on_disk = {p.relative_to(root).as_posix() for label in CLASSES for p in (root / label).iterdir()}
    assert listed == on_disk
    assert listed == {image.file for image in cohort.images}
    for row in rows:
        assert row["file"].startswith(row["label"] + "/")
        assert row["source"] == "synthetic"
        assert row["view"] in ("PA", "AP")
        assert row["format"] == ("dicom" if row["file"].endswith(".dcm") else "png")
        assert row["patient_id"].startswith("DEMO-")
    counts = Counter(row["label"] for row in rows)
    assert set(counts) == set(CLASSES) and max(counts.values()) - min(counts.values()) <= 1
    assert cohort.class_counts == dict(counts)
    assert sum(cohort.format_counts.values()) == N
    # nothing broken or out of scope is listed
    assert not any(row["file"].startswith(("broken/", "out_of_scope/")) for row in rows)


def test_formats_are_mixed_and_spread_over_the_classes(cohort):
    rows = _rows(cohort)
    n_dicom = sum(row["format"] == "dicom" for row in rows)
    assert 0.25 <= n_dicom / N <= 0.4
    for label in CLASSES:
        in_class = [row for row in rows if row["label"] == label]
        assert sum(row["format"] == "dicom" for row in in_class) == n_dicom // len(CLASSES)
    assert cohort.format_counts.get("png16", 0) >= 1 and cohort.format_counts.get("png8", 0) >= 1


def test_some_patients_have_a_follow_up_with_the_same_label(cohort):
    by_patient: dict[str, list[dict[str, str]]] = {}
    for row in _rows(cohort):
        by_patient.setdefault(row["patient_id"], []).append(row)
    assert all(len({row["label"] for row in studies}) == 1 for studies in by_patient.values())
    follow_ups = {studies[0]["label"] for studies in by_patient.values() if len(studies) == 2}
    assert follow_ups == set(CLASSES)  # the first patient of every class has two studies
    assert cohort.n_patients == len(by_patient) < N


def test_refuses_a_non_empty_folder_unless_told(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_demo_cohort(tmp_path, n=3, size=64)
    write_demo_cohort(tmp_path, n=3, size=64, overwrite=True)
    write_demo_cohort(tmp_path, n=6, size=64, overwrite=True)  # replaces the previous cohort
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert len(_rows(write_demo_cohort(tmp_path, n=6, size=64, overwrite=True))) == 6
    assert sum(1 for label in CLASSES for _ in (tmp_path / label).iterdir()) == 6


# --- reading ---------------------------------------------------------------------------------------------


def test_every_listed_file_reads_in_scope_and_matches_its_phantom(cohort):
    phantoms = dict(render_cohort(N, seed=0, size=SIZE))
    for row in _rows(cohort):
        image = read_xray(cohort.out_dir / row["file"], timeout=None)
        assert image.pixels.shape == (SIZE, SIZE) and image.pixels.dtype == np.float32
        assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
        assert image.meta["format"] == row["format"]
        assert in_scope(image.meta) == (True, "ok" if row["format"] == "dicom" else "no_metadata")
        expected = phantoms[row["file"]].pixels
        if image.meta["transfer_syntax"] == ENCODINGS["jpeg_baseline"]:
            # lossy and shown through the percentile window: the same picture, not the same values
            assert np.corrcoef(image.pixels.ravel(), expected.ravel())[0, 1] > 0.99
        else:  # lossless: only the quantisation of 8 bits (PNG) or 12-16 bits (DICOM) differs
            assert np.abs(image.pixels - expected).max() <= 0.5 / 255 + 1e-6, row["file"]


def test_broken_files_fail_with_the_expected_reasons(cohort):
    folder = cohort.out_dir / "broken"
    assert {f"broken/{p.name}" for p in folder.iterdir()} == {failure.file for failure in cohort.broken}
    reasons = {}
    for failure in cohort.broken:
        with pytest.raises(XRayReadError) as caught:
            read_xray(cohort.out_dir / failure.file, timeout=None)
        assert caught.value.reason == failure.reason, failure.file
        reasons[failure.file] = failure.reason
    assert reasons["broken/truncated.png"] == "truncated"
    assert reasons["broken/truncated.dcm"] == "truncated"
    assert "empty" in reasons.values() and "not_an_image" in reasons.values()


def test_broken_files_fail_in_the_isolated_reader_too(cohort):
    for failure in cohort.broken:
        with pytest.raises(XRayReadError) as caught:
            read_xray(cohort.out_dir / failure.file, timeout=30)
        assert caught.value.reason == failure.reason


def test_out_of_scope_files_read_but_are_out_of_scope(cohort):
    folder = cohort.out_dir / "out_of_scope"
    assert {f"out_of_scope/{p.name}" for p in folder.iterdir()} == {failure.file for failure in cohort.out_of_scope}
    whys = set()
    for failure in cohort.out_of_scope:
        image = read_xray(cohort.out_dir / failure.file, timeout=None)
        assert in_scope(image.meta) == (False, failure.reason)
        whys.add(failure.reason.split(":")[0])
    assert {"lateral_view", "body_part", "modality"} <= whys


# --- DICOM ----------------------------------------------------------------------------------------------


def test_dicoms_cover_every_claimed_transfer_syntax_and_variant(cohort):
    syntaxes, photometrics, bits, rescaled = set(), set(), set(), 0
    for path in _dicoms(cohort):
        ds = pydicom.dcmread(path)
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        photometrics.add(ds.PhotometricInterpretation)
        bits.add(int(ds.BitsStored))
        rescaled += "RescaleSlope" in ds
        assert ds.Modality in ("CR", "DX") and ds.BodyPartExamined == "CHEST" and ds.ViewPosition in ("PA", "AP")
        if ds.BitsStored > 8:
            assert "WindowCenter" in ds and "WindowWidth" in ds
    assert {ENCODINGS[name] for name in COHORT_ENCODINGS} <= syntaxes
    assert len(COHORT_ENCODINGS) >= 6
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    assert bits == {8, 12, 16}
    assert rescaled >= 1


def _regions(pixels: np.ndarray) -> tuple[float, float]:
    """(mediastinum, lung fields) mean brightness in fixed regions of a frontal phantom."""
    size = pixels.shape[0]

    def box(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        span = lambda a, b: slice(int((a + 1) / 2 * size), int((b + 1) / 2 * size))  # noqa: E731
        return pixels[span(y0, y1), span(x0, x1)]

    mediastinum = box(-0.04, 0.04, -0.5, 0.0).mean()
    lungs = np.concatenate([box(-0.6, -0.35, -0.4, 0.1).ravel(), box(0.35, 0.6, -0.4, 0.0).ravel()]).mean()
    return float(mediastinum), float(lungs)


def test_monochrome1_phantoms_are_stored_inverted_and_read_bone_white(cohort):
    checked = 0
    for path in _dicoms(cohort):
        ds = pydicom.dcmread(path)
        if ds.PhotometricInterpretation != "MONOCHROME1":
            continue
        stored = ds.pixel_array.astype(np.float32)
        raw_mediastinum, raw_lungs = _regions(stored / stored.max())
        assert raw_mediastinum < raw_lungs  # stored: dense is dark, as MONOCHROME1 says
        mediastinum, lungs = _regions(read_xray(path, timeout=None).pixels)
        assert mediastinum > lungs + 0.15, path.name  # displayed: bone white
        checked += 1
    assert checked >= 2


def test_monochrome2_phantoms_read_bone_white_too(cohort):
    for row in _rows(cohort):
        mediastinum, lungs = _regions(read_xray(cohort.out_dir / row["file"], timeout=None).pixels)
        assert mediastinum > lungs + 0.15, row["file"]  # over 900 random phantoms: at least 0.24


def test_no_real_looking_identifiers(cohort):
    paths = _dicoms(cohort) + [cohort.out_dir / failure.file for failure in cohort.out_of_scope]
    paths.append(cohort.out_dir / "broken" / "no_pixels.dcm")
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert str(ds.PatientName).startswith("DEMO^PATIENT-")
        assert ds.PatientID.startswith("DEMO-")
        assert "synthetic" in ds.ImageComments.lower() and "not a patient" in ds.ImageComments.lower()
        assert ds.Manufacturer == "CXR Review demo"
        assert ds.BurnedInAnnotation == "NO"
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert uid.is_valid
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID


# --- determinism ---------------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    first = _tree(write_demo_cohort(tmp_path / "a", n=12, seed=3, size=64).out_dir)
    again = _tree(write_demo_cohort(tmp_path / "b", n=12, seed=3, size=64).out_dir)
    other = _tree(write_demo_cohort(tmp_path / "c", n=12, seed=4, size=64).out_dir)
    assert first.keys() == again.keys()
    assert all(first[name] == again[name] for name in first)  # PNG and DICOM, byte for byte
    pngs = [name for name in first if name.endswith(".png") and name in other and not name.startswith("broken/")]
    assert pngs and all(first[name] != other[name] for name in pngs)


# --- the classes are really different ---------------------------------------------------------------------

STATS_N = 60  # phantoms per class
STATS_SIZE = 64


@pytest.fixture(scope="module")
def class_stats() -> dict[str, np.ndarray]:
    """Per phantom: lung brightness (mean of the two lungs' means), |left - right| brightness, and
    from a paired rendering without disease (same anatomy, pose, exposure and noise) the
    brightening of each lung by the disease."""
    stats = {}
    for k, label in enumerate(CLASSES):
        rows = []
        for i in range(STATS_N):
            seed = 1000 * k + i
            rng = np.random.default_rng(seed)
            anatomy, disease = random_anatomy(rng), random_disease(label, rng)
            sick = render_phantom(label, size=STATS_SIZE, rng=seed + 500, anatomy=anatomy, disease=disease)
            clean = render_phantom(label, size=STATS_SIZE, rng=seed + 500, anatomy=anatomy, disease=Disease("normal"))
            left, right = sick.pixels[sick.lung_left].mean(), sick.pixels[sick.lung_right].mean()
            delta = sick.pixels - clean.pixels
            rows.append(
                ((left + right) / 2, abs(left - right), delta[sick.lung_left].mean(), delta[sick.lung_right].mean())
            )
        stats[label] = np.array(rows)
    return stats


def test_diseased_lungs_are_brighter_than_normal_ones_on_average(class_stats):
    # Independent phantoms, so anatomy and exposure vary too. Measured with these seeds: normal 0.461,
    # covid 0.538, pneumonia 0.487, each with SD about 0.07 (standard error of a difference 0.013).
    normal = class_stats["normal"][:, 0].mean()
    assert class_stats["covid"][:, 0].mean() > normal + 0.03
    assert class_stats["pneumonia"][:, 0].mean() > normal + 0.01


def test_pneumonia_is_more_asymmetric_than_covid(class_stats):
    # measured mean |left - right|: normal 0.009, covid 0.018, pneumonia 0.057
    asymmetry = {label: class_stats[label][:, 1].mean() for label in CLASSES}
    assert asymmetry["pneumonia"] > 2 * asymmetry["covid"]
    assert asymmetry["covid"] > asymmetry["normal"]


def test_disease_brightens_the_lungs_covid_both_pneumonia_one(class_stats):
    left, right = class_stats["normal"][:, 2], class_stats["normal"][:, 3]
    assert np.all(left == 0) and np.all(right == 0)
    covid = class_stats["covid"]
    assert np.all(np.minimum(covid[:, 2], covid[:, 3]) > 0.005)  # every covid phantom, both lungs: min 0.012
    assert covid[:, 2:].mean() > 0.04  # measured 0.058
    pneumonia = class_stats["pneumonia"]
    brighter, other = np.maximum(pneumonia[:, 2], pneumonia[:, 3]), np.minimum(pneumonia[:, 2], pneumonia[:, 3])
    assert np.all(brighter > 0.005)  # the mildest measured 0.0074 (a small patch, averaged over the lung)
    assert np.all(np.abs(other) < 1e-6)  # one lung only (measured at most 1e-7: float rounding)
    assert brighter.mean() > 0.04  # measured 0.059


def test_covid_opacities_are_peripheral_and_basal():
    lower = upper = lateral = medial = 0.0
    for seed in range(10):
        phantom = render_phantom("covid", size=STATS_SIZE, rng=seed)
        for mask in (phantom.lung_left, phantom.lung_right):
            rows, cols = np.nonzero(mask)
            mid_row = (rows.min() + rows.max()) / 2
            mid_col = (cols.min() + cols.max()) / 2
            values = phantom.opacity[rows, cols]
            lower += values[rows > mid_row].mean()
            upper += values[rows <= mid_row].mean()
            outward = cols < mid_col if mask is phantom.lung_left else cols > mid_col
            lateral += values[outward].mean()
            medial += values[~outward].mean()
    assert lower > 2 * upper  # measured 3.0 times
    assert lateral > 2 * medial  # measured 4.1 times


def test_normal_phantoms_have_no_opacity():
    for seed in range(5):
        assert not render_phantom("normal", size=STATS_SIZE, rng=seed).opacity.any()


def test_render_rejects_unknown_labels_and_tiny_sizes():
    with pytest.raises(ValueError):
        render_phantom("tuberculosis", size=64, rng=0)
    with pytest.raises(ValueError):
        render_phantom("normal", size=8, rng=0)
