"""Reader safety and sign-in security: the client (network address) of each audit event, so that failed sign-ins
are throttled per client and per account; a session epoch per account, so that signing out, a deactivation or
a password change ends every browser session of that account; and whether a review was a deliberate second
reading.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no table rebuild), so the append-only triggers on events and reviews stay in place.
    op.add_column("events", sa.Column("client", sa.String(length=64), nullable=True))
    op.create_index("ix_events_client_kind_created", "events", ["client", "kind", "created_at"], unique=False)
    op.add_column("reviewers", sa.Column("session_epoch", sa.Integer(), server_default="0", nullable=False))
    op.add_column("reviews", sa.Column("second_reading", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    op.drop_column("reviews", "second_reading")
    op.drop_column("reviewers", "session_epoch")
    op.drop_index("ix_events_client_kind_created", table_name="events")
    op.drop_column("events", "client")
