"""A consistent copy of a live SQLite database, through SQLite's online backup API.

The copy is taken in one step, inside one read transaction: in WAL mode writers carry on meanwhile and the
copy is the database as of one commit, never half of a batch. It is written beside the destination in a folder
of its own with a unique name (so backups at once never share a file), checked with ``PRAGMA integrity_check``,
made a standalone file (rollback journal, not WAL) and only then put in place, so a crash or a full disk leaves
the old backup or none. A dated copy never replaces another one. A new copy is readable by its owner only (mode
0600); a file replaced keeps its permissions.

Refused before anything is written: a destination that is the database itself or one of its side files (by
file identity, so also through symbolic and hard links: replacing the live file under its writers loses their
commits), and one that is neither a regular file nor a folder (a device, a FIFO, a socket). PostgreSQL has its
own tools (``pg_dump``), and this module refuses other backends.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from contextlib import closing  # sqlite3's own context manager commits but never closes
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from db.clitools import printable  # paths go into one log line
from db.errors import CannotRun
from db.files import fsync_folder

# A database's files: the database, its write-ahead log, its WAL index and its rollback journal.
SIDE_SUFFIXES = ("", "-wal", "-shm", "-journal")
# Where a file system has no hard links (FAT, exFAT: a USB drive), link() fails with one of these.
NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK)


class BackupError(CannotRun):
    """The backup could not be made; nothing was written at the destination."""


@dataclass(frozen=True)
class Backup:
    path: Path
    size_bytes: int
    seconds: float
    integrity: str


def backup_database(url: str, destination: Path) -> Backup:
    """Copy the SQLite database at ``url`` to ``destination`` (a file, or a folder to put a dated file in)."""
    source = sqlite_path(url)
    folder = _checked_destination(destination, source)
    started = time.perf_counter()
    try:
        staging = Path(tempfile.mkdtemp(prefix=".cxr-backup-", dir=folder))
    except OSError as exc:
        raise BackupError(f"cannot write in {printable(folder)}: {exc.strerror or exc}") from None
    try:
        partial = staging / "copy.db"
        integrity = _copy_and_check(source, partial, destination)
        os.chmod(partial, _copy_permissions(destination))
        target = _place(partial, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync_folder(target.parent)
    return Backup(target, target.stat().st_size, round(time.perf_counter() - started, 3), integrity)


def _copy_permissions(destination: Path) -> int:
    """A new copy is readable by its owner only: it holds everything the database does (patients' file paths,
    readings, password hashes). A file replaced each night keeps the permissions it was given, as an export does."""
    mode = _mode(destination)
    return stat.S_IMODE(mode) if mode is not None and stat.S_ISREG(mode) else 0o600


def sqlite_path(url: str) -> Path:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise BackupError(f"backup copies SQLite databases; for {parsed.get_backend_name()} use its own tools "
                          "(PostgreSQL: pg_dump)")
    if not parsed.database or parsed.database == ":memory:":
        raise BackupError("an in-memory database has nothing to back up")
    path = Path(parsed.database).expanduser()
    if not path.is_file():
        raise BackupError(f"database {printable(path)} does not exist")
    return path


def _checked_destination(destination: Path, source: Path) -> Path:
    """The folder the copy goes into, once ``destination`` is known to be safe to write."""
    mode = _mode(destination)
    if mode is not None and stat.S_ISDIR(mode):
        return destination
    if mode is not None and not stat.S_ISREG(mode):
        raise BackupError(f"backup destination {printable(destination)} is not a regular file or a folder (a "
                          "device, a FIFO or a socket); give a file or a folder")
    if is_live_file(destination, source):
        raise BackupError(f"backup destination {printable(destination)} is the database {printable(source)} itself "
                          "or one of its -wal, -shm or -journal files; writing there would destroy it, give another "
                          "file or a folder")
    if not destination.parent.is_dir():
        raise BackupError(f"folder {printable(destination.parent)} does not exist")
    return destination.parent


def _mode(path: Path) -> int | None:
    """What a write to ``path`` would reach (links followed); None if nothing is there yet."""
    try:
        return path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackupError(f"cannot use backup destination {printable(path)}: {exc.strerror or exc}") from None


def is_live_file(path: Path, source: Path) -> bool:
    """Whether ``path`` is the database ``source`` or one of its side files: the same file (a hard or symbolic
    link to it too), or, for a side file that does not exist right now, the same name in the same folder."""
    for live in _live_files(source):
        if _same_file(path, live) or (path.name == live.name and _same_file(path.parent, live.parent)):
            return True
    return False


def _live_files(source: Path) -> list[Path]:
    # SQLite names the side files after the path it opened, and resolves symbolic links to the database first.
    bases = {source, source.resolve()}
    return [base.with_name(base.name + suffix) for base in bases for suffix in SIDE_SUFFIXES]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _copy_and_check(source: Path, partial: Path, destination: Path) -> str:
    """The copy written to ``partial`` and checked; a failure of either file (a full disk, a file-size limit, a
    database that stays locked) is a :class:`BackupError` in one line."""
    try:
        _copy(source, partial)
        integrity = _check(partial)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {printable(source)} to {printable(destination)}: {_sqlite_problem(exc)}; "
                          "nothing was written there") from None
    except OSError as exc:
        raise BackupError(f"cannot back up {printable(source)} to {printable(destination)}: {exc.strerror or exc}; "
                          "nothing was written there") from None
    if integrity != "ok":
        raise BackupError(f"the copy of {printable(source)} failed its integrity check: {integrity}")
    return integrity


def _sqlite_problem(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    if name == "SQLITE_FULL":
        return "the disk is full"
    if name == "SQLITE_IOERR_WRITE":  # SQLite reports a file-size limit (EFBIG) as a failed write
        return f"{exc} while writing the copy (a full disk or a file-size limit)"
    return f"{exc} ({name})" if name else str(exc)


def _copy(source: Path, partial: Path) -> None:
    with closing(sqlite3.connect(source, timeout=30)) as src, \
            closing(sqlite3.connect(partial)) as dst:
        src.execute("PRAGMA busy_timeout=30000")
        src.backup(dst)  # pages=-1: one step, one read transaction, one consistent snapshot
        dst.execute("PRAGMA journal_mode=DELETE")  # a standalone file, no -wal beside it
        dst.commit()
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())


def _check(path: Path) -> str:
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        rows = [row[0] for row in db.execute("PRAGMA integrity_check")]
    return "ok" if rows == ["ok"] else "; ".join(rows[:5])


def _place(partial: Path, destination: Path) -> Path:
    """Put the checked copy in place: over the file ``destination`` (the same file each night), or under a new
    dated name in the folder ``destination``, never over another dated copy."""
    if not destination.is_dir():
        os.replace(partial, destination)
        return destination
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    for number in range(1, 1000):
        target = destination / (f"cxr-{stamp}.db" if number == 1 else f"cxr-{stamp}-{number}.db")
        if _put_new(partial, target):
            return target
    raise BackupError(f"{printable(destination)} already holds 999 copies dated {stamp}")


def _put_new(partial: Path, target: Path) -> bool:
    """Put ``partial`` at ``target`` unless something is there already (then False). link() fails rather than
    replace; where the file system has no hard links, an exclusive create reserves the name first."""
    try:
        os.link(partial, target)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    os.replace(partial, target)
    return True


