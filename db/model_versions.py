"""Model versions: registering checkpoints, finding them, listing them and promoting one to be the scorer's.

The one place for these queries: the scorer, training, the CLIs and the dashboard all use it. A version is
identified by its checkpoint's sha256; promoting keeps the previous version registered, so a rollback is
promoting it again. Functions take a Session and never commit; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from db.errors import CannotRun
from db.models import ModelTrainingImage, ModelVersion, Prediction, utcnow

if TYPE_CHECKING:
    from scoring.model import Checkpoint

MIN_SHA_PREFIX = 8  # shorter prefixes would match by accident too often


class UnknownModelVersion(CannotRun, LookupError):
    """A reference (id, name or sha256 prefix) that names no model version, or more than one."""


def find_by_sha(session: Session, sha256: str) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.sha256 == sha256))


def active_version(session: Session) -> ModelVersion | None:
    """The version the scorer uses (at most one is active: a partial unique index sees to it)."""
    return session.scalar(select(ModelVersion).where(ModelVersion.is_active))


def default_version_id(session: Session) -> int | None:
    """The version whose predictions the dashboard shows: the active one, else the newest that scored anything."""
    active = active_version(session)
    if active is not None:
        return active.id
    return session.scalar(select(func.max(Prediction.model_version_id)))


def label(version: ModelVersion) -> str:
    """How people see a version: its id and name (the start of its sha256 when it has no name)."""
    return f"{version.id}:{version.name or version.sha256[:12]}"


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def register(session: Session, *, sha256: str, path: str, architecture: str, classes: list[str], input_size: int,
             preprocessing_hash: str, temperature: float, name: str | None = None,
             metrics: dict[str, Any] | None = None, is_synthetic: bool = False) -> ModelVersion:
    """The version with this checkpoint hash, registered (inactive) if it is new."""
    existing = find_by_sha(session, sha256)
    if existing is not None:
        return existing
    version = ModelVersion(sha256=sha256, path=path, architecture=architecture, classes=list(classes),
                           input_size=input_size, preprocessing_hash=preprocessing_hash, temperature=temperature,
                           name=name, metrics=metrics or {}, is_synthetic=is_synthetic)
    session.add(version)
    session.flush()
    return version


def register_checkpoint(session: Session, path: str | Path, checkpoint: Checkpoint, sha256: str) -> ModelVersion:
    """Register a checkpoint (inactive) from what it carries: name, metrics, synthetic flag included."""
    training = checkpoint.training
    return register(
        session, sha256=sha256, path=str(Path(path).resolve()), architecture=checkpoint.arch,
        classes=checkpoint.classes, input_size=checkpoint.input_size,
        preprocessing_hash=checkpoint.preprocessing.hash, temperature=checkpoint.temperature,
        name=training.get("name"), metrics=training.get("metrics"), is_synthetic=bool(training.get("synthetic")))


def find_by_ref(session: Session, ref: str) -> ModelVersion:
    """A version by id, name, or a unique prefix (at least 8 characters) of its checkpoint's sha256."""
    conditions = [ModelVersion.name == ref]
    if ref.isdigit():
        conditions.append(ModelVersion.id == int(ref))
    if len(ref) >= MIN_SHA_PREFIX:
        conditions.append(ModelVersion.sha256.startswith(ref.lower()))
    matches = list(session.scalars(select(ModelVersion).where(or_(*conditions))))
    if not matches:
        raise UnknownModelVersion(f"no model version {ref!r} (give its id, name or sha256 prefix; `cxr-train list`)")
    if len(matches) > 1:
        ids = ", ".join(str(m.id) for m in matches)
        raise UnknownModelVersion(f"{ref!r} matches model versions {ids}; give the id")
    return matches[0]


def promote(session: Session, ref: str) -> tuple[ModelVersion, ModelVersion | None]:
    """Make ``ref`` the active version; returns it and the one it replaced (None if none was active). A promoted
    challenger stops being one. Whether the promotion is allowed is the caller's question (:mod:`db.gate`)."""
    version = find_by_ref(session, ref)
    previous = active_version(session)
    # Deactivate first: at most one row may be active at any moment (a partial unique index).
    session.execute(update(ModelVersion).where(ModelVersion.is_active).values(is_active=False))
    session.execute(update(ModelVersion).where(ModelVersion.id == version.id).values(
        is_active=True, is_challenger=False, first_active_at=func.coalesce(ModelVersion.first_active_at, utcnow())))
    session.expire_all()
    if previous is not None:
        session.refresh(previous)  # loaded now, so the caller can still read it after the transaction
    return session.get(ModelVersion, version.id), previous


class NotAChallenger(CannotRun, ValueError):
    """A version that cannot be a challenger (the active one)."""


def set_challenger(session: Session, ref: str, challenger: bool) -> ModelVersion:
    """Start (or stop) scoring ``ref`` in the shadow of the active version."""
    version = find_by_ref(session, ref)
    if challenger and version.is_active:
        raise NotAChallenger(f"model version {label(version)} is the active version: it cannot challenge itself")
    version.is_challenger = challenger
    session.flush()
    return version


def challengers(session: Session) -> list[ModelVersion]:
    """The versions scored in the shadow of the active one, oldest first."""
    return list(session.scalars(select(ModelVersion).where(ModelVersion.is_challenger).order_by(ModelVersion.id)))


def record_training_images(session: Session, model_version_id: int, sha256s: Iterable[str]) -> int:
    """Remember the content of every image ``model_version_id`` was trained or validated on; returns how many."""
    known = training_image_shas(session, model_version_id)
    new = sorted(set(sha256s) - known)
    if new:
        session.execute(insert(ModelTrainingImage), [{"model_version_id": model_version_id, "sha256": sha}
                                                     for sha in new])
    return len(new)


def training_image_shas(session: Session, model_version_id: int) -> set[str]:
    return set(session.scalars(select(ModelTrainingImage.sha256)
                               .where(ModelTrainingImage.model_version_id == model_version_id)))
