"""One case as the viewer shows it: the image's non-identifying metadata, every model version's prediction, and
the review history. Functions take a Session and never commit.

No patient name, id or birth date is in the database; the viewer does not show the pseudonym or the DICOM UIDs
either.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import config, model_versions
from db.models import Image, ModelVersion, Prediction, Review, Reviewer

# What model_training.demo_cohort writes into every synthetic DICOM phantom.
DEMO_MANUFACTURER = "CXR Review demo"
OTHER_LABELS = ("other", "ungradable")


@dataclass(frozen=True)
class CaseImage:
    id: int
    sha256: str
    path: str
    file_name: str
    format: str
    rows: int | None
    cols: int | None
    modality: str | None
    body_part: str | None
    view_position: str | None
    study_date: dt.date | None
    manufacturer: str | None
    photometric: str | None
    bits_stored: int | None
    pixel_spacing: tuple[float, float] | None
    burned_in_annotation: str | None
    in_scope: bool | None
    scope_reason: str | None
    first_seen_at: dt.datetime
    is_synthetic: bool

    def shown_metadata(self) -> dict[str, Any]:
        """The non-identifying attributes, labelled for the screen (absent values left out)."""
        spacing = f"{self.pixel_spacing[0]:g} × {self.pixel_spacing[1]:g} mm" if self.pixel_spacing else None
        size = f"{self.cols} × {self.rows}" if self.rows and self.cols else None
        shown = {"Format": self.format, "Size (columns × rows)": size, "Modality": self.modality,
                 "Body part": self.body_part, "View": self.view_position,
                 "Study date": self.study_date.isoformat() if self.study_date else None,
                 "Manufacturer": self.manufacturer, "Photometric": self.photometric, "Bits stored": self.bits_stored,
                 "Pixel spacing": spacing, "Burned-in annotation": self.burned_in_annotation,
                 "First seen": self.first_seen_at.strftime("%Y-%m-%d %H:%M UTC")}
        return {key: value for key, value in shown.items() if value is not None}


@dataclass(frozen=True)
class CasePrediction:
    id: int
    model_version_id: int
    version_label: str
    is_active: bool
    is_synthetic: bool
    classes: tuple[str, ...]
    probabilities: dict[str, float]
    predicted_class: str
    confidence: float
    entropy: float
    scored_at: dt.datetime
    is_challenger: bool = False  # scored in the shadow: never shown to readers


@dataclass(frozen=True)
class CaseReview:
    id: int
    reviewer: str
    created_at: dt.datetime
    label: str
    flagged: bool
    comment: str | None
    agrees_with_model: bool | None
    mode: str
    overlay_shown: bool
    seconds_spent: float | None
    second_reading: bool


@dataclass(frozen=True)
class CaseDetail:
    image: CaseImage
    prediction: CasePrediction | None  # of the version asked for
    other_predictions: list[CasePrediction]
    reviews: list[CaseReview]  # oldest first

    @property
    def labels(self) -> tuple[str, ...]:
        """What a reviewer can choose: the model's classes, then other and ungradable."""
        classes = self.prediction.classes if self.prediction else ()
        return (*classes, *(label for label in OTHER_LABELS if label not in classes))

    @property
    def is_synthetic(self) -> bool:
        return self.image.is_synthetic or any(p.is_synthetic for p in self.all_predictions)

    @property
    def all_predictions(self) -> list[CasePrediction]:
        return [self.prediction, *self.other_predictions] if self.prediction else list(self.other_predictions)


@dataclass(frozen=True)
class PriorStudy:
    """Another study of the same patient, as a reader may see it: the case number, dates and readings; never the
    pseudonym, a name or a path."""
    image_id: int
    study_date: dt.date | None
    first_seen_at: dt.datetime
    modality: str | None
    view_position: str | None
    predicted_class: str | None  # of the version asked for, when it scored the image
    confidence: float | None
    latest_label: str | None
    latest_reader: str | None
    latest_read_at: dt.datetime | None


def is_demo_image(path: str, manufacturer: str | None) -> bool:
    if manufacturer == DEMO_MANUFACTURER:
        return True
    demo = config.cxr_home() / "demo"
    try:
        return Path(path).resolve().is_relative_to(demo.resolve())
    except (OSError, ValueError):
        return False


