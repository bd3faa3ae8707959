"""The dashboard: an append-only audit table of events (sign-ins, exports, promotions, account changes), case
claims against accidental double reads, how each review was made (mode, overlay shown, seconds spent), and the
indexes of the worklist's orderings and filters.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MESSAGE = "events are append-only: record a new event instead"


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=True),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["reviewer_id"], ["reviewers.id"], name=op.f("fk_events_reviewer_id_reviewers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_created_at"), "events", ["created_at"], unique=False)
    op.create_index(op.f("ix_events_kind"), "events", ["kind"], unique=False)
    op.create_index("ix_events_username_kind_created", "events", ["username", "kind", "created_at"], unique=False)
    _append_only("events")

    op.create_table(
        "case_claims",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_case_claims_image_id_images"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["reviewer_id"], ["reviewers.id"], name=op.f("fk_case_claims_reviewer_id_reviewers"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_claims")),
        sa.UniqueConstraint("image_id", "reviewer_id", name=op.f("uq_case_claims_image_id_reviewer_id")),
    )
    op.create_index(op.f("ix_case_claims_expires_at"), "case_claims", ["expires_at"], unique=False)

    # Plain ADD COLUMN (no table rebuild), so the append-only triggers on reviews stay in place.
    op.add_column("reviews", sa.Column("mode", sa.String(length=16), server_default="standard", nullable=False))
    op.add_column("reviews", sa.Column("overlay_shown", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("reviews", sa.Column("seconds_spent", sa.Float(), nullable=True))

    op.create_index("ix_predictions_worklist", "predictions",
                    ["model_version_id", "entropy", "scored_at", "confidence", "predicted_class", "image_id"], unique=False)
    op.create_index("ix_predictions_version_confidence", "predictions", ["model_version_id", "confidence", "image_id"],
                    unique=False)
    op.create_index("ix_predictions_version_scored", "predictions", ["model_version_id", "scored_at", "image_id"],
                    unique=False)
    op.create_index("ix_images_modality_view", "images", ["modality", "view_position", "study_date"], unique=False)
    op.create_index("ix_images_study_date", "images", ["study_date", "modality", "view_position"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_images_study_date", table_name="images")
    op.drop_index("ix_images_modality_view", table_name="images")
    op.drop_index("ix_predictions_version_scored", table_name="predictions")
    op.drop_index("ix_predictions_version_confidence", table_name="predictions")
    op.drop_index("ix_predictions_worklist", table_name="predictions")
    # Plain DROP COLUMN (SQLite 3.35+), again without rebuilding reviews and losing its triggers.
    op.drop_column("reviews", "seconds_spent")
    op.drop_column("reviews", "overlay_shown")
    op.drop_column("reviews", "mode")
    op.drop_index(op.f("ix_case_claims_expires_at"), table_name="case_claims")
    op.drop_table("case_claims")
    _drop_append_only("events")
    op.drop_index("ix_events_username_kind_created", table_name="events")
    op.drop_index(op.f("ix_events_kind"), table_name="events")
    op.drop_index(op.f("ix_events_created_at"), table_name="events")
    op.drop_table("events")


def _append_only(table: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION {table}_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION '{MESSAGE}';
            END;
            $$ LANGUAGE plpgsql
        """)
        op.execute(f"""
            CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION {table}_append_only()
        """)
        return
    for action in ("UPDATE", "DELETE"):
        op.execute(f"""
            CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table}
            BEGIN
                SELECT RAISE(ABORT, '{MESSAGE}');
            END
        """)


def _drop_append_only(table: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {table}_append_only()")
        return
    for action in ("update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{action}")
