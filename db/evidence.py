"""The evidence for promoting a challenger: the site's own cases, read after the challenger was trained, that
neither version ever trained on, with both versions' stored predictions. Functions take a Session and never
commit.

A case counts when its latest review is newer than the challenger (so the challenger cannot have seen the
reading), no review of its image went into either version's training (``review_training_uses``), its content is
not among either version's training or validation images (``model_training_images``), its patient is not the
patient of any of those images (a follow-up film of a patient a version learnt from is not an unseen patient), the
reviewer's label is one of the versions' classes, and both versions scored it (the challenger in the shadow).
Readers only ever saw the active version's output, never the challenger's.

The patient is the pseudonym stored with the image (DICOM PatientID, keyed-hashed). A PNG or JPEG film has none:
it can only be matched by its content, so it counts as its own patient, and a film of a trained-on patient that
has no pseudonym still counts as evidence (:attr:`EvidenceCase.patient` is None for it, and the gate says how many
such cases it used).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from db.models import Image, ModelTrainingImage, ModelVersion, Prediction, Review, ReviewTrainingUse
from db.reviews import latest_reviews


@dataclass(frozen=True)
class EvidenceCase:
    image_id: int
    review_id: int
    reviewed_at: dt.datetime
    label: str
    patient: str | None  # the pseudonym: a patient's films are resampled together
    champion: dict[str, float]  # calibrated probabilities by class
    challenger: dict[str, float]


def prospective_cases(session: Session, champion: ModelVersion, challenger: ModelVersion) -> list[EvidenceCase]:
    """The cases that may judge ``challenger`` against ``champion``, oldest reading first."""
    versions = (champion.id, challenger.id)
    latest = latest_reviews()
    champion_prediction, challenger_prediction = aliased(Prediction), aliased(Prediction)
    other_review = aliased(Review)
    trained_on_image = exists().where(ModelTrainingImage.model_version_id.in_(versions),
                                      ModelTrainingImage.sha256 == Image.sha256)
    trained_on_patient = _patient_trained_on(versions)
    trained_on_reading = (exists().where(ReviewTrainingUse.model_version_id.in_(versions),
                                         ReviewTrainingUse.review_id == other_review.id,
                                         other_review.image_id == Image.id))
    classes = set(champion.classes) & set(challenger.classes)
    query = (
        select(Image.id, Review.id, Review.created_at, Review.label, Image.patient_pseudonym,
               champion_prediction.probabilities, challenger_prediction.probabilities)
        .join(latest, latest.c.review_id == Review.id)
        .join(Image, Image.id == Review.image_id)
        .join(champion_prediction, and_(champion_prediction.image_id == Image.id,
                                        champion_prediction.model_version_id == champion.id))
        .join(challenger_prediction, and_(challenger_prediction.image_id == Image.id,
                                          challenger_prediction.model_version_id == challenger.id))
        .where(Review.created_at > challenger.created_at, ~trained_on_image, ~trained_on_patient,
               ~trained_on_reading, Review.label.in_(sorted(classes)))
        .order_by(Review.created_at, Review.id))
    return [EvidenceCase(image_id, review_id, reviewed_at, label, patient, dict(first), dict(second))
            for image_id, review_id, reviewed_at, label, patient, first, second in session.execute(query)]


def trained_content(session: Session, model_version_id: int) -> set[str]:
    """The content (sha256) of every image ``model_version_id`` was trained or validated on, and of every known
    image of those images' patients: what must not count as unseen by its weights. An image without a pseudonym
    is matched by its content alone."""
    recorded = select(ModelTrainingImage.sha256).where(ModelTrainingImage.model_version_id == model_version_id)
    same_patient = select(Image.sha256).where(_patient_trained_on((model_version_id,)))
    return set(session.scalars(recorded)) | set(session.scalars(same_patient))


def _patient_trained_on(versions: tuple[int, ...]) -> ColumnElement[bool]:
    """Whether an ``Image``'s patient has a film (of any content) that one of ``versions`` trained or validated on.
    False for an image without a pseudonym (NULL matches nothing)."""
    trained_image = aliased(Image)
    return exists().where(ModelTrainingImage.model_version_id.in_(versions),
                          trained_image.sha256 == ModelTrainingImage.sha256,
                          trained_image.patient_pseudonym == Image.patient_pseudonym,
                          trained_image.patient_pseudonym.is_not(None))
