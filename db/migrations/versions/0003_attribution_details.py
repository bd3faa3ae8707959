"""Attribution cache details: the method's parameters (and their hash, part of the key), the raw value range for
the legend, the share of positive attribution outside the central chest region, and the compute time.

Rows written before this revision have no recorded parameters; the cache is recomputable, so they are dropped
rather than guessed.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_UNIQUE = "uq_attribution_cache_image_id_model_version_id_method_target_class"
NEW_UNIQUE = "uq_attribution_cache_key"  # the conventional name is over PostgreSQL's 63 characters


def _old_unique_name() -> str:
    """0001's constraint name is over PostgreSQL's 63 characters, so there it was created shortened."""
    for constraint in sa.inspect(op.get_bind()).get_unique_constraints("attribution_cache"):
        if constraint["column_names"] == ["image_id", "model_version_id", "method", "target_class"]:
            return constraint["name"]
    return OLD_UNIQUE


def upgrade() -> None:
    op.execute("DELETE FROM attribution_cache")
    old_unique = _old_unique_name()
    with op.batch_alter_table("attribution_cache", schema=None) as batch_op:
        batch_op.add_column(sa.Column("params_key", sa.String(length=64), nullable=False))
        batch_op.add_column(sa.Column("params", sa.JSON(), nullable=False))
        batch_op.add_column(sa.Column("value_min", sa.Float(), nullable=False))
        batch_op.add_column(sa.Column("value_max", sa.Float(), nullable=False))
        batch_op.add_column(sa.Column("outside_share", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("seconds", sa.Float(), nullable=False))
        batch_op.drop_constraint(op.f(old_unique), type_="unique")
        batch_op.create_unique_constraint(
            NEW_UNIQUE, ["image_id", "model_version_id", "method", "target_class", "params_key"]
        )
        batch_op.create_index(batch_op.f("ix_attribution_cache_outside_share"), ["outside_share"], unique=False)
        batch_op.create_index(batch_op.f("ix_attribution_cache_model_version_id"), ["model_version_id"], unique=False)


def downgrade() -> None:
    op.execute("DELETE FROM attribution_cache")
    with op.batch_alter_table("attribution_cache", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attribution_cache_model_version_id"))
        batch_op.drop_index(batch_op.f("ix_attribution_cache_outside_share"))
        batch_op.drop_constraint(NEW_UNIQUE, type_="unique")
        batch_op.create_unique_constraint(
            op.f(OLD_UNIQUE), ["image_id", "model_version_id", "method", "target_class"]
        )
        batch_op.drop_column("seconds")
        batch_op.drop_column("outside_share")
        batch_op.drop_column("value_max")
        batch_op.drop_column("value_min")
        batch_op.drop_column("params")
        batch_op.drop_column("params_key")
