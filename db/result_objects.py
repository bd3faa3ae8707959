"""Results sent back to a PACS: which studies are due, what each holds, and the record of each send.

Functions take a Session and never commit; the caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Image, ImageFile, Prediction, ResultObject, utcnow
from db.paths import to_fs

SENT, FAILED = "sent", "failed"
# The images a report holds: a study's in-scope DICOM images (a SOP Instance UID to reference)
_REPORTED = (Image.study_uid.is_not(None), Image.sop_uid.is_not(None), Image.in_scope.is_(True))


@dataclass(frozen=True)
class StudyImage:
    """One scored image of a study, as its result object reports it."""

    image_id: int
    sop_uid: str
    paths: tuple[str, ...]  # the files that hold it (file system paths), the first seen first
    probabilities: dict[str, float]
    predicted_class: str


def due_studies(session: Session, model_version_id: int, destination: str, scored_since: dt.datetime) -> list[str]:
    """Studies with an in-scope DICOM image scored by the version since ``scored_since`` whose report is due at
    ``destination``: none stored yet (a failed send is due again), or the stored one reports fewer of the study's
    scored images than it has now (a retake arrived later). The earliest scored first."""
    recent = (select(Image.study_uid)
              .join(Prediction, Prediction.image_id == Image.id)
              .where(Prediction.model_version_id == model_version_id, Prediction.scored_at >= scored_since,
                     *_REPORTED))
    query = (select(Image.study_uid, func.count(Image.id))
             .join(Prediction, Prediction.image_id == Image.id)
             .where(Prediction.model_version_id == model_version_id, Image.study_uid.in_(recent), *_REPORTED)
             .group_by(Image.study_uid)
             .order_by(func.min(Prediction.scored_at), Image.study_uid))
    records = {record.study_uid: record for record in session.scalars(
        select(ResultObject).where(ResultObject.model_version_id == model_version_id,
                                   ResultObject.destination == destination, ResultObject.study_uid.in_(recent)))}
    return [study for study, images in session.execute(query)
            if (record := records.get(study)) is None or record.status != SENT or (record.sent_images or 0) < images]


def study_images(session: Session, study_uid: str, model_version_id: int) -> list[StudyImage]:
    """The study's in-scope images that the version scored, in SOP Instance UID order."""
    rows = session.execute(
        select(Image.id, Image.sop_uid, Prediction.probabilities, Prediction.predicted_class)
        .join(Prediction, Prediction.image_id == Image.id)
        .where(Image.study_uid == study_uid, Prediction.model_version_id == model_version_id, *_REPORTED)
        .order_by(Image.sop_uid, Image.id)).all()
    paths: dict[int, list[str]] = {}
    for image_id, path in session.execute(select(ImageFile.image_id, ImageFile.path)
                                          .where(ImageFile.image_id.in_([row[0] for row in rows]))
                                          .order_by(ImageFile.id)):
        paths.setdefault(image_id, []).append(to_fs(path))
    return [StudyImage(image_id, sop_uid, tuple(paths.get(image_id, ())), dict(probabilities), predicted)
            for image_id, sop_uid, probabilities, predicted in rows]


def result_record(session: Session, study_uid: str, model_version_id: int, destination: str) -> ResultObject | None:
    return session.scalar(select(ResultObject).where(ResultObject.study_uid == study_uid,
                                                     ResultObject.model_version_id == model_version_id,
                                                     ResultObject.destination == destination))


def record_send(session: Session, study_uid: str, model_version_id: int, destination: str, sop_uid: str,
                images: int, error: str | None) -> ResultObject:
    """Record one try to send a study's report of ``images`` images: ``error`` None when the destination stored
    it."""
    record = result_record(session, study_uid, model_version_id, destination)
    if record is None:
        record = ResultObject(study_uid=study_uid, model_version_id=model_version_id, destination=destination,
                              sop_uid=sop_uid, attempts=0, reports_sent=0)
        session.add(record)
    record.sop_uid = sop_uid
    record.attempts += 1
    record.status = FAILED if error else SENT
    record.last_error = error
    if error is None:
        record.sent_at = utcnow()
        record.sent_sop_uid, record.sent_images = sop_uid, images
        record.reports_sent += 1
    session.flush()
    return record
