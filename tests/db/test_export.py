"""Flagged-case export: contents, formula neutralisation, round trips, and no patient data."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import pty
import re
import resource
import shutil
import stat
import subprocess
import sys
import tty
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select

from db import export
from db.engine import create_database_engine, read_session, write_session
from db.models import Image, ModelVersion, Prediction, Reviewer
from db.reviews import add_review, flagged_cases
from scoring import cli

FAKE_PHI = {"PatientName": "Doe^Jane", "PatientID": "MRN-0042-7731", "PatientBirthDate": "19610203",
            "InstitutionName": "St Example Hospital", "ReferringPhysicianName": "Who^Doctor"}
NASTY_COMMENTS = ['=HYPERLINK("http://evil.example","click")', "+1 looks fine", "-2 ribs", "@SUM(A1:A9)",
                  "\tindented", "\rcarriage", 'quoted "text", with comma', "two\nlines",
                  '\n=HYPERLINK("http://evil.example")', "\ufeff@SUM(A1)", "\u202e=1+1"]


def write_phi_dicom(png, path, index: int) -> None:
    pixels = np.asarray(PILImage.open(png).convert("L"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    for key, value in FAKE_PHI.items():
        setattr(ds, key, value)
    ds.PatientID = f"{FAKE_PHI['PatientID']}-{index}"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.StudyDate = "20240117"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def reviewed_db(tmp_path, sqlite_url, cxr_dev, tiny_checkpoint, capsys):
    folder = tmp_path / "phi"
    folder.mkdir()
    for i, png in enumerate(sorted(cxr_dev.glob("*/*.png"))[:len(NASTY_COMMENTS) + 2]):
        write_phi_dicom(png, folder / f"{i:02d}.dcm", i)
    assert cli.main(["--db", sqlite_url, "--model", str(tiny_checkpoint), "--settle-seconds", "0",
                     "--workers", "0", str(folder)]) == 0
    engine = create_database_engine(sqlite_url)
    with write_session(engine) as session:
        reviewer = Reviewer(username="rad1", role="reviewer", password_hash="x")
        session.add(reviewer)
        session.flush()
        predictions = session.scalars(select(Prediction).order_by(Prediction.id)).all()
        for prediction, comment in zip(predictions, NASTY_COMMENTS, strict=False):
            add_review(session, image_id=prediction.image_id, reviewer_id=reviewer.id, label="pneumonia",
                       prediction_id=prediction.id, flagged_for_retraining=True, comment=comment)
        # superseded: flagged first, then a later review that is not flagged -> not exported
        last = predictions[-1]
        add_review(session, image_id=last.image_id, reviewer_id=reviewer.id, label="covid",
                   prediction_id=last.id, flagged_for_retraining=True)
        add_review(session, image_id=last.image_id, reviewer_id=reviewer.id, label="normal",
                   prediction_id=last.id, flagged_for_retraining=False)
    return engine


def test_export_rows_and_round_trip(reviewed_db):
    with read_session(reviewed_db) as session:
        cases = flagged_cases(session)
        images = {image.id: image for image in session.scalars(select(Image))}
    assert len(cases) == len(NASTY_COMMENTS)
    text = export.flagged_csv(cases)
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert list(rows[0]) == [*export.BASE_COLUMNS, "p_covid", "p_normal", "p_pneumonia", *export.REVIEW_COLUMNS]
    for row, case, comment in zip(rows, cases, NASTY_COMMENTS, strict=True):
        assert row["image_sha256"] == images[case.case_id].sha256
        assert row["patient_pseudonym"].startswith("P-")
        assert row["study_date"] == "2024-01-17"
        assert row["reviewer_label"] == "pneumonia" and row["reviewer"] == "rad1"
        assert sum(float(row[f"p_{c}"]) for c in ("covid", "normal", "pneumonia")) == pytest.approx(1, abs=1e-5)
        assert row["comment"] == export.neutralise(comment)
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False)
    assert frame["comment"].tolist() == [export.neutralise(c) for c in NASTY_COMMENTS]


@pytest.mark.parametrize("value, expected", [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@x", "'@x"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("normal", "normal"), ("", ""), (0.25, 0.25), (None, None),
    # a trigger hidden behind what spreadsheets skip or do not show
    (" =1+1", "' =1+1"), ("\n=1+1", "'\n=1+1"), ("\ufeff=HYPERLINK(x)", "'\ufeff=HYPERLINK(x)"),
    ("\u202e=cmd|' /C calc'!A0", "'\u202e=cmd|' /C calc'!A0"), ("\u2066@SUM(A1)", "'\u2066@SUM(A1)"),
    ("\u200b\u00a0+1", "'\u200b\u00a0+1"), ("\uff1d1+1", "'\uff1d1+1"),
    # ... but not ordinary text that merely starts with a space or a mark
    (" normal", " normal"), ("\u200fright-to-left text", "\u200fright-to-left text"), ("   ", "   ")])
def test_neutralise(value, expected):
    assert export.neutralise(value) == expected


def test_no_patient_data_and_no_paths_unless_asked(reviewed_db, tmp_path, sqlite_url, capsys):
    out = tmp_path / "flagged.csv"
    assert export.main(["--db", sqlite_url, "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    # content hashes and pseudonyms are random hex, which can hold "1961" by chance
    without_hex = re.sub(r"\b(P-)?[0-9a-f]{16,64}\b", "", text)
    for value in [*FAKE_PHI.values(), "Doe", "MRN-0042", "1961"]:
        assert value not in without_hex
    assert str(tmp_path) not in text
    assert export.main(["--db", sqlite_url, "--out", "-", "--include-paths"]) == 0
    with_paths = capsys.readouterr().out
    assert str(tmp_path / "phi") in with_paths
    # and nothing identifying reached the database either
    with read_session(reviewed_db) as session:
        stored = json.dumps([{c.name: str(getattr(i, c.name)) for c in Image.__table__.columns}
                             for i in session.scalars(select(Image))])
    for value in FAKE_PHI.values():
        assert value not in stored


def test_since_filters_by_review_time(reviewed_db, sqlite_url, capsys):
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
    assert export.main(["--db", sqlite_url, "--since", tomorrow]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [",".join(export.columns_for([], False, CLASSES))]


# --- the same columns every night ---------------------------------------------------------------------------------

CLASSES = ["covid", "normal", "pneumonia"]


def _add_version(session, classes: list[str], *, active: bool) -> ModelVersion:
    version = ModelVersion(sha256=uuid.uuid4().hex * 2, path="/models/m.pt", architecture="resnet18",
                           classes=classes, input_size=32, preprocessing_hash="p" * 64, is_active=active)
    session.add(version)
    session.flush()
    return version


@pytest.fixture
def flagged_db(sqlite_url):
    """A migrated database with one model version (CLASSES) and a way to add flagged cases to it quickly."""
    from db import migrate

    engine = create_database_engine(sqlite_url)
    migrate.ensure_schema(engine)
    with write_session(engine) as session:
        version = _add_version(session, CLASSES, active=True)
        reviewer = Reviewer(username="rad1", role="reviewer", password_hash="x")
        session.add(reviewer)
        session.flush()
        ids = version.id, reviewer.id

    def add(n: int, comment: str = "looks like pneumonia") -> None:
        with write_session(engine) as session:
            for _ in range(n):
                image = Image(sha256=uuid.uuid4().hex * 2, path="/data/x.png", size_bytes=1, mtime=0.0, format="png")
                session.add(image)
                session.flush()
                prediction = Prediction(image_id=image.id, model_version_id=ids[0], predicted_class="normal",
                                        probabilities={"covid": 0.1, "normal": 0.6, "pneumonia": 0.3},
                                        confidence=0.6, entropy=0.9)
                session.add(prediction)
                session.flush()
                add_review(session, image_id=image.id, reviewer_id=ids[1], label="pneumonia",
                           prediction_id=prediction.id, flagged_for_retraining=True, comment=comment)

    yield engine, add
    engine.dispose()


def _header(sqlite_url, capsys) -> list[str]:
    capsys.readouterr()
    assert export.main(["--db", sqlite_url]) == 0
    return capsys.readouterr().out.splitlines()[0].split(",")


def test_the_columns_are_the_same_on_quiet_nights(flagged_db, sqlite_url, capsys):
    engine, add = flagged_db
    quiet = _header(sqlite_url, capsys)
    add(2)
    busy = _header(sqlite_url, capsys)
    expected = [*export.BASE_COLUMNS, "p_covid", "p_normal", "p_pneumonia", *export.REVIEW_COLUMNS]
    assert quiet == busy == expected
    with write_session(engine) as session:  # a version with another class: its column comes, empty where unknown
        _add_version(session, ["normal", "tuberculosis"], active=False)
    assert _header(sqlite_url, capsys) == [*expected[:9], "p_tuberculosis", *expected[9:]]
    with read_session(engine) as session:
        classes = export.export_classes(session)
        text = export.flagged_csv(flagged_cases(session), classes=classes)
    assert classes == [*CLASSES, "tuberculosis"]
    assert [row["p_tuberculosis"] for row in csv.DictReader(io.StringIO(text))] == ["", ""]


# --- --out is replaced whole or not at all --------------------------------------------------------------------------

def _export(sqlite_url: str, *args: str, limit_bytes: int | None = None, timeout: float = 60):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))  # Python ignores SIGXFSZ: EFBIG

    return subprocess.run([sys.executable, "-m", "db.export", "--db", sqlite_url, *args], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit if limit_bytes else None)


def _one_error_line(result, *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and " ERROR cxr.export: " in lines[0], result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("fault", ["full disk", "file-size limit"])
def test_a_failed_export_leaves_the_previous_file_whole(flagged_db, sqlite_url, tmp_path, request, fault):
    _, add = flagged_db
    add(60, comment="x" * 2000)  # about 125 KB of CSV
    folder = request.getfixturevalue("small_disk") if fault == "full disk" else tmp_path / "out"
    folder.mkdir(exist_ok=True)
    out = folder / "flagged.csv"
    assert _export(sqlite_url, "--out", str(out)).returncode == 0
    previous = out.read_bytes()
    add(60, comment="y" * 2000)  # tonight's export is twice as long
    if fault == "full disk":
        (folder / "filler").write_bytes(b"\0" * (shutil.disk_usage(folder).free - 64 * 1024))
        result = _export(sqlite_url, "--out", str(out))
    else:
        result = _export(sqlite_url, "--out", str(out), limit_bytes=len(previous) + 1024)
    assert out.read_bytes() == previous
    _one_error_line(result, f"cannot write {out}", "a previous file there is unchanged")
    assert sorted(p.name for p in folder.iterdir()) == sorted(["flagged.csv", *(["filler"] if fault == "full disk"
                                                                                 else [])])


def test_the_new_file_replaces_the_old_by_rename(flagged_db, sqlite_url, tmp_path):
    """A reader that has the old file open keeps reading the old file whole; a symbolic link keeps pointing at the
    file, which keeps its permissions."""
    _, add = flagged_db
    add(3)
    real, link = tmp_path / "flagged-real.csv", tmp_path / "flagged.csv"
    real.write_text("yesterday's file\n")
    real.chmod(0o640)
    link.symlink_to(real)
    with open(link, encoding="utf-8") as reader:
        assert _export(sqlite_url, "--out", str(link)).returncode == 0
        assert reader.read() == "yesterday's file\n"
    assert link.is_symlink() and stat.S_IMODE(real.stat().st_mode) == 0o640
    assert len(real.read_text(encoding="utf-8").splitlines()) == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".csv" or ".partial" in p.name) == \
        ["flagged-real.csv", "flagged.csv"]


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("make", [_fifo, _folder, lambda path: Path("/dev/null")], ids=["fifo", "folder", "device"])
def test_an_output_that_is_not_a_regular_file_is_refused(flagged_db, sqlite_url, tmp_path, make):
    _, add = flagged_db
    add(1)
    out = make(tmp_path / "out")
    mode = out.stat().st_mode
    result = _export(sqlite_url, "--out", str(out), timeout=60)  # a FIFO without a reader used to block forever
    _one_error_line(result, "is not a regular file")
    assert out.stat().st_mode == mode and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("since, in_utc, rows", [
    ("9999-12-31T23:59:59-05:00", "9999-12-31T23:59:59+00:00", 0),
    ("0001-01-01T00:00:00+05:00", "0001-01-01T00:00:00+00:00", 1),
    ("9999-12-31T23:59:59.999999-00:01", "9999-12-31", 0),
])
def test_a_date_without_a_utc_form_is_exit_2_and_one_line(flagged_db, sqlite_url, capsys, since, in_utc, rows):
    _, add = flagged_db
    add(1)
    result = _export(sqlite_url, "--since", since)
    _one_error_line(result, "out of range once converted to UTC")
    assert result.stdout == ""
    assert export.main(["--db", sqlite_url, "--since", in_utc]) == 0  # the nearest date that has one still works
    assert len(capsys.readouterr().out.splitlines()) == 1 + rows


def test_a_terminal_gets_control_characters_escaped_a_pipe_gets_the_data(flagged_db, sqlite_url):
    _, add = flagged_db
    add(1, comment="\x1b]0;owned\x07\x1b[2Jcleared\nsecond line \\ end")
    piped = _export(sqlite_url)
    assert piped.returncode == 0 and "\x1b[2Jcleared\nsecond line \\ end" in piped.stdout
    controller, terminal = pty.openpty()
    tty.setraw(terminal)  # the bytes as written: no newline translation
    child = subprocess.Popen([sys.executable, "-m", "db.export", "--db", sqlite_url], stdout=terminal,
                             stderr=subprocess.PIPE)
    os.close(terminal)
    shown = _read_all(controller)
    assert child.wait(timeout=60) == 0
    assert "\x1b" not in shown and "\\x1b]0;owned\\x07\\x1b[2Jcleared\\x0asecond line \\\\ end" in shown
    assert len(shown.splitlines()) == 2  # the header and one record, one line each


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode("utf-8")
