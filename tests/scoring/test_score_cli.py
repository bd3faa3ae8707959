"""End to end: cxr-score over real PNGs and DICOMs, out-of-scope DICOMs and broken files."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select

from db.engine import create_database_engine, read_session
from db.models import Image, ImageFile, ModelVersion, Prediction, ScoringFailure, ScoringRun
from scoring import cli
from scoring.imaging import TEST_DELAY_ENV, read_xray
from scoring.lock import RunLock
from scoring.model import calibrated_probabilities, load_checkpoint

N_PNGS = 24
IN_SCOPE_DICOMS = ["RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"]
OUT_OF_SCOPE_DICOMS = {"RG3_UNCR.dcm": "body_part", "693_UNCR.dcm": "modality", "MR2_UNCR.dcm": "modality"}
BROKEN = {"empty.png": b"", "notes.dcm": b"this is text, not an image\n" * 10,
          "random.jpg": os.urandom(4096)}


@pytest.fixture
def corpus(tmp_path, cxr_dev, dicom_dir, pydicom_data) -> Path:
    root = tmp_path / "incoming"
    (root / "png").mkdir(parents=True)
    pngs = sorted(cxr_dev.glob("*/*.png"))[:N_PNGS]
    for png in pngs:
        shutil.copy2(png, root / "png" / png.name)
    (root / "dicom").mkdir()
    for dcm in dicom_dir.glob("*.dcm"):
        shutil.copy2(dcm, root / "dicom" / dcm.name)
    for name in [*IN_SCOPE_DICOMS, *OUT_OF_SCOPE_DICOMS]:
        shutil.copy2(pydicom_data(name), root / "dicom" / name)
    (root / "broken").mkdir()
    for name, content in BROKEN.items():
        (root / "broken" / name).write_bytes(content)
    truncated = pngs[0].read_bytes()
    (root / "broken" / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    (root / "png" / ".hidden.png").write_bytes(truncated)  # hidden: ignored
    (root / "png" / "copying.png.part").write_bytes(truncated)  # partial: ignored
    (root / "dicom" / "loop").symlink_to(root)  # a link loop must not recurse forever
    return root


N_BROKEN = len(BROKEN) + 1
N_IN_SCOPE = N_PNGS + 2 + len(IN_SCOPE_DICOMS)  # the two shared DICOMs differ in bytes
N_FILES = N_IN_SCOPE + len(OUT_OF_SCOPE_DICOMS) + N_BROKEN


def score(capsys, db_url, checkpoint, *paths, extra=()) -> tuple[int, dict]:
    code = cli.main(["--db", db_url, "--model", str(checkpoint), "--json", "--settle-seconds", "0",
                     "--batch-size", "8", "--workers", "1", *extra, *map(str, paths)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["exit_code"] == code
    return code, summary


def counts(summary: dict) -> dict:
    keys = ["scanned", "scored", "skipped", "out_of_scope", "failed", "known_failures"]
    return {key: summary[key] for key in keys}


def test_first_run_second_run_and_a_copy(capsys, sqlite_url, tiny_checkpoint, corpus):
    code, first = score(capsys, sqlite_url, tiny_checkpoint, corpus)
    assert code == 1  # finished, but some files failed
    assert counts(first) == {"scanned": N_FILES, "scored": N_IN_SCOPE, "skipped": 0,
                             "out_of_scope": len(OUT_OF_SCOPE_DICOMS), "failed": N_BROKEN, "known_failures": 0}

    code, second = score(capsys, sqlite_url, tiny_checkpoint, corpus)
    assert code == 0
    assert counts(second) == {"scanned": N_FILES, "scored": 0, "skipped": N_IN_SCOPE,
                              "out_of_scope": len(OUT_OF_SCOPE_DICOMS), "failed": 0, "known_failures": N_BROKEN}

    shutil.copy2(corpus / "dicom" / "RG1_UNCR.dcm", corpus / "copy-of-rg1.dcm")
    code, third = score(capsys, sqlite_url, tiny_checkpoint, corpus)
    assert (code, third["scored"], third["skipped"]) == (0, 0, N_IN_SCOPE + 1)

    engine = create_database_engine(sqlite_url)
    with read_session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == N_IN_SCOPE
        assert session.scalar(select(func.count()).select_from(ScoringFailure)) == N_BROKEN
        copy = session.scalar(select(ImageFile).where(ImageFile.path.like("%copy-of-rg1.dcm")))
        original = session.scalar(select(ImageFile).where(ImageFile.path.like("%dicom/RG1_UNCR.dcm")))
        assert copy.image_id == original.image_id
        assert [r.status for r in session.scalars(select(ScoringRun).order_by(ScoringRun.id))] == ["finished"] * 3


def test_what_is_stored(capsys, sqlite_url, tiny_checkpoint, corpus):
    score(capsys, sqlite_url, tiny_checkpoint, corpus)
    engine = create_database_engine(sqlite_url)
    with read_session(engine) as session:
        rg1 = session.scalar(select(Image).join(ImageFile).where(ImageFile.path.like("%RG1_UNCR.dcm")))
        assert (rg1.modality, rg1.body_part, rg1.photometric, rg1.in_scope) == ("CR", "CHEST", "MONOCHROME1", True)
        assert rg1.rows == 1955 and rg1.cols == 1841
        extremity = session.scalar(select(Image).join(ImageFile).where(ImageFile.path.like("%RG3_UNCR.dcm")))
        assert extremity.in_scope is False and "EXTREMITY" in extremity.scope_reason
        assert session.scalar(select(func.count()).select_from(Prediction)
                              .where(Prediction.image_id == extremity.id)) == 0
        reasons = {Path(f.path).name: f.reason for f in session.scalars(select(ScoringFailure))}
        assert reasons == {"empty.png": "empty", "notes.dcm": "not_an_image", "random.jpg": "not_an_image",
                           "truncated.png": "truncated"}
        version = session.scalar(select(ModelVersion))
        assert version.is_synthetic and not version.is_active and version.name == "tiny-test"
        prediction = session.scalar(select(Prediction).where(Prediction.image_id == rg1.id))

    checkpoint = load_checkpoint(tiny_checkpoint)
    with torch.inference_mode():
        # the scorer reads at twice the model input side (a reduced decode), so the reference does too
        pixels = read_xray(rg1.path, min_side=2 * checkpoint.input_size).pixels
        logits = checkpoint.build()(checkpoint.preprocessing(pixels)[None])
    expected = calibrated_probabilities(logits, 1.3)[0]
    assert list(prediction.probabilities) == checkpoint.classes
    assert [prediction.probabilities[c] for c in checkpoint.classes] == pytest.approx(expected.tolist(), abs=1e-4)
    assert prediction.confidence == pytest.approx(float(expected.max()), abs=1e-4)
    assert prediction.predicted_class == checkpoint.classes[int(expected.argmax())]
    assert 0.0 <= prediction.entropy <= 1.0


def test_changed_content_at_a_known_path_is_a_new_image(capsys, sqlite_url, tiny_checkpoint, corpus, cxr_dev):
    score(capsys, sqlite_url, tiny_checkpoint, corpus / "png")
    target = sorted((corpus / "png").glob("[!.]*.png"))[0]
    replacement = sorted(cxr_dev.glob("*/*.png"))[-1]
    shutil.copyfile(replacement, target)
    code, summary = score(capsys, sqlite_url, tiny_checkpoint, corpus / "png")
    assert (code, summary["scored"], summary["skipped"]) == (0, 1, N_PNGS - 1)
    engine = create_database_engine(sqlite_url)
    with read_session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == N_PNGS + 1  # old one stays
        assert session.scalar(select(func.count()).select_from(ImageFile)) == N_PNGS


def test_fresh_files_are_left_for_the_next_run(capsys, sqlite_url, tiny_checkpoint, corpus):
    two_hours_ago = time.time() - 7200
    for png in (corpus / "png").glob("*.png"):
        os.utime(png, (two_hours_ago, two_hours_ago))
    (corpus / "png" / "just-arrived.png").write_bytes((corpus / "broken" / "truncated.png").read_bytes())
    code, summary = score(capsys, sqlite_url, tiny_checkpoint, corpus / "png",
                          extra=["--settle-seconds", "3600"])
    assert (code, summary["deferred"], summary["scanned"], summary["scored"]) == (0, 1, N_PNGS, N_PNGS)


def test_files_dated_in_the_future_are_scored_once_settled_and_counted(capsys, sqlite_url, tiny_checkpoint,
                                                                        tmp_path, cxr_dev, caplog):
    """A file dated 2099 was deferred every night, exit 0, forever. Now: one untouched since it got that date is
    scored; one that got it just now (a copy that kept the timestamp) waits one run; both are counted and logged."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    pngs = sorted(cxr_dev.glob("*/*.png"))[:3]
    for png in pngs:
        shutil.copy2(png, folder / png.name)  # old mtimes
    year_2099 = 4070908800
    os.utime(folder / pngs[1].name, (year_2099, year_2099))
    time.sleep(1.5)  # past the settle time below
    os.utime(folder / pngs[2].name, (year_2099, year_2099))  # just now
    code, first = score(capsys, sqlite_url, tiny_checkpoint, folder, extra=["--settle-seconds", "1"])
    assert (code, first["scanned"], first["scored"], first["deferred"]) == (0, 2, 2, 1)
    assert first["future_mtime"] == 2
    assert "2 files are dated in the future" in caplog.text and "1 of them left for the next run" in caplog.text
    assert pngs[1].name not in caplog.text and str(folder) not in caplog.text
    time.sleep(1.5)
    code, second = score(capsys, sqlite_url, tiny_checkpoint, folder, extra=["--settle-seconds", "1"])
    assert (code, second["scanned"], second["scored"], second["skipped"], second["deferred"]) == (0, 3, 1, 2, 0)
    assert second["future_mtime"] == 2  # a note on files counted above: scanned stays the sum the README gives
    assert second["scanned"] == sum(counts(second).values()) - second["scanned"]


@pytest.mark.parametrize("study_date, stored", [
    ("20240131", dt.date(2024, 1, 31)),
    ("2024.01.31", dt.date(2024, 1, 31)),  # ACR-NEMA's form, which PS3.5 asks readers to accept
    ("2026120", None),  # seven digits: strptime made it 2026-01-20
    ("20240230", None),  # no such day
    ("20240131120000", None),  # a DT value, not a DA
    ("", None),  # absent: stored as NULL, but not counted as refused
])
def test_study_dates_are_stored_only_when_they_are_valid_dicom_dates(capsys, sqlite_url, tiny_checkpoint, tmp_path,
                                                                     dicom_factory, source_pixels, caplog,
                                                                     study_date, stored):
    dicom_factory("study.dcm", source_pixels, StudyDate=study_date)
    code, summary = score(capsys, sqlite_url, tiny_checkpoint, tmp_path / "study.dcm")
    refused = study_date != "" and stored is None
    with read_session(create_database_engine(sqlite_url)) as session:
        assert session.scalar(select(Image.study_date)) == stored
    assert (code, summary["scored"], summary["invalid_study_date"]) == (0, 1, int(refused))
    ours = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("cxr"))
    assert ("1 images have a StudyDate that is not a valid DICOM date" in ours) == refused
    assert not study_date or study_date not in ours  # (pydicom's warning as this test writes the file quotes it)


def test_a_single_file_path_works(capsys, sqlite_url, tiny_checkpoint, corpus):
    code, summary = score(capsys, sqlite_url, tiny_checkpoint, corpus / "dicom" / "RG1_J2KI.dcm")
    assert (code, summary["scanned"], summary["scored"]) == (0, 1, 1)


def test_without_a_model_it_cannot_run(capsys, sqlite_url, corpus, caplog):
    code = cli.main(["--db", sqlite_url, "--json", str(corpus)])
    assert code == 2
    assert "no active model version" in caplog.text


def test_a_missing_checkpoint_cannot_run(capsys, sqlite_url, corpus, tmp_path):
    assert cli.main(["--db", sqlite_url, "--model", str(tmp_path / "nope.pt"), str(corpus)]) == 2


def test_a_missing_folder_cannot_run(capsys, sqlite_url, tiny_checkpoint, tmp_path, caplog):
    assert cli.main(["--db", sqlite_url, "--model", str(tiny_checkpoint), str(tmp_path / "not-mounted")]) == 2
    assert "cannot scan" in caplog.text


def test_a_held_lock_exits_75_at_once(sqlite_url, tiny_checkpoint, corpus):
    engine = create_database_engine(sqlite_url)
    with RunLock(engine):
        result = subprocess.run([sys.executable, "-m", "scoring", "--db", sqlite_url, "--model",
                                 str(tiny_checkpoint), "--json", str(corpus)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 75, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["exit_code"] == 75


@pytest.mark.slow
def test_two_runs_started_together(sqlite_url, tiny_checkpoint, corpus):
    command = [sys.executable, "-m", "scoring", "--db", sqlite_url, "--model", str(tiny_checkpoint),
               "--settle-seconds", "0", "--json", str(corpus)]
    # Slow reads keep whichever run wins the lock busy long enough for the other to find it held.
    env = {**os.environ, TEST_DELAY_ENV: "0.2"}
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    codes = sorted(run.wait(timeout=300) for run in runs)
    assert codes == [1, 75]  # one scores (and meets the broken files), the other steps aside


def test_logs_carry_no_paths(capsys, sqlite_url, tiny_checkpoint, corpus, caplog):
    score(capsys, sqlite_url, tiny_checkpoint, corpus)
    assert "RG1_UNCR" not in caplog.text and "truncated.png" not in caplog.text
    assert str(corpus) not in caplog.text


def test_fp16_on_the_cpu_is_refused_before_a_run_starts(capsys, sqlite_url, tiny_checkpoint, corpus, caplog):
    code, summary = score(capsys, sqlite_url, tiny_checkpoint, corpus, extra=["--precision", "fp16",
                                                                              "--device", "cpu"])
    assert code == 2 and summary["run_id"] is None
    assert "fp16" in caplog.text


def test_a_short_pseudonym_key_is_refused_before_a_run_starts(capsys, sqlite_url, tiny_checkpoint, corpus, caplog,
                                                             monkeypatch):
    monkeypatch.setenv("CXR_PSEUDONYM_KEY", "00")
    code, summary = score(capsys, sqlite_url, tiny_checkpoint, corpus)
    assert code == 2 and summary["run_id"] is None
    assert "CXR_PSEUDONYM_KEY holds a key of 1 bytes" in caplog.text


@pytest.mark.parametrize("where", ["missing_folder", "a_folder"])
def test_a_log_file_that_cannot_be_opened_is_exit_2_and_one_line(tmp_path, tiny_checkpoint, where):
    """Exit 1 means "finished, some files failed": a run that cannot open its --log-file must not say that,
    nor print a traceback. A separate process, so that stderr is exactly what a cron mail would show."""
    log_file = "/proc/nonexistent/x.log" if where == "missing_folder" else str(tmp_path)
    db_path = tmp_path / "cxr.db"
    result = subprocess.run([sys.executable, "-m", "scoring", "--db", f"sqlite:///{db_path}", "--model",
                             str(tiny_checkpoint), "--log-file", log_file, "--json", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and " ERROR " in lines[0] and log_file in lines[0], result.stderr
    assert not db_path.exists()  # refused before anything was touched
