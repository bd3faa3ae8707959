"""One bad file never stops the nightly job: it becomes that file's recorded failure, the rest of its batch is
stored, reruns leave it alone, and a run that dies anyway exits 2 (never 1, which means "some files failed")."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pydicom
import pytest
import torch
from sqlalchemy import func, select

from db import results
from db.engine import create_database_engine, read_session
from db.models import Image, Prediction, ScoringFailure, ScoringRun
from scoring import cli, pipeline
from scoring.imaging import INVALID_PIXELS

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
