"""Registering a trained (or recalibrated) checkpoint as an inactive model version, with the reviews that went
into it and the content of every image it was trained or validated on (never its evidence at the gate).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from db import migrate, model_versions
from db.engine import get_engine, write_session
from db.model_versions import register_checkpoint
from db.models import ReviewTrainingUse
from model_training import data
from scoring.model import Checkpoint, checkpoint_sha256


def database_at(url: str | None):
    engine = get_engine(url)
    migrate.ensure_schema(engine)
    return engine


def register(db: str | None, checkpoint_path: Path, checkpoint: Checkpoint, items: list[data.LabelledImage], *,
             parent_id: int | None = None) -> int:
    """Register the checkpoint (inactive), mark the reviews that went into it and record the content of every
    image it was trained or validated on, so that none of them ever counts as its evidence. ``parent_id``: the
    version whose weights it carries unchanged (a recalibrated version), whose training data are its own too."""
    with write_session(database_at(db)) as session:
        version = register_checkpoint(session, checkpoint_path, checkpoint, checkpoint_sha256(checkpoint_path))
        shas = {item.sha256 for item in items}
        reviews = {item.review_id for item in items if item.review_id is not None}
        if parent_id is not None:
            shas |= model_versions.training_image_shas(session, parent_id)
            reviews |= set(session.scalars(select(ReviewTrainingUse.review_id)
                                           .where(ReviewTrainingUse.model_version_id == parent_id)))
        if None in shas:
            raise ValueError("register needs hashed items (data.with_hashes)")
        reviews -= set(session.scalars(select(ReviewTrainingUse.review_id)
                                       .where(ReviewTrainingUse.model_version_id == version.id)))
        for review_id in sorted(reviews):
            session.add(ReviewTrainingUse(review_id=review_id, model_version_id=version.id))
        model_versions.record_training_images(session, version.id, shas)
        return version.id

