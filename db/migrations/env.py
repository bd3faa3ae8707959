"""Alembic environment. Runs against the connection handed over in ``config.attributes`` by
:mod:`db.migrate`, or against ``CXR_DB_URL`` / the default database when run as plain ``alembic``."""

from __future__ import annotations

from alembic import context

from db.engine import get_engine
from db.models import Base

target_metadata = Base.metadata


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can only ALTER tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    with get_engine(context.config.get_main_option("sqlalchemy.url") or None).connect() as connection:
        run_migrations(connection)


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `cxr-db upgrade`")
run_migrations_online()
