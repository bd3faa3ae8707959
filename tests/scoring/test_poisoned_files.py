"""One bad file never stops the nightly job: it becomes that file's recorded failure, the rest of its batch is
stored, reruns leave it alone, and a run that dies anyway exits 2 (never 1, which means "some files failed")."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import func, select

from db import results
from db.engine import create_database_engine, read_session
from db.models import Image, Prediction, ScoringFailure, ScoringRun
from scoring import cli, pipeline
from scoring.imaging import INVALID_PIXELS, REASONS, XRayReadError, read_xray

N_GOOD = 10


@pytest.fixture
def folder(tmp_path, cxr_dev, dicom_dir) -> Path:
    """The issue's repro: the shared CR film with Rescale Slope 1e38 beside ten good PNGs, two hours old."""
    root = tmp_path / "incoming"
    root.mkdir()
    for png in sorted(cxr_dev.glob("*/*.png"))[:N_GOOD]:
        shutil.copy2(png, root / png.name)
    ds = pydicom.dcmread(next(dicom_dir.glob("1.2.276.*.dcm")))
    ds.RescaleSlope, ds.RescaleIntercept = "1e38", "0"
    ds.save_as(root / "poisoned.dcm")
    two_hours_ago = time.time() - 7200
    for path in root.iterdir():
        os.utime(path, (two_hours_ago, two_hours_ago))
    return root


