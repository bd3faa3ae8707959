"""The CXR Review schema: SQLAlchemy 2.0 typed models.

Patient data: images carry a keyed pseudonym of PatientID and non-identifying DICOM attributes only;
PatientName, PatientID and BirthDate are never stored. Reviews are append-only: a later review of the
same image supersedes an earlier one, nothing is updated in place.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so that batch migrations on SQLite can find and alter them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("reviewer", "admin")
RUN_STATUSES = ("running", "finished", "failed", "interrupted")
REVIEW_MODES = ("standard", "read_first")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """Timestamps in UTC, timezone-aware on the way out on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: give a timezone")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dict[str, Any]: JSON,
        list[str]: JSON,
        dt.datetime: UTCDateTime,
    }


class Image(Base):
    """One image content, identified by the sha256 of the file's bytes."""

    __tablename__ = "images"
    __table_args__ = (
        # the worklist's filters on the image
        Index("ix_images_modality_view", "modality", "view_position", "study_date"),
        Index("ix_images_study_date", "study_date", "modality", "view_position"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text, doc="where the content was first seen")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float]
    format: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int | None]
    cols: Mapped[int | None]
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[dt.date | None]
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    series_uid: Mapped[str | None] = mapped_column(String(64))
    sop_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    photometric: Mapped[str | None] = mapped_column(String(16))
    bits_stored: Mapped[int | None]
    pixel_spacing_row: Mapped[float | None]
    pixel_spacing_col: Mapped[float | None]
    burned_in_annotation: Mapped[str | None] = mapped_column(String(8))
    patient_pseudonym: Mapped[str | None] = mapped_column(String(32), index=True)
    in_scope: Mapped[bool | None]
    scope_reason: Mapped[str | None] = mapped_column(String(64))
    first_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    files: Mapped[list[ImageFile]] = relationship(back_populates="image")
    predictions: Mapped[list[Prediction]] = relationship(back_populates="image")
    reviews: Mapped[list[Review]] = relationship(back_populates="image")


class ImageFile(Base):
    """A place where an image's content was found; lets an unchanged file skip re-hashing."""

    __tablename__ = "image_files"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    image: Mapped[Image] = relationship(back_populates="files")


