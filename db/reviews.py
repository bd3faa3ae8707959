"""Reviews: append-only readings of images by reviewers. Functions take a Session and never commit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Subquery, func, select
from sqlalchemy.orm import Session, aliased

from db import model_versions
from db.models import REVIEW_MODES, Image, ModelVersion, Prediction, Review, Reviewer


def add_review(session: Session, *, image_id: int, reviewer_id: int, label: str,
               prediction_id: int | None = None, flagged_for_retraining: bool = False,
               comment: str | None = None, mode: str = "standard", overlay_shown: bool = False,
               seconds_spent: float | None = None, second_reading: bool = False) -> Review:
    """Record a reading. Agreement with the model is derived from the prediction reviewed, if any.

    ``mode`` is how the case was read ("standard", or "read_first": the model's output hidden until the label
    was recorded), ``overlay_shown`` whether an attribution overlay was on screen, ``seconds_spent`` the time
    on the case, ``second_reading`` whether the reviewer chose to read it while another reviewer held it."""
    if mode not in REVIEW_MODES:
        raise ValueError(f"unknown review mode {mode!r}: choose one of {', '.join(REVIEW_MODES)}")
    agrees = None
    if prediction_id is not None:
        predicted = session.scalar(select(Prediction.predicted_class).where(Prediction.id == prediction_id))
        if predicted is None:
            raise ValueError(f"prediction {prediction_id} does not exist")
        agrees = predicted == label
    review = Review(image_id=image_id, reviewer_id=reviewer_id, label=label, prediction_id=prediction_id,
                    agrees_with_model=agrees, flagged_for_retraining=flagged_for_retraining,
                    comment=comment or None, mode=mode, overlay_shown=overlay_shown, seconds_spent=seconds_spent,
                    second_reading=second_reading)
    session.add(review)
    session.flush()
    return review


def latest_reviews() -> Subquery:
    """One row per image: its most recent review (a later review supersedes an earlier one)."""
    rank = func.row_number().over(partition_by=Review.image_id,
                                  order_by=(Review.created_at.desc(), Review.id.desc()))
    ranked = select(Review.id.label("review_id"), rank.label("rank")).subquery()
    return select(ranked.c.review_id).where(ranked.c.rank == 1).subquery()


@dataclass(frozen=True)
class FlaggedCase:
    case_id: int
    image_sha256: str
    patient_pseudonym: str | None
    study_date: dt.date | None
    model_version: str | None
    predicted_class: str | None
    probabilities: dict[str, Any]
    reviewer_label: str
    reviewer: str
    review_time: dt.datetime
    comment: str | None
    path: str


def flagged_cases(session: Session, since: dt.datetime | None = None) -> list[FlaggedCase]:
    """Every image whose latest review is flagged for retraining, oldest review first."""
    latest = latest_reviews()
    prediction = aliased(Prediction)
    query = (
        select(Review, Image, Reviewer.username, prediction, ModelVersion)
        .join(latest, latest.c.review_id == Review.id)
        .join(Image, Image.id == Review.image_id)
        .join(Reviewer, Reviewer.id == Review.reviewer_id)
        .outerjoin(prediction, prediction.id == Review.prediction_id)
        .outerjoin(ModelVersion, ModelVersion.id == prediction.model_version_id)
        .where(Review.flagged_for_retraining)
        .order_by(Review.created_at, Review.id)
    )
    if since is not None:
        query = query.where(Review.created_at >= since)
    return [
        FlaggedCase(
            case_id=image.id, image_sha256=image.sha256, patient_pseudonym=image.patient_pseudonym,
            study_date=image.study_date, model_version=model_versions.label(version) if version else None,
            predicted_class=pred.predicted_class if pred else None,
            probabilities=dict(pred.probabilities) if pred else {}, reviewer_label=review.label,
            reviewer=username, review_time=review.created_at, comment=review.comment, path=image.path,
        )
        for review, image, username, pred, version in session.execute(query)
    ]
