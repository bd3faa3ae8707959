from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, make_url

from db import migrate
from db.engine import create_database_engine


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty database on each backend the product supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cxr.db'}"
        return
    server = make_url(request.getfixturevalue("postgres_url"))
    name = f"cxr_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield server.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'cxr.db'}"


@pytest.fixture
def engine(db_url):
    """A migrated database."""
    engine = create_database_engine(db_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()
