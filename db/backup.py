"""A consistent copy of a live SQLite database, through SQLite's online backup API.

The copy is taken in one step, inside one read transaction: in WAL mode writers carry on meanwhile and the
copy is the database as of one commit, never half of a batch. It is written beside the destination under a
temporary name, checked with ``PRAGMA integrity_check``, made a standalone file (rollback journal, not WAL)
and only then renamed into place, so a crash leaves the old backup or none. PostgreSQL has its own tools
(``pg_dump``), and this module refuses other backends.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time
from contextlib import closing  # sqlite3's own context manager commits but never closes
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from db.errors import CannotRun


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
    target = _target(destination)
    partial = target.with_name(f".{target.name}.partial")
    started = time.perf_counter()
    try:
        _copy(source, partial)
        integrity = _check(partial)
        if integrity != "ok":
            raise BackupError(f"the copy of {source} failed its integrity check: {integrity}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    _fsync_folder(target.parent)
    return Backup(target, target.stat().st_size, round(time.perf_counter() - started, 3), integrity)


def sqlite_path(url: str) -> Path:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise BackupError(f"backup copies SQLite databases; for {parsed.get_backend_name()} use its own tools "
                          "(PostgreSQL: pg_dump)")
    if not parsed.database or parsed.database == ":memory:":
        raise BackupError("an in-memory database has nothing to back up")
    path = Path(parsed.database).expanduser()
    if not path.is_file():
        raise BackupError(f"database {path} does not exist")
    return path


def _target(destination: Path) -> Path:
    if destination.is_dir():
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return destination / f"cxr-{stamp}.db"
    if not destination.parent.is_dir():
        raise BackupError(f"folder {destination.parent} does not exist")
    return destination


def _copy(source: Path, partial: Path) -> None:
    partial.unlink(missing_ok=True)
    with closing(sqlite3.connect(source, timeout=30)) as src, \
            closing(sqlite3.connect(partial)) as dst:
        src.execute("PRAGMA busy_timeout=30000")
        src.backup(dst)  # pages=-1: one step, one read transaction, one consistent snapshot
        dst.execute("PRAGMA journal_mode=DELETE")  # a standalone file, no -wal beside it
        dst.commit()
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())


def _check(path: Path) -> str:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = [row[0] for row in db.execute("PRAGMA integrity_check")]
    return "ok" if rows == ["ok"] else "; ".join(rows[:5])


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
