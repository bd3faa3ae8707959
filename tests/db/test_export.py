"""Flagged-case export: contents, formula neutralisation, round trips, and no patient data."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select

from db import export
from db.engine import create_database_engine, read_session, write_session
from db.models import Image, Prediction, Reviewer
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
    for value in [*FAKE_PHI.values(), "Doe", "MRN-0042", "1961"]:
        assert value not in text
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
    assert capsys.readouterr().out.strip().splitlines() == [",".join(export.columns_for([], False))]
