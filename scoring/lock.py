"""One scoring run per database at a time.

SQLite: an exclusive POSIX record lock (``lockf``) on a lock file named after the database file's identity
(device and inode), in the host's lock folder (``/run/lock``, else the temporary folder). A name would not
do: a symlink, a hard link or a relative path reaches the same database under another name, and two runs
through two names would both score everything. The database file itself is not locked: SQLite holds POSIX
locks on it, and closing any other descriptor of the file would silently drop them. Unlike ``flock``,
``lockf`` is not inherited by forked children such as DataLoader workers, so the kernel releases it the moment the
scorer itself dies, even while orphaned workers wind down. PostgreSQL: a session-level advisory lock held
on a dedicated connection; the server releases it when that connection closes, which after a ``kill -9``
happens once the forked workers sharing its socket have exited too (they notice their parent is gone
within seconds), so a held advisory lock is tried again for ``ADVISORY_LOCK_WAIT_S`` before the run steps aside.
Either way a killed run never blocks the next one for long.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine, text

from db import config
from db.errors import CannotRun

ADVISORY_LOCK_KEY = 0x43585253  # "CXRS"
# A run started right after another was killed would find the killed run's session still holding the advisory lock
# for a moment (until the server has seen the connection close: seen in the Ray engine's kill test, exit 75 instead
# of the resumed run). So a held lock is asked for again for this long before the run steps aside.
ADVISORY_LOCK_WAIT_S = 3.0
# POSIX locks belong to a process: a second lockf from the same process would "succeed", and closing its
# descriptor would drop the first one's lock. So the process remembers which lock files it holds.
_held_here: set[Path] = set()


class RunLockHeld(CannotRun, RuntimeError):
    """Another scoring run holds the lock on this database: not an error, the run steps aside (EX_TEMPFAIL)."""

    exit_code = 75
    log_level = logging.WARNING


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
            raise RunLockHeld(f"another scoring run in this process (pid {os.getpid()}) holds {path}; not starting")
        handle = _open_lock_file(path)
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunLockHeld(f"another scoring run ({holder}) holds {path}; not starting") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._handle, self._path = handle, path
        _held_here.add(path)

    def _acquire_advisory(self) -> None:
        connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        deadline = time.monotonic() + ADVISORY_LOCK_WAIT_S
        while not connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}).scalar():
            if time.monotonic() >= deadline:
                connection.close()
                raise RunLockHeld("another scoring run holds the PostgreSQL advisory lock "
                                  f"{ADVISORY_LOCK_KEY} on this database; not starting")
            time.sleep(0.1)
        self._connection = connection


def _open_lock_file(path: Path):
    """Open (creating it if need be) a lock file that every user may lock: mode 0666 in a sticky folder.

    An existing file is opened without O_CREAT, which fs.protected_regular refuses for other users' files
    in world-writable sticky folders such as /run/lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_RDWR)
            break
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            os.fchmod(fd, 0o666)  # not narrowed by the umask
            break
        except FileExistsError:
            continue  # created by another process in between: open it
    return os.fdopen(fd, "r+")


def lock_file_for(engine: Engine) -> Path:
    database = engine.url.database
    if not database or database == ":memory:":
        return config.ensure_home() / "score.lock"
    path = Path(database).expanduser()
    if not path.exists():
        _create_empty_database(path)
    info = path.stat()  # follows symlinks: every name of the file gives the same device and inode
    return lock_folder() / f"cxr-score-{info.st_dev}-{info.st_ino}.lock"


def lock_folder() -> Path:
    """Shared by every user of this host: a database's lock must be found whoever runs the scorer."""
    for folder in (Path("/run/lock"), Path(tempfile.gettempdir())):
        if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
            return folder
    raise OSError(f"no writable lock folder (tried /run/lock and {tempfile.gettempdir()})")


def _create_empty_database(path: Path) -> None:
    """An empty file is an empty SQLite database; it must exist before it has an inode to lock on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Patient data: readable by its owner only (the scorer, the dashboard and the receiver run as one user;
        # SQLite gives its -wal and -shm files the database's permissions)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # another process created it first: the same file
