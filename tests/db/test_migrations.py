from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from db import migrate
from db.engine import create_database_engine
from db.models import Base


def test_upgrade_from_empty_creates_every_table(db_url):
    engine = create_database_engine(db_url)
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())


def test_migrations_match_the_models(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_downgrade_to_base_and_back(engine):
    migrate.upgrade(engine, "head")
    from alembic import command

    cfg = migrate._alembic_config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_old_schema_is_refused_with_the_fixing_command(db_url):
    engine = create_database_engine(db_url)
    with pytest.raises(migrate.SchemaOutOfDate, match="cxr-db upgrade"):
        migrate.require_current(engine)


def test_ensure_schema_creates_an_empty_database_but_not_a_foreign_one(db_url, sqlite_url):
    engine = create_database_engine(db_url)
    migrate.ensure_schema(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()

    other = create_database_engine(sqlite_url.replace("cxr.db", "other.db"))
    with other.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE somebody_elses (x INTEGER)")
    with pytest.raises(migrate.SchemaOutOfDate, match="no CXR Review schema"):
        migrate.ensure_schema(other)


def _ensure(url: str, start) -> None:
    start.wait()
    migrate.ensure_schema(create_database_engine(url))


def test_concurrent_first_use_of_a_new_database_creates_it_once(db_url):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [context.Process(target=_ensure, args=(db_url, start)) for _ in range(3)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert migrate.current_revision(create_database_engine(db_url)) == migrate.head_revision()
