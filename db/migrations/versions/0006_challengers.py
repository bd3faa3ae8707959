"""Safe model updates: challengers scored in the shadow, when each version was first made active (a rollback to a
former active version is not gated), and the content of every image a version was trained or validated on (so
its evidence never includes its own training data).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("model_versions", sa.Column("is_challenger", sa.Boolean(), server_default=sa.false(),
                                              nullable=False))
    op.add_column("model_versions", sa.Column("first_active_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "model_training_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"],
                                name=op.f("fk_model_training_images_model_version_id_model_versions"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_training_images")),
        sa.UniqueConstraint("model_version_id", "sha256", name=op.f("uq_model_training_images_model_version_id_sha256")),
    )
    _backfill_first_active()


def _backfill_first_active() -> None:
    """The active version, and every version a recorded promotion made active or replaced, was active once."""
    bind = op.get_bind()
    versions = sa.table("model_versions", sa.column("id", sa.Integer), sa.column("created_at", sa.DateTime),
                        sa.column("is_active", sa.Boolean), sa.column("first_active_at", sa.DateTime))
    events = sa.table("events", sa.column("kind", sa.String), sa.column("details", sa.JSON),
                      sa.column("created_at", sa.DateTime))
    first: dict[int, dt.datetime] = {}
    for details, when in bind.execute(sa.select(events.c.details, events.c.created_at)
                                      .where(events.c.kind == "promote").order_by(events.c.created_at)):
        details = json.loads(details) if isinstance(details, str) else (details or {})
        for key in ("previous", "version"):
            if isinstance(details.get(key), int):
                first.setdefault(details[key], when)
    for version_id, created_at, is_active in bind.execute(sa.select(versions.c.id, versions.c.created_at,
                                                                      versions.c.is_active)):
        when = first.get(version_id) or (created_at if is_active else None)
        if when is not None:
            bind.execute(versions.update().where(versions.c.id == version_id).values(first_active_at=when))


def downgrade() -> None:
    op.drop_table("model_training_images")
    op.drop_column("model_versions", "first_active_at")
    op.drop_column("model_versions", "is_challenger")
