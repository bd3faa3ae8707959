"""How reviewers' readings compare with a model version's predictions, on the cases they reviewed.

The latest review of each image counts (a later review supersedes an earlier one), against the prediction of
the version asked for on the same image, whichever version the reviewer saw. Functions take a Session and
never commit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import PurePath

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.models import Image, ModelVersion, Prediction, Review, Reviewer, ReviewTrainingUse
from db.reviews import latest_reviews


@dataclass(frozen=True)
class ClassAgreement:
    name: str
    precision: float | None  # of the model's calls of this class, the share the reviewers confirmed
    recall: float | None  # of the reviewers' readings of this class, the share the model called
    predicted: int
    read: int


@dataclass(frozen=True)
class VersionAgreement:
    model_version_id: int
    classes: tuple[str, ...]
    labels: tuple[str, ...]  # reviewer labels seen: the classes, then anything else (other, ungradable)
    matrix: dict[tuple[str, str], int]  # (reviewer label, predicted class) -> cases
    reviewed: int
    agreed: int
    per_class: list[ClassAgreement]

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.reviewed if self.reviewed else None


@dataclass(frozen=True)
class DailyAgreement:
    day: dt.date
    reviewed: int
    agreed: int


@dataclass(frozen=True)
class TrainingCase:
    image_id: int
    file_name: str
    label: str
    reviewer: str
    review_time: dt.datetime


def version_agreement(session: Session, model_version_id: int) -> VersionAgreement:
    classes = tuple(session.scalar(select(ModelVersion.classes).where(ModelVersion.id == model_version_id)) or ())
    latest = latest_reviews()
    rows = session.execute(
        select(Review.label, Prediction.predicted_class, func.count())
        .join(latest, latest.c.review_id == Review.id)
        .join(Prediction, (Prediction.image_id == Review.image_id)
              & (Prediction.model_version_id == model_version_id))
        .group_by(Review.label, Prediction.predicted_class))
    matrix = {(label, predicted): n for label, predicted, n in rows}
    seen = {label for label, _ in matrix}
    labels = (*classes, *sorted(seen - set(classes)))
    per_class = []
    for name in classes:
        hits = matrix.get((name, name), 0)
        predicted = sum(n for (label, p), n in matrix.items() if p == name and label in classes)
        read = sum(n for (label, _), n in matrix.items() if label == name)
        per_class.append(ClassAgreement(name, hits / predicted if predicted else None,
                                        hits / read if read else None, predicted, read))
    return VersionAgreement(model_version_id, classes, labels, matrix, sum(matrix.values()),
                            sum(n for (label, p), n in matrix.items() if label == p), per_class)


def agreement_by_day(session: Session, model_version_id: int | None = None, *, days: int = 90,
                     now: dt.datetime | None = None) -> list[DailyAgreement]:
    """Per day of review: reviews of a prediction, and how many agreed with it (the prediction reviewed, or
    only those of ``model_version_id``)."""
    since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
    day = func.date(Review.created_at)
    query = (select(day, func.count(), func.sum(case((Review.agrees_with_model, 1), else_=0)))
             .join(Prediction, Prediction.id == Review.prediction_id)
             .where(Review.created_at >= since).group_by(day).order_by(day))
    if model_version_id is not None:
        query = query.where(Prediction.model_version_id == model_version_id)
    return [DailyAgreement(_as_date(d), n, int(agreed or 0)) for d, n, agreed in session.execute(query)]


def training_cases(session: Session, model_version_id: int, *, limit: int = 500) -> tuple[int, list[TrainingCase]]:
    """How many reviewed cases went into this version's training, and (up to ``limit`` of) which."""
    total = session.scalar(select(func.count()).select_from(ReviewTrainingUse)
                           .where(ReviewTrainingUse.model_version_id == model_version_id)) or 0
    rows = session.execute(
        select(Review.image_id, Image.path, Review.label, Reviewer.username, Review.created_at)
        .join(ReviewTrainingUse, ReviewTrainingUse.review_id == Review.id)
        .join(Image, Image.id == Review.image_id).join(Reviewer, Reviewer.id == Review.reviewer_id)
        .where(ReviewTrainingUse.model_version_id == model_version_id)
        .order_by(Review.created_at).limit(limit))
    return total, [TrainingCase(i, PurePath(p).name, label, who, when) for i, p, label, who, when in rows]


def _as_date(value) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
