"""One scoring run per database at a time.

SQLite: an exclusive ``flock`` on a file beside the database. PostgreSQL: a session-level advisory lock
held on a dedicated connection. Either way the operating system or the server releases the lock when the
holder dies, so a run killed with ``kill -9`` never blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy import Engine, text

from db import config

ADVISORY_LOCK_KEY = 0x43585253  # "CXRS"


class RunLockHeld(RuntimeError):
    """Another scoring run holds the lock on this database."""


class RunLock:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._handle = None
        self._connection = None

    def __enter__(self) -> RunLock:
        if self._engine.dialect.name == "postgresql":
            self._acquire_advisory()
        else:
            self._acquire_file()
        return self

    def __exit__(self, *exc) -> None:
        if self._connection is not None:
            self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
            self._connection.close()
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock

    def _acquire_file(self) -> None:
        path = lock_file_for(self._engine)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunLockHeld(f"another scoring run ({holder}) holds {path}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def _acquire_advisory(self) -> None:
        connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        got = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}).scalar()
        if not got:
            connection.close()
            raise RunLockHeld("another scoring run holds the PostgreSQL advisory lock "
                              f"{ADVISORY_LOCK_KEY} on this database")
        self._connection = connection


def lock_file_for(engine: Engine) -> Path:
    database = engine.url.database
    if database and database != ":memory:":
        return Path(database).expanduser().resolve().with_name(Path(database).name + ".score.lock")
    return config.ensure_home() / "score.lock"