def run(capsys, db_url, checkpoint, folder, *extra) -> tuple[int, dict]:
    # batch 32: the poisoned file shares its batch with every good one
    code = cli.main(["--db", db_url, "--model", str(checkpoint), "--json", "--batch-size", "32", "--workers", "0",
                     *extra, str(folder)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["exit_code"] == code
    return code, summary


def stored(db_url) -> tuple[int, dict[str, str], list[str]]:
    engine = create_database_engine(db_url)
    with read_session(engine) as session:
        predictions = session.scalar(select(func.count()).select_from(Prediction))
        failures = {Path(f.path).name: f.reason for f in session.scalars(select(ScoringFailure))}
        statuses = list(session.scalars(select(ScoringRun.status).order_by(ScoringRun.id)))
    engine.dispose()
    return predictions, failures, statuses


def test_a_poisoned_dicom_fails_alone_and_reruns_leave_it(capsys, db_url, tiny_checkpoint, folder):
    code, first = run(capsys, db_url, tiny_checkpoint, folder)
    assert (code, first["scored"], first["failed"]) == (1, N_GOOD, 1)
    assert stored(db_url) == (N_GOOD, {"poisoned.dcm": INVALID_PIXELS}, ["finished"])

    code, second = run(capsys, db_url, tiny_checkpoint, folder)
    assert (code, second["scored"], second["skipped"], second["known_failures"]) == (0, 0, N_GOOD, 1)


def test_non_finite_probabilities_are_that_image_s_failure(capsys, sqlite_url, tiny_checkpoint, folder,
                                                           monkeypatch):
    """Defence in depth behind the reader: whatever gives the model NaN, the NOT NULL columns never see it."""
    (folder / "poisoned.dcm").unlink()
    real = pipeline.Scorer.probabilities

    def first_row_nan(self, batch):
        rows = real(self, batch).clone()  # an inference tensor cannot be changed in place
        rows[0] = float("nan")
        return rows

    monkeypatch.setattr(pipeline.Scorer, "probabilities", first_row_nan)
    code, summary = run(capsys, sqlite_url, tiny_checkpoint, folder)
    assert (code, summary["scored"], summary["failed"]) == (1, N_GOOD - 1, 1)
    predictions, failures, _ = stored(sqlite_url)
    assert predictions == N_GOOD - 1 and list(failures.values()) == [pipeline.INVALID_SCORE]


def test_an_exception_writing_one_image_keeps_the_rest_of_the_batch(capsys, db_url, tiny_checkpoint, folder,
                                                                   monkeypatch):
    (folder / "poisoned.dcm").unlink()
    real = results.add_predictions  # one statement per batch: it fails if the victim's row is in it
    victim: list[str] = []  # the content hash of the first image written: ids are reused after a rollback

    def fail_for_one_image(session, model_version_id, run_id, scores):
        shas = [session.get(Image, image_id).sha256 for image_id, _ in scores]
        victim[:1] = victim or shas[:1]
        if victim[0] in shas:
            raise RuntimeError("injected: the driver refused this row")
        real(session, model_version_id, run_id, scores)

    monkeypatch.setattr(results, "add_predictions", fail_for_one_image)
    code, summary = run(capsys, db_url, tiny_checkpoint, folder)
    assert (code, summary["scored"], summary["failed"]) == (1, N_GOOD - 1, 1)
    predictions, failures, statuses = stored(db_url)
    assert predictions == N_GOOD - 1
    assert list(failures.values()) == [pipeline.WRITE_FAILED]
    assert statuses == ["finished"]

    monkeypatch.setattr(results, "add_predictions", real)
    code, rerun = run(capsys, db_url, tiny_checkpoint, folder)  # unchanged: not retried ...
    assert (code, rerun["known_failures"], rerun["scored"]) == (0, 1, 0)
    code, retried = run(capsys, db_url, tiny_checkpoint, folder, "--retry-failed")  # ... unless asked
    assert (code, retried["scored"], retried["failed"]) == (0, 1, 0)


def test_a_model_that_raises_on_a_batch_scores_image_by_image(capsys, sqlite_url, tiny_checkpoint, folder,
                                                             monkeypatch):
    (folder / "poisoned.dcm").unlink()
    real = pipeline.Scorer.probabilities

    def out_of_memory_on_batches(self, batch):
        if len(batch) > 1:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        return real(self, batch)

    monkeypatch.setattr(pipeline.Scorer, "probabilities", out_of_memory_on_batches)
    code, summary = run(capsys, sqlite_url, tiny_checkpoint, folder)
    assert (code, summary["scored"], summary["failed"]) == (0, N_GOOD, 0)


def test_a_run_that_dies_anyway_exits_2_with_one_line(capsys, sqlite_url, tiny_checkpoint, folder, monkeypatch,
                                                     caplog):
    def explode(*args, **kwargs):
        raise RuntimeError("injected failure\nwith a second line that must not be logged")

    monkeypatch.setattr(pipeline, "score", explode)
    code, summary = run(capsys, sqlite_url, tiny_checkpoint, folder)
    assert code == 2 and summary["run_id"] is not None
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "RuntimeError: injected failure" in errors[0]
    assert "second line" not in caplog.text
    assert stored(sqlite_url)[2] == ["failed"]


# --- hostile Modality LUT Sequences -------------------------------------------------------------------------

def modality_lut(descriptor: list[int] | None, data: list[int] | bytes | None, *, data_vr: str = "US",
                 descriptor_vr: str = "US") -> Dataset:
    """One Modality LUT Sequence item, written as given (LUT Descriptor: entries, first mapped value, bits)."""
    item = Dataset()
    if descriptor is not None:
        item.LUTDescriptor = descriptor
        item["LUTDescriptor"].VR = descriptor_vr
    if data is not None:
        item.LUTData = data
        item["LUTData"].VR = data_vr
    item.ModalityLUTType = "US"
    return item


RAMP_LUT = list(range(4096))
HOSTILE_MODALITY_LUTS = {
    "entries_0": [modality_lut([0, 0, 16], RAMP_LUT)],  # 0 means 65536 entries (PS3.3 C.11.1.1)
    "entries_0_short_data": [modality_lut([0, 0, 16], RAMP_LUT[:10])],
    "entries_huge_short_data": [modality_lut([65535, 0, 16], RAMP_LUT[:10])],
    "one_entry": [modality_lut([1, 0, 16], [5])],
    "bits_0": [modality_lut([4096, 0, 0], RAMP_LUT)],
    "bits_1": [modality_lut([4096, 0, 1], RAMP_LUT)],
    "bits_40": [modality_lut([4096, 0, 40], RAMP_LUT)],
    "empty_data": [modality_lut([4096, 0, 16], [])],
    "short_data": [modality_lut([4096, 0, 16], RAMP_LUT[:10])],
    "odd_byte_data": [modality_lut([4096, 0, 16], b"\x01\x02\x03", data_vr="OW")],
    "no_data": [modality_lut([4096, 0, 16], None)],
    "no_descriptor": [modality_lut(None, RAMP_LUT)],
    "short_descriptor": [modality_lut([4096, 0], RAMP_LUT)],
    "first_mapped_beyond_the_pixels": [modality_lut([4096, 65535, 16], RAMP_LUT)],
    "first_mapped_negative": [modality_lut([4096, -5000, 16], RAMP_LUT, descriptor_vr="SS")],
    "all_maximum": [modality_lut([4096, 0, 16], [65535] * 4096)],
    "empty_item": [Dataset()],
    "empty_sequence": [],
}
# The sequence takes precedence over Rescale Slope/Intercept; with it broken, a NaN or huge slope must not
# come back through another path.
RESCALES = {"no_rescale": {}, "nan_slope": {"RescaleSlope": "NaN", "RescaleIntercept": "0"},
            "huge_slope": {"RescaleSlope": "1e38", "RescaleIntercept": "-1e308"}}


@pytest.mark.parametrize("rescale", list(RESCALES))
@pytest.mark.parametrize("lut", list(HOSTILE_MODALITY_LUTS))
def test_a_hostile_modality_lut_sequence_reads_in_range_or_fails_typed(dicom_factory, lut, rescale):
    """Finite pixels in [0, 1], or an XRayReadError with a known reason: never NaN, never another exception,
    whether read in this process or in the isolated reader."""
    ramp = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the NaN while writing it
        path = dicom_factory(f"{lut}-{rescale}.dcm", ramp, ModalityLUTSequence=HOSTILE_MODALITY_LUTS[lut],
                             **RESCALES[rescale])
    for timeout in (None, 30):
        try:
            pixels = read_xray(path, timeout=timeout).pixels
        except XRayReadError as exc:
            assert exc.reason in REASONS, (timeout, exc.reason)
            continue
        assert pixels.dtype == np.float32 and pixels.shape == ramp.shape, timeout
        assert np.isfinite(pixels).all() and 0.0 <= pixels.min() <= pixels.max() <= 1.0, timeout


# --- patient data, end to end ---------------------------------------------------------------------------------

CANARY = "CANARY^E2E^5519"
CANARY_PARTS = ("CANARY", "E2E^5519")  # what could remain after PN parsing or splitting
IDENTIFYING = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientAge", "PatientAddress",
               "PatientComments", "InstitutionName", "ReferringPhysicianName", "OperatorsName", "AccessionNumber",
               "StudyID", "StationName", "DeviceSerialNumber", "StudyDescription", "SeriesDescription")


def raw_element(ds: Dataset, keyword: str, value: str, vr: str | None = None) -> None:
    """Stored byte for byte (pydicom checks nothing on writing it); ``vr`` other than the dictionary's makes
    pydicom's validation quote the value when the reader touches it."""
    data = value.encode("latin-1")
    data += b" " * (len(data) % 2)
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr or dictionary_VR(tag), len(data), data, 0, False, True)


