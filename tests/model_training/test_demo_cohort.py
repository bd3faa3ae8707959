"""The synthetic demo cohort: layout, readability, failures, DICOM variety, determinism and no PHI."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from model_training.demo_cohort import COHORT_ENCODINGS, DemoCohort, render_cohort, write_demo_cohort
from model_training.phantoms import CLASSES
from scoring.dicom_encoding import ENCODINGS
from scoring.imaging import XRayReadError, in_scope, read_xray

N = 36  # 12 per class: more than one round of the 7 DICOM styles
SIZE = 128


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> DemoCohort:
    return write_demo_cohort(tmp_path_factory.mktemp("demo") / "cohort", n=N, seed=0, size=SIZE)


def _rows(cohort: DemoCohort) -> list[dict[str, str]]:
    with open(cohort.out_dir / "labels.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _dicoms(cohort: DemoCohort) -> list[Path]:
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
