"""Failed and refused password sign-ins no longer keep a name that is no account: such a name is often a password
typed into the wrong field. From now on they are recorded under a keyed hash of the name (``db.events.attempt_name``);
this revision blanks the names that earlier versions stored as typed. The rate limit's per-name counters forget
those attempts (they were failures against names no account has); its per-client counter, which counts by network
address, does not.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENTS = sa.table("events", sa.column("id", sa.Integer), sa.column("kind", sa.String),
                  sa.column("username", sa.String), sa.column("details", sa.JSON))
ACCOUNTS = sa.table("reviewers", sa.column("username", sa.String))
ATTEMPTS = ("sign_in_failed", "sign_in_refused")
HIDDEN_NAME_PREFIX = "unknown:"  # the names recorded by the code of this revision on


def upgrade() -> None:
    bind = op.get_bind()
    accounts = set(bind.scalars(sa.select(ACCOUNTS.c.username)))
    rows = bind.execute(sa.select(EVENTS.c.id, EVENTS.c.username, EVENTS.c.details).where(
        EVENTS.c.kind.in_(ATTEMPTS), EVENTS.c.username.is_not(None))).all()
    # a single sign-on's name came from the identity provider, not from a keyboard, and stays
    typed = [row.id for row in rows if row.username not in accounts and not row.username.startswith(HIDDEN_NAME_PREFIX)
             and (row.details or {}).get("method") != "oidc"]
    if not typed:
        return
    with _append_only_lifted(bind):
        for start in range(0, len(typed), 500):
            bind.execute(sa.update(EVENTS).where(EVENTS.c.id.in_(typed[start:start + 500])).values(username=None))


@contextlib.contextmanager
def _append_only_lifted(bind):
    """The events table's append-only triggers (revision 0004) set aside for this one rewrite, inside the
    migration's transaction, and put back as they were."""
    if bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        try:
            yield
        finally:
            op.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")
        return
    triggers = bind.execute(sa.text(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'")).all()
    for name, _ in triggers:
        op.execute(f'DROP TRIGGER "{name}"')
    try:
        yield
    finally:
        for _, sql in triggers:
            op.execute(sql)


def downgrade() -> None:
    pass  # the blanked names are gone; nothing to restore
