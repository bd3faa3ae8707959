"""``cxr-score --patient-ids CSV``: PNG and JPEG films get their patients' pseudonyms; DICOM films keep their own."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from db import cases, model_versions
from db.config import pseudonymise
from db.engine import create_database_engine, read_session, write_session
from db.models import Image, ModelVersion
from scoring import cli

PROGRESSION = "ieee8023-205"  # seven films of one patient, day 1 to day 28, in cxr-adult


@pytest.fixture
def site(tmp_path, cxr_adult, pydicom_data) -> Path:
    """The seven films of one cxr-adult patient, three films of three others, a film the CSV does not name and a
    DICOM film, with cxr-adult's labels.csv cut to the PNGs named in it plus a row for the DICOM film."""
    rows = list(csv.DictReader(open(cxr_adult / "labels.csv", newline="")))
    chosen = [r for r in rows if r["patient_id"] == PROGRESSION]
    others = {}
    for row in rows:
        if row["patient_id"] != PROGRESSION and row["patient_id"] not in others and len(others) < 4:
            others[row["patient_id"]] = row
    *named, unnamed = others.values()
    root = tmp_path / "site"
    for row in [*chosen, *named, unnamed]:
        (root / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cxr_adult / row["file"], root / row["file"])
    shutil.copy2(pydicom_data("RG1_UNCR.dcm"), root / "rg1.dcm")
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([*chosen, *named, dict(rows[0], file="rg1.dcm", patient_id="not-the-dicom-patient")])
    return root


def score(capsys, db_url, checkpoint, *arguments) -> tuple[int, dict]:
    code = cli.main(["--db", db_url, "--model", str(checkpoint), "--json", "--settle-seconds", "0", "--workers", "0",
                     *map(str, arguments)])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def stored_patients(db_url: str) -> dict[str, str | None]:
    engine = create_database_engine(db_url)
    try:
        with read_session(engine) as session:
            return {Path(path).name: pseudonym
                    for path, pseudonym in session.execute(select(Image.path, Image.patient_pseudonym))}
    finally:
        engine.dispose()


def test_the_csvs_films_get_their_patients_and_dicom_keeps_its_own(capsys, caplog, db_url, tiny_checkpoint, site):
    code, summary = score(capsys, db_url, tiny_checkpoint, "--patient-ids", site / "labels.csv", site)
    assert (code, summary["scored"]) == (0, 12)
    assert summary["patients"] == {"files": 11, "known": 11, "changed": 10, "changed_trained_on": 0,
                                   "without_patient": 1}
    patients = stored_patients(db_url)
    progression = {name: p for name, p in patients.items() if "progression" in name}
    assert len(progression) == 7 and set(progression.values()) == {pseudonymise(PROGRESSION)}
    others = [p for name, p in patients.items() if "progression" not in name and name != "rg1.dcm"]
    assert others.count(None) == 1 and len({p for p in others if p}) == 3  # one film has no row
    assert pseudonymise(PROGRESSION) not in others
    assert patients["rg1.dcm"] not in (None, pseudonymise("not-the-dicom-patient"))  # its own Patient ID
    assert PROGRESSION not in caplog.text and "1 PNG/JPEG films found by this run have no row" in caplog.text

    engine = create_database_engine(db_url)
    with read_session(engine) as session:  # the case page now shows the patient's other films
        day1 = session.scalar(select(Image.id).where(Image.path.like("%regression_day1.png")))
        assert len(cases.prior_studies(session, day1, None)) == 6
    engine.dispose()


@pytest.mark.parametrize("linked", ["csv", "films"])
def test_a_site_reached_through_a_symbolic_link_is_matched_either_way(capsys, sqlite_url, tiny_checkpoint, site,
                                                                       tmp_path, linked):
    # the scorer stores a file at the path it was given; the CSV names it through the other path
    link = tmp_path / "site-link"
    link.symlink_to(site, target_is_directory=True)
    csv_folder, films = (link, site) if linked == "csv" else (site, link)
    code, summary = score(capsys, sqlite_url, tiny_checkpoint, "--patient-ids", csv_folder / "labels.csv", films)
    assert (code, summary["scored"]) == (0, 12)
    assert summary["patients"] == {"files": 11, "known": 11, "changed": 10,
                                   "changed_trained_on": 0, "without_patient": 1}
    progression = {name: p for name, p in stored_patients(sqlite_url).items() if "progression" in name}
    assert len(progression) == 7 and set(progression.values()) == {pseudonymise(PROGRESSION)}


def test_films_scored_before_get_their_patients_and_a_corrected_csv_corrects(capsys, caplog, sqlite_url,
                                                                             tiny_checkpoint, site):
    assert score(capsys, sqlite_url, tiny_checkpoint, site)[0] == 0
    assert {p for name, p in stored_patients(sqlite_url).items() if name != "rg1.dcm"} == {None}
    engine = create_database_engine(sqlite_url)
    with write_session(engine) as session:  # a version trained on three of the films before they had patients
        trained = session.scalars(select(Image.sha256).where(Image.path.like("%progression%")).limit(3))
        model_versions.record_training_images(session, session.scalar(select(ModelVersion.id)), list(trained))
    engine.dispose()

    code, summary = score(capsys, sqlite_url, tiny_checkpoint, "--patient-ids", site / "labels.csv", site)
    assert (code, summary["scored"], summary["patients"]["changed"]) == (0, 0, 10)
    assert summary["patients"]["changed_trained_on"] == 3 and "3 of them were trained or validated on" in caplog.text
    day6 = next(name for name in stored_patients(sqlite_url) if name.endswith("day6.png"))

    text = (site / "labels.csv").read_text()
    (site / "labels.csv").write_text(text.replace(f"{day6},covid,{PROGRESSION}", f"{day6},covid,another-patient"))
    code, summary = score(capsys, sqlite_url, tiny_checkpoint, "--patient-ids", site / "labels.csv", site)
    assert (code, summary["patients"]["changed"]) == (0, 1)
    assert stored_patients(sqlite_url)[day6] == pseudonymise("another-patient")


@pytest.mark.parametrize(("content", "refused"), [
    (None, "cannot read --patient-ids"),
    ("file,label\na.png,covid\n", "has no column patient_id"),
    ("path,patient\na.png,p1\n", "has no column file or patient_id"),
    ("file,patient_id\nDOE_JOHN.png,secret-1\nb.png,secret-2\nDOE_JOHN.png,secret-3\n",
     "lines 2 and 4 give one file two different patients"),
])
def test_a_csv_that_cannot_be_used_stops_the_run_before_it_scores(capsys, caplog, sqlite_url, tiny_checkpoint, site,
                                                                  content, refused):
    csv_path = site / "patients.csv"
    if content is not None:
        csv_path.write_text(content)
    code, summary = score(capsys, sqlite_url, tiny_checkpoint, "--patient-ids", csv_path, site)
    assert (code, summary["run_id"]) == (2, None)
    assert refused in caplog.text and "secret" not in caplog.text and "DOE" not in caplog.text
