from __future__ import annotations

import pytest

from db.engine import create_database_engine
from scoring.lock import RunLock, RunLockHeld


def test_one_run_at_a_time_on_each_backend(db_url):
    first, second = create_database_engine(db_url), create_database_engine(db_url)
    with RunLock(first):
        with pytest.raises(RunLockHeld, match="another scoring run"):
            with RunLock(second):
                pass
    with RunLock(second):  # released when the holder is done
        pass
    first.dispose()
    second.dispose()
