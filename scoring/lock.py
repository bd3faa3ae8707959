"""One scoring run per database at a time.

SQLite: an exclusive POSIX record lock (``lockf``) on a file beside the database. Unlike ``flock``, it is
not inherited by forked children such as DataLoader workers, so the kernel releases it the moment the
scorer itself dies, even while orphaned workers wind down. PostgreSQL: a session-level advisory lock held
on a dedicated connection; the server releases it when that connection closes, which after a ``kill -9``
happens once the forked workers sharing its socket have exited too (they notice their parent is gone
within seconds). Either way a killed run never blocks the next one for long.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy import Engine, text

from db import config

ADVISORY_LOCK_KEY = 0x43585253  # "CXRS"
# POSIX locks belong to a process: a second lockf from the same process would "succeed", and closing its
# descriptor would drop the first one's lock. So the process remembers which lock files it holds.
_held_here: set[Path] = set()


class RunLockHeld(RuntimeError):
    """Another scoring run holds the lock on this database."""


class RunLock:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._handle = None
        self._path: Path | None = None
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
            _held_here.discard(self._path)
            self._handle.close()  # closing the descriptor releases the lock

    def _acquire_file(self) -> None:
        path = lock_file_for(self._engine)
        if path in _held_here:
            raise RunLockHeld(f"another scoring run in this process (pid {os.getpid()}) holds {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunLockHeld(f"another scoring run ({holder}) holds {path}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._handle, self._path = handle, path
        _held_here.add(path)

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
