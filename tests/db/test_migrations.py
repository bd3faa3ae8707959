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


def test_reviews_are_append_only_in_the_database(engine):
    from sqlalchemy import text
    from sqlalchemy.exc import DatabaseError

    from db.engine import write_session
    from db.models import Image, Reviewer
    from db.reviews import add_review

    with write_session(engine) as session:
        image = Image(sha256="a" * 64, path="/x.png", size_bytes=1, mtime=0.0, format="png")
        reviewer = Reviewer(username="rad", password_hash="x")
        session.add_all([image, reviewer])
        session.flush()
        add_review(session, image_id=image.id, reviewer_id=reviewer.id, label="normal")
        add_review(session, image_id=image.id, reviewer_id=reviewer.id, label="covid")  # appending is fine
    for statement in ("UPDATE reviews SET label = 'pneumonia'", "DELETE FROM reviews"):
        with pytest.raises(DatabaseError, match="append-only"):
            with write_session(engine) as session:
                session.execute(text(statement))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM reviews")).scalar() == 2


def test_upgrading_a_database_at_0001_keeps_its_data(db_url):
    from sqlalchemy import text

    engine = create_database_engine(db_url)
    migrate.upgrade(engine, "0001")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO reviewers (username, role, password_hash, is_active, created_at) "
                                "VALUES ('rad', 'reviewer', 'x', true, CURRENT_TIMESTAMP)"))
    with pytest.raises(migrate.SchemaOutOfDate, match="revision 0001"):
        migrate.require_current(engine)
    migrate.upgrade(engine)
    migrate.require_current(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT username FROM reviewers")).scalar() == "rad"


def test_upgrade_says_what_it_did(db_url):
    engine = create_database_engine(db_url)
    head = migrate.head_revision()
    assert migrate.upgrade(engine, "0001") == migrate.Upgraded(None, "0001")
    assert migrate.upgrade(engine) == migrate.Upgraded("0001", head)
    assert migrate.upgrade(engine) == migrate.Upgraded(head, head) and not migrate.upgrade(engine).changed
    engine.dispose()


STARTER = """
import sys, time
from pathlib import Path
from db import cli
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.001)
raise SystemExit(cli.main(["--db", sys.argv[2], "upgrade"]))
"""


def test_concurrent_upgrades_each_log_what_they_did(db_url, tmp_path):
    """Three ``cxr-db upgrade`` at once on an empty database: one migrates, the others find it done, and each
    log line says which (the revision before is read under the migration's lock)."""
    import subprocess
    import sys
    import time

    go = tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", STARTER, str(go), db_url], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
    time.sleep(3)  # all imported and waiting, so they start together
    go.touch()
    results = [(p.wait(timeout=120), p.stderr.read()) for p in processes]
    assert [code for code, _ in results] == [0, 0, 0], results
    said = sorted(err.strip().rsplit(": ", 1)[-1] for _, err in results)
    head = migrate.head_revision()
    assert said == [f"already at {head}", f"already at {head}", f"migrated empty -> {head}"], results


def test_upgrading_to_0010_blanks_the_names_typed_at_failed_password_sign_ins(db_url):
    import datetime as dt

    import sqlalchemy as sa
    from sqlalchemy.exc import DatabaseError

    engine = create_database_engine(db_url)
    migrate.upgrade(engine, "0009")
    events = sa.table("events", sa.column("id", sa.Integer), sa.column("kind", sa.String),
                      sa.column("username", sa.String), sa.column("details", sa.JSON),
                      sa.column("created_at", sa.DateTime))
    typed = "Tr0ub4dor&3-horse"  # a password typed into the name field
    rows = [("sign_in_failed", "rad", {}), ("sign_in_failed", typed, {}), ("sign_in_refused", typed, {}),
            ("sign_in_failed", "ann@example.org", {"method": "oidc", "refused": "unknown_identity"}),
            ("sign_in_failed", None, {}), ("sign_in", "rad", {}), ("export_flagged", "rad", {})]
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO reviewers (username, role, password_hash, is_active, created_at) "
                                   "VALUES ('rad', 'reviewer', 'x', true, CURRENT_TIMESTAMP)"))
        connection.execute(sa.insert(events), [{"kind": kind, "username": name, "details": details,
                                                "created_at": dt.datetime(2026, 12, 1)}
                                               for kind, name, details in rows])
    migrate.upgrade(engine)
    with engine.connect() as connection:
        names = connection.execute(sa.select(events.c.username).order_by(events.c.id)).scalars().all()
    assert names == ["rad", None, None, "ann@example.org", None, "rad", "rad"]
    with pytest.raises(DatabaseError, match="append-only"), engine.begin() as connection:
        connection.execute(sa.text("UPDATE events SET username = 'x'"))  # the table is append-only again
    engine.dispose()