class ModelVersion(Base):
    """A registered checkpoint; at most one is active, and the scorer uses that one by default."""

    __tablename__ = "model_versions"
    __table_args__ = (
        Index(
            "uq_model_versions_one_active",
            "is_active",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(String(128))
    architecture: Mapped[str] = mapped_column(String(32))
    classes: Mapped[list[str]]
    input_size: Mapped[int]
    preprocessing_hash: Mapped[str] = mapped_column(String(64))
    temperature: Mapped[float] = mapped_column(default=1.0)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    is_active: Mapped[bool] = mapped_column(default=False, server_default=false())
    is_synthetic: Mapped[bool] = mapped_column(default=False, server_default=false())
    # scored in the shadow of the active version; never shown to readers
    is_challenger: Mapped[bool] = mapped_column(default=False, server_default=false())
    first_active_at: Mapped[dt.datetime | None] = mapped_column(doc="when it was first made active (None: never)")

    predictions: Mapped[list[Prediction]] = relationship(back_populates="model_version")


class ModelTrainingImage(Base):
    """The content of an image a version was trained or validated on: never counted as its evidence."""

    __tablename__ = "model_training_images"
    __table_args__ = (UniqueConstraint("model_version_id", "sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))


class ScoringRun(Base):
    __tablename__ = "scoring_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int | None]
    arguments: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    status: Mapped[str] = mapped_column(String(16), default="running")
    scanned: Mapped[int] = mapped_column(default=0)
    scored: Mapped[int] = mapped_column(default=0)
    skipped: Mapped[int] = mapped_column(default=0)
    out_of_scope: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    known_failures: Mapped[int] = mapped_column(default=0)
    deferred: Mapped[int] = mapped_column(default=0)

    failures: Mapped[list[ScoringFailure]] = relationship(back_populates="run")


class ScoringFailure(Base):
    """A file that could not be scored, with a machine-readable reason (the reader's or the scorer's)."""

    __tablename__ = "scoring_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("scoring_runs.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text, index=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    run: Mapped[ScoringRun] = relationship(back_populates="failures")


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("image_id", "model_version_id"),
        # the dashboard's worklist: one model version, ordered by uncertainty, confidence or date
        # covering the default order and the filters on the prediction, so counting and paging read no rows
        Index("ix_predictions_worklist", "model_version_id", "entropy", "scored_at", "confidence", "predicted_class",
              "image_id"),
        Index("ix_predictions_version_confidence", "model_version_id", "confidence", "image_id"),
        Index("ix_predictions_version_scored", "model_version_id", "scored_at", "image_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("scoring_runs.id", ondelete="SET NULL"))
    probabilities: Mapped[dict[str, Any]] = mapped_column(doc="class name -> calibrated probability")
    predicted_class: Mapped[str] = mapped_column(String(64), index=True)
    confidence: Mapped[float] = mapped_column(Float, index=True)
    entropy: Mapped[float] = mapped_column(Float)
    scored_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    image: Mapped[Image] = relationship(back_populates="predictions")
    model_version: Mapped[ModelVersion] = relationship(back_populates="predictions")


class Reviewer(Base):
    __tablename__ = "reviewers"
    __table_args__ = (Index("uq_reviewers_identity", "identity_issuer", "identity_subject", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16), default="reviewer")
    password_hash: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(default=True, server_default=true())
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    session_epoch: Mapped[int] = mapped_column(default=0, server_default="0",
                                               doc="raised to end every signed-in session of the account")
    identity_issuer: Mapped[str | None] = mapped_column(
        String(255), doc="the single sign-on provider whose user opened this account first (OpenID Connect iss)")
    identity_subject: Mapped[str | None] = mapped_column(
        String(255), doc="that provider's stable id of its user (sub): only it opens the account from then on")

    reviews: Mapped[list[Review]] = relationship(back_populates="reviewer")


class Review(Base):
    """A reviewer's reading of an image. Append-only: the latest review of an image is the current one."""

    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_image_created", "image_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id", ondelete="SET NULL"))
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("reviewers.id"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    agrees_with_model: Mapped[bool | None]
    flagged_for_retraining: Mapped[bool] = mapped_column(default=False, server_default=false(), index=True)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    mode: Mapped[str] = mapped_column(String(16), default="standard", server_default="standard",
                                      doc="standard, or read_first: the model's output hidden until labelled")
    overlay_shown: Mapped[bool] = mapped_column(default=False, server_default=false())
    seconds_spent: Mapped[float | None] = mapped_column(Float, doc="time on the case before saving")
    second_reading: Mapped[bool] = mapped_column(default=False, server_default=false(),
                                                 doc="read deliberately while another reviewer held the case")

    image: Mapped[Image] = relationship(back_populates="reviews")
    reviewer: Mapped[Reviewer] = relationship(back_populates="reviews")
    prediction: Mapped[Prediction | None] = relationship()
    training_uses: Mapped[list[ReviewTrainingUse]] = relationship(back_populates="review")


class ReviewTrainingUse(Base):
    """Marks a review as having gone into the training data of a model version."""

    __tablename__ = "review_training_uses"
    __table_args__ = (UniqueConstraint("review_id", "model_version_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    review: Mapped[Review] = relationship(back_populates="training_uses")


class AttributionCacheEntry(Base):
    """A computed attribution map stored on disk (compressed .npz under $CXR_HOME), keyed by what produced it:
    image, model version, method, target class and the method's parameters (params_key = their sha256)."""

    __tablename__ = "attribution_cache"
    __table_args__ = (
        # named explicitly: the conventional name is over PostgreSQL's 63 characters
        UniqueConstraint(
            "image_id", "model_version_id", "method", "target_class", "params_key", name="uq_attribution_cache_key"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(32))
    target_class: Mapped[str] = mapped_column(String(64))
    params_key: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    value_min: Mapped[float] = mapped_column(Float)
    value_max: Mapped[float] = mapped_column(Float)
    outside_share: Mapped[float | None] = mapped_column(Float, index=True, doc="share of positive attribution "
                                                        "outside the central chest region")
    seconds: Mapped[float] = mapped_column(Float, doc="compute time of the map")
    storage_path: Mapped[str] = mapped_column(Text, doc="relative to $CXR_HOME")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Event(Base):
    """The audit trail beyond reviews: sign-ins (and failures), exports, promotions, account changes.

    Append-only like reviews (triggers refuse UPDATE and DELETE). ``username`` is the name given, also when
    no account has it; a password is never recorded.
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_username_kind_created", "username", "kind", "created_at"),
                      Index("ix_events_client_kind_created", "client", "kind", "created_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("reviewers.id"), doc="who acted, if known")
    username: Mapped[str | None] = mapped_column(String(64))
    client: Mapped[str | None] = mapped_column(String(64), doc="the network address the request came from")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class CaseClaim(Base):
    """An opened case, held for a few minutes so that two reviewers do not read it at once by accident."""

    __tablename__ = "case_claims"
    __table_args__ = (UniqueConstraint("image_id", "reviewer_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("reviewers.id", ondelete="CASCADE"))
    claimed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class ResultObject(Base):
    """A study's results sent back to a PACS (``cxr-score --results-to``), per study, model version and destination.
    A failed send stays ``failed`` and is tried again by the next run, under the same SOP Instance UID while the
    study holds the same images, so a PACS that did store an object whose answer was lost keeps one copy. A study
    that gains a scored image after its report was stored gets a new report, which names the stored one as its
    predecessor."""

    __tablename__ = "result_objects"
    __table_args__ = (UniqueConstraint("study_uid", "model_version_id", "destination"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    destination: Mapped[str] = mapped_column(Text, doc="dicom://AE@host:port or a DICOMweb URL, no credentials")
    sop_uid: Mapped[str] = mapped_column(String(64), doc="the SOP Instance UID of the object tried last")
    status: Mapped[str] = mapped_column(String(16), doc="sent or failed: how the last try ended")
    sent_sop_uid: Mapped[str | None] = mapped_column(String(64), doc="the last object the destination stored")
    sent_images: Mapped[int | None] = mapped_column(doc="how many of the study's images that object reports")
    reports_sent: Mapped[int] = mapped_column(default=0, doc="objects stored for the study (its Instance Number)")
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None]
