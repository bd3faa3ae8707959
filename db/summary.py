"""Counts that describe the state of an installation (landing page, health checks)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.model_versions import active_version
from db.models import Image, ModelVersion, Prediction, Review, Reviewer, ScoringRun


@dataclass(frozen=True)
class ActiveModel:
    id: int
    name: str | None
    architecture: str
    classes: list[str]
    is_synthetic: bool


@dataclass(frozen=True)
class Summary:
    images: int
    predictions: int
    reviewed_images: int
    reviewers: int
    model_versions: int
    active_model: ActiveModel | None
    last_run_status: str | None


def database_summary(session: Session) -> Summary:
    count = lambda entity: session.scalar(select(func.count()).select_from(entity)) or 0  # noqa: E731
    active = active_version(session)
    last_run = session.scalar(select(ScoringRun.status).order_by(ScoringRun.started_at.desc()).limit(1))
    return Summary(
        images=count(Image),
        predictions=count(Prediction),
        reviewed_images=session.scalar(select(func.count(func.distinct(Review.image_id)))) or 0,
        reviewers=count(Reviewer),
        model_versions=count(ModelVersion),
        active_model=None if active is None else ActiveModel(
            active.id, active.name, active.architecture, list(active.classes), active.is_synthetic),
        last_run_status=last_run,
    )
