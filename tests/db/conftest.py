from __future__ import annotations

import pytest

from db import migrate
from db.engine import create_database_engine


@pytest.fixture
def engine(db_url):
    """A migrated database."""
    engine = create_database_engine(db_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()
