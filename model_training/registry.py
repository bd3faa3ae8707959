"""The model registry: list versions, promote one to be the scorer's (the previous one stays registered, so a
rollback is promoting it again). Functions take a Session and never commit."""

from __future__ import annotations

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.models import ModelVersion


class RegistryError(LookupError):
    pass


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def find_version(session: Session, ref: str) -> ModelVersion:
    """A version by id, name, or a unique prefix (at least 8 characters) of its checkpoint's sha256."""
    conditions = [ModelVersion.name == ref]
    if ref.isdigit():
        conditions.append(ModelVersion.id == int(ref))
    if len(ref) >= 8:
        conditions.append(ModelVersion.sha256.startswith(ref.lower()))
    matches = list(session.scalars(select(ModelVersion).where(or_(*conditions))))
    if not matches:
        raise RegistryError(f"no model version {ref!r} (give its id, name or sha256 prefix; `cxr-train list`)")
    if len(matches) > 1:
        ids = ", ".join(str(m.id) for m in matches)
        raise RegistryError(f"{ref!r} matches model versions {ids}; give the id")
    return matches[0]


def promote(session: Session, ref: str) -> tuple[ModelVersion, ModelVersion | None]:
    """Make ``ref`` the active version; returns it and the one it replaced."""
    version = find_version(session, ref)
    previous = session.scalar(select(ModelVersion).where(ModelVersion.is_active))
    # Deactivate first: at most one row may be active at any moment (a partial unique index).
    session.execute(update(ModelVersion).where(ModelVersion.is_active).values(is_active=False))
    session.execute(update(ModelVersion).where(ModelVersion.id == version.id).values(is_active=True))
    session.expire_all()
    return session.get(ModelVersion, version.id), previous
