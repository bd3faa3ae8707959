"""Schema migrations, run from code: ``upgrade`` to head, or refuse to work on an old schema."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from db.diagnose import shown_url
from db.engine import writer
from db.errors import CannotRun

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class SchemaOutOfDate(CannotRun, RuntimeError):
    """The database is not at the schema this code expects."""


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


MIGRATION_LOCK_KEY = 0x43585244  # "CXRD": PostgreSQL advisory lock serialising migrations


@dataclass(frozen=True)
class Upgraded:
    """What one :func:`upgrade` did: the revisions before and after, both read under its lock."""

    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def upgrade(engine: Engine, revision: str = "head") -> Upgraded:
    """Migrate to ``revision``. Concurrent callers are serialised: the second finds the work done, and says so
    (the revision before is read inside the lock, not before it)."""
    cfg = _alembic_config()
    with writer(engine).begin() as connection:  # SQLite: BEGIN IMMEDIATE takes the write lock first
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        before = MigrationContext.configure(connection).get_current_revision()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
        return Upgraded(before, MigrationContext.configure(connection).get_current_revision())


def require_current(engine: Engine) -> None:
    """Raise :class:`SchemaOutOfDate` with the command that fixes it, unless the schema is at head."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    if current is None:
        problem = "has no CXR Review schema yet"
    elif current in _known_revisions():
        problem = f"is at schema revision {current}, this version needs {head}"
    else:
        problem = f"is at schema revision {current}, which this version does not know (newer software?)"
    raise SchemaOutOfDate(f"the database {shown_url(engine.url.render_as_string(hide_password=False))} {problem}; "
                          "run `cxr-db upgrade` (with the same --db) first")


def _known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}


def ensure_schema(engine: Engine) -> None:
    """Create the schema in an empty database; refuse (SchemaOutOfDate) to touch an old one.

    Migrating an existing database, perhaps shared by several machines, is left to a deliberate
    ``cxr-db upgrade``.
    """
    if current_revision(engine) is None and not _has_tables(engine):
        upgrade(engine)
    require_current(engine)


def _has_tables(engine: Engine) -> bool:
    from sqlalchemy import inspect

    return bool(inspect(engine).get_table_names())