def case_detail(session: Session, image_id: int, model_version_id: int | None) -> CaseDetail | None:
    image = session.get(Image, image_id)
    if image is None:
        return None
    predictions = [_prediction(p, v) for p, v in session.execute(
        select(Prediction, ModelVersion).join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Prediction.image_id == image_id).order_by(ModelVersion.id.desc()))]
    chosen = next((p for p in predictions if p.model_version_id == model_version_id), None)
    if chosen is None and model_version_id is None:
        chosen = next((p for p in predictions if p.is_active), predictions[0] if predictions else None)
    others = [p for p in predictions if p is not chosen]
    return CaseDetail(_image(image), chosen, others, case_reviews(session, image_id))


def prior_studies(session: Session, image_id: int, model_version_id: int | None, *,
                  limit: int = 20) -> list[PriorStudy]:
    """The same patient's other images (same pseudonym), newest study first (images without a study date last,
    by when they were first seen); empty when the image carries no pseudonym (no PatientID; a PNG or JPEG film
    that ``cxr-score --patient-ids`` gave no patient)."""
    pseudonym = session.scalar(select(Image.patient_pseudonym).where(Image.id == image_id))
    if not pseudonym:
        return []
    images = session.scalars(
        select(Image).where(Image.patient_pseudonym == pseudonym, Image.id != image_id)
        .order_by(Image.study_date.is_(None), Image.study_date.desc(), Image.first_seen_at.desc(), Image.id.desc())
        .limit(limit)).all()
    ids = [image.id for image in images]
    predictions = {p.image_id: p for p in session.scalars(
        select(Prediction).where(Prediction.image_id.in_(ids), Prediction.model_version_id == model_version_id))}
    latest = {}
    for review, reviewer in session.execute(
            select(Review, Reviewer).join(Reviewer, Reviewer.id == Review.reviewer_id)
            .where(Review.image_id.in_(ids)).order_by(Review.created_at, Review.id)):
        latest[review.image_id] = (review, reviewer)  # the newest wins
    out = []
    for image in images:
        prediction = predictions.get(image.id)
        review, reviewer = latest.get(image.id, (None, None))
        out.append(PriorStudy(
            image_id=image.id, study_date=image.study_date, first_seen_at=image.first_seen_at,
            modality=image.modality, view_position=image.view_position,
            predicted_class=prediction.predicted_class if prediction else None,
            confidence=prediction.confidence if prediction else None,
            latest_label=review.label if review else None,
            latest_reader=(reviewer.display_name or reviewer.username) if reviewer else None,
            latest_read_at=review.created_at if review else None))
    return out


def case_reviews(session: Session, image_id: int) -> list[CaseReview]:
    rows = session.execute(select(Review, Reviewer.username).join(Reviewer, Reviewer.id == Review.reviewer_id)
                           .where(Review.image_id == image_id).order_by(Review.created_at, Review.id))
    return [CaseReview(r.id, username, r.created_at, r.label, r.flagged_for_retraining, r.comment,
                       r.agrees_with_model, r.mode, r.overlay_shown, r.seconds_spent, r.second_reading)
            for r, username in rows]


def image_path(session: Session, image_id: int) -> str | None:
    return session.scalar(select(Image.path).where(Image.id == image_id))


def _image(image: Image) -> CaseImage:
    spacing = None
    if image.pixel_spacing_row and image.pixel_spacing_col:
        spacing = (image.pixel_spacing_row, image.pixel_spacing_col)
    return CaseImage(
        id=image.id, sha256=image.sha256, path=image.path, file_name=PurePath(image.path).name, format=image.format,
        rows=image.rows, cols=image.cols, modality=image.modality, body_part=image.body_part,
        view_position=image.view_position, study_date=image.study_date, manufacturer=image.manufacturer,
        photometric=image.photometric, bits_stored=image.bits_stored, pixel_spacing=spacing,
        burned_in_annotation=image.burned_in_annotation, in_scope=image.in_scope, scope_reason=image.scope_reason,
        first_seen_at=image.first_seen_at, is_synthetic=is_demo_image(image.path, image.manufacturer))


def _prediction(p: Prediction, version: ModelVersion) -> CasePrediction:
    return CasePrediction(
        id=p.id, model_version_id=version.id, version_label=model_versions.label(version), is_active=version.is_active,
        is_synthetic=version.is_synthetic, classes=tuple(version.classes),
        probabilities={k: float(v) for k, v in p.probabilities.items()}, predicted_class=p.predicted_class,
        confidence=p.confidence, entropy=p.entropy, scored_at=p.scored_at, is_challenger=version.is_challenger)
