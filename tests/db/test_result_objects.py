"""Results back to a PACS, as the database keeps them (db.result_objects) and the SOP Instance UIDs a DICOMweb pull
asks about (db.results.known_sop_instances); on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from db import migrate, model_versions, result_objects, results
from db.engine import create_database_engine, read_session, write_session
from db.models import utcnow
from db.results import FileStat

DESTINATION = "dicom://PACS@10.0.0.5:104"
META = {"format": "dicom", "modality": "CR", "body_part": "CHEST"}


@pytest.fixture
def scored(engine) -> int:
    """Study 1.1 (two in-scope films and an out-of-scope one), study 1.2 (one film) and a PNG without a study, all
    scored by one version; its id."""
    return _score_films(engine)


def _score_films(engine) -> int:
    with write_session(engine) as session:
        version = model_versions.register(session, sha256="a" * 64, path="/m.pt", architecture="resnet18",
                                          classes=["covid", "normal"], input_size=32, preprocessing_hash="p" * 64,
                                          temperature=1.0)
        run = results.start_run(session, {}, version.id, pid=1)
        films = [("1.1", "1.1.1", True), ("1.1", "1.1.2", True), ("1.1", "1.1.3", False), ("1.2", "1.2.1", True),
                 (None, None, True)]
        for number, (study, sop, in_scope) in enumerate(films):
            meta = {**META, "study_uid": study, "sop_uid": sop} if study else {"format": "png"}
            image_id = results.upsert_image(session, sha256=f"{number:064d}",
                                            stat=FileStat(f"/in/{number}.dcm", 10, 1), meta=meta,
                                            in_scope=in_scope, scope_reason="ok")
            results.record_file(session, FileStat(f"/in/{number}.dcm", 10, 1), image_id)
            results.add_prediction(session, image_id=image_id, model_version_id=version.id, run_id=run.id,
                                   probabilities={"covid": 0.25, "normal": 0.75}, predicted_class="normal",
                                   confidence=0.75, entropy=0.8)
        return version.id


def test_reports_stored_before_the_upgrade_count_the_images_scored_by_then(db_url):
    """Revision 0008 gives each stored report the number of images it held: those the version had scored by the
    time it was sent; one that gained an image since is reported again."""
    engine = create_database_engine(db_url)
    migrate.upgrade(engine, "0007")  # the tables the films go into are as at head; result_objects is not
    version_id = _score_films(engine)
    sent = utcnow()
    _add_film(engine, version_id, "1.1", "1.1.4")  # scored after that report was sent
    with engine.begin() as connection:
        for study, sop_uid, status in (("1.1", "2.25.1", "sent"), ("1.2", "2.25.2", "failed")):
            connection.execute(text(
                "INSERT INTO result_objects (study_uid, model_version_id, destination, sop_uid, status, attempts, "
                "created_at, sent_at) VALUES (:study, :version, :destination, :sop, :status, 1, :at, :sent)"),
                dict(study=study, version=version_id, destination=DESTINATION, sop=sop_uid, status=status,
                     at=sent, sent=sent if status == "sent" else None))
    migrate.upgrade(engine)
    with read_session(engine) as session:
        stored = result_objects.result_record(session, "1.1", version_id, DESTINATION)
        failed = result_objects.result_record(session, "1.2", version_id, DESTINATION)
        assert (stored.sent_sop_uid, stored.sent_images, stored.reports_sent) == ("2.25.1", 2, 1)
        assert (failed.sent_sop_uid, failed.sent_images, failed.reports_sent) == (None, None, 0)
        assert result_objects.due_studies(session, version_id, DESTINATION, utcnow() - dt.timedelta(days=7)) == [
            "1.1", "1.2"]
    engine.dispose()


def test_due_studies_until_sent_and_a_failed_send_is_due_again(engine, scored):
    since = utcnow() - dt.timedelta(days=7)
    with read_session(engine) as session:
        assert result_objects.due_studies(session, scored, DESTINATION, since) == ["1.1", "1.2"]
        images = result_objects.study_images(session, "1.1", scored)
    assert [(i.sop_uid, i.paths, i.predicted_class) for i in images] == [
        ("1.1.1", ("/in/0.dcm",), "normal"), ("1.1.2", ("/in/1.dcm",), "normal")]  # not the out-of-scope film
    assert images[0].probabilities == {"covid": 0.25, "normal": 0.75}

    with write_session(engine) as session:
        result_objects.record_send(session, "1.1", scored, DESTINATION, "2.25.1", 2, None)
        result_objects.record_send(session, "1.2", scored, DESTINATION, "2.25.2", 1, "C-STORE status 0xA700")
    with read_session(engine) as session:
        assert result_objects.due_studies(session, scored, DESTINATION, since) == ["1.2"]
        assert result_objects.due_studies(session, scored, "https://other/dicom-web", since) == ["1.1", "1.2"]
        assert result_objects.due_studies(session, scored, DESTINATION, utcnow() + dt.timedelta(seconds=5)) == []

    with write_session(engine) as session:
        record = result_objects.record_send(session, "1.2", scored, DESTINATION, "2.25.2", 1, None)
        assert (record.status, record.attempts, record.last_error, record.sop_uid) == ("sent", 2, None, "2.25.2")
        assert record.sent_at is not None
    with read_session(engine) as session:
        assert result_objects.due_studies(session, scored, DESTINATION, since) == []


def test_a_study_that_gains_an_image_after_its_report_is_due_again(engine, scored):
    since = utcnow() - dt.timedelta(days=7)
    with write_session(engine) as session:
        result_objects.record_send(session, "1.1", scored, DESTINATION, "2.25.1", 2, None)
        result_objects.record_send(session, "1.2", scored, DESTINATION, "2.25.2", 1, None)
    with read_session(engine) as session:
        assert result_objects.due_studies(session, scored, DESTINATION, since) == []
    _add_film(engine, scored, "1.1", "1.1.4")  # a retake, scored the next night
    with read_session(engine) as session:
        assert result_objects.due_studies(session, scored, DESTINATION, since) == ["1.1"]
        assert [i.sop_uid for i in result_objects.study_images(session, "1.1", scored)] == ["1.1.1", "1.1.2", "1.1.4"]

    # the new report fails: the stored one is still the one it replaces, and the study stays due
    with write_session(engine) as session:
        record = result_objects.record_send(session, "1.1", scored, DESTINATION, "2.25.3", 3, "C-STORE status 0xA700")
        assert (record.sop_uid, record.sent_sop_uid, record.sent_images, record.reports_sent) == (
            "2.25.3", "2.25.1", 2, 1)
    with read_session(engine) as session:
        assert result_objects.due_studies(session, scored, DESTINATION, since) == ["1.1"]
    with write_session(engine) as session:
        record = result_objects.record_send(session, "1.1", scored, DESTINATION, "2.25.3", 3, None)
        assert (record.status, record.sent_sop_uid, record.sent_images, record.reports_sent, record.attempts) == (
            "sent", "2.25.3", 3, 2, 3)
    with read_session(engine) as session:
        assert result_objects.due_studies(session, scored, DESTINATION, since) == []


def _add_film(engine, version_id: int, study: str, sop: str) -> None:
    with write_session(engine) as session:
        run = results.start_run(session, {}, version_id, pid=2)
        image_id = results.upsert_image(session, sha256=sop.ljust(64, "f"), stat=FileStat(f"/in/{sop}.dcm", 10, 1),
                                        meta={**META, "study_uid": study, "sop_uid": sop}, in_scope=True,
                                        scope_reason="ok")
        results.record_file(session, FileStat(f"/in/{sop}.dcm", 10, 1), image_id)
        results.add_prediction(session, image_id=image_id, model_version_id=version_id, run_id=run.id,
                               probabilities={"covid": 0.5, "normal": 0.5}, predicted_class="normal", confidence=0.5,
                               entropy=1.0)


def test_known_sop_instances(engine, scored):
    with read_session(engine) as session:
        assert results.known_sop_instances(session, ["1.1.1", "1.1.3", "9.9", "1.2.1"]) == {"1.1.1", "1.1.3",
                                                                                            "1.2.1"}
        assert results.known_sop_instances(session, []) == set()
