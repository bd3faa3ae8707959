"""Single sign-on binds an account to the provider's user: the issuer and subject (OpenID Connect ``iss`` and
``sub``) of the identity that opened it first, after which only that identity opens it, whatever e-mail address
the provider sends later.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN and a unique index (no table rebuild on SQLite, which the reviews' foreign keys would feel)
    op.add_column("reviewers", sa.Column("identity_issuer", sa.String(length=255), nullable=True))
    op.add_column("reviewers", sa.Column("identity_subject", sa.String(length=255), nullable=True))
    op.create_index("uq_reviewers_identity", "reviewers", ["identity_issuer", "identity_subject"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_reviewers_identity", table_name="reviewers")
    op.drop_column("reviewers", "identity_subject")
    op.drop_column("reviewers", "identity_issuer")
