from __future__ import annotations

import pytest

from db import migrate
from db.engine import create_database_engine


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'cxr.db'}"


@pytest.fixture
def engine(db_url):
    """A migrated SQLite database in a temporary folder."""
    engine = create_database_engine(db_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()