def with_canary(path: Path, change=None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        for index, keyword in enumerate(IDENTIFYING):
            raw_element(ds, keyword, CANARY, "IS" if index % 2 == 0 else None)
        if change is not None:
            change(ds)
        ds.save_as(path)
    return path


def test_a_broken_dicom_s_patient_data_reaches_no_log_and_no_stored_field(capsys, caplog, sqlite_url, tmp_path,
                                                                           tiny_checkpoint, dicom_factory):
    """Three broken DICOMs with a canary in every identifying tag (half of them with a VR that makes pydicom
    quote the value): scored by cxr-score at DEBUG, each is a scoring_failures row, and the canary is in no
    column of any table, not in stderr, the --log-file, the log records or the JSON summary."""
    ramp = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    folder = tmp_path / "incoming"
    folder.mkdir()
    cut = with_canary(dicom_factory("cut.dcm", ramp))
    cut.write_bytes(cut.read_bytes()[:-3000])
    with_canary(dicom_factory("nan.dcm", ramp, RescaleIntercept="0"),
                lambda ds: raw_element(ds, "RescaleSlope", "NaN"))
    with_canary(dicom_factory("ts.dcm", ramp),
                lambda ds: raw_element(ds.file_meta, "TransferSyntaxUID", CANARY + " "))
    for name in ("cut.dcm", "nan.dcm", "ts.dcm"):
        (folder / name).write_bytes((tmp_path / name).read_bytes())
    log_file = tmp_path / "score.log"
    caplog.clear()  # pydicom logs the canary while this test writes the files: only the run's records count
    capsys.readouterr()
    caplog.set_level(logging.DEBUG)
    code = cli.main(["--db", sqlite_url, "--model", str(tiny_checkpoint), "--json", "--workers", "0",
                     "--settle-seconds", "0", "--log-file", str(log_file), "-v", str(folder)])
    out, err = capsys.readouterr()
    assert code == 1 and json.loads(out.splitlines()[-1])["failed"] == 3

    engine = create_database_engine(sqlite_url)
    with read_session(engine) as session:
        failures = list(session.scalars(select(ScoringFailure)))
        reasons = {Path(f.path).name: f.reason for f in failures}
        assert all(Path(f.path).name in f.message for f in failures)  # the messages say something, checked below
    with engine.connect() as connection:
        stored = [str(row) for table in sorted(connection.dialect.get_table_names(connection))
                  for row in connection.exec_driver_sql(f'SELECT * FROM "{table}"')]
    engine.dispose()
    assert reasons == {"cut.dcm": "truncated", "nan.dcm": INVALID_PIXELS, "ts.dcm": "unsupported_transfer_syntax"}
    places = {"stderr": err, "stdout": out, "log file": log_file.read_text(), "log records": caplog.text,
              "database": "\n".join(stored)}
    for where, text in places.items():
        assert not any(part.lower() in text.lower() for part in CANARY_PARTS), where
