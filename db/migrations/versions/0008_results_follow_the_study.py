"""Results back follow the study: a study that gains a scored image after its report was stored is reported again,
the new report naming the stored one as its predecessor. Each record keeps the last stored object and how many
images it reported; a record stored before this revision reported the images scored by then.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("result_objects") as batch:
        batch.add_column(sa.Column("sent_sop_uid", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("sent_images", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("reports_sent", sa.Integer(), nullable=False, server_default="0"))
    # What a record stored before holds: its object, and the study's in-scope images the version had scored by then
    op.execute("""
        UPDATE result_objects SET sent_sop_uid = sop_uid, reports_sent = 1, sent_images = (
            SELECT count(*) FROM images JOIN predictions ON predictions.image_id = images.id
            WHERE images.study_uid = result_objects.study_uid
              AND predictions.model_version_id = result_objects.model_version_id
              AND images.sop_uid IS NOT NULL AND images.in_scope
              AND predictions.scored_at <= result_objects.sent_at)
        WHERE status = 'sent'""")


def downgrade() -> None:
    with op.batch_alter_table("result_objects") as batch:
        batch.drop_column("reports_sent")
        batch.drop_column("sent_images")
        batch.drop_column("sent_sop_uid")
