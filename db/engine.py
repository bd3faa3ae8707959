"""One engine per process, with the SQLite settings that make concurrent writers safe.

SQLite gets WAL, a busy timeout, foreign keys and ``synchronous=NORMAL`` on every connection. pysqlite's
own transaction handling is switched off so that SQLAlchemy emits BEGIN itself: a read-then-write
transaction opened with :func:`write_session` begins ``IMMEDIATE``, taking the write lock up front, so two
writers queue behind the busy timeout instead of failing with "database is locked" on lock upgrade.
On PostgreSQL the same code runs unchanged; only the URL differs.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from db import config

SQLITE_BUSY_TIMEOUT_MS = 30_000
_IMMEDIATE = "cxr_begin_immediate"
_engines: dict[str, Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: :func:`db.config.database_url`)."""
    resolved = config.database_url(url)
    if resolved not in _engines:
        _engines[resolved] = create_database_engine(resolved)
    return _engines[resolved]


def create_database_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _configure_sqlite_connection(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy, not pysqlite, decides when to BEGIN
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _switch_to_wal(cursor) -> None:
    """``PRAGMA journal_mode=WAL``, retried within the busy timeout: converting a new database needs its exclusive
    lock, and SQLite answers "database is locked" at once, without its busy handler, when another connection is
    converting or writing it (two commands started together on a fresh cxr.db; seen in CI)."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _begin_sqlite_transaction(connection) -> None:
    immediate = connection.get_execution_options().get(_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextlib.contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for reading; it is rolled back at the end."""
    with Session(engine, expire_on_commit=False) as session:
        yield session


def writer(engine: Engine) -> Engine:
    """The engine whose transactions begin IMMEDIATE on SQLite (the engine itself elsewhere)."""
    return engine.execution_options(**{_IMMEDIATE: True}) if is_sqlite(engine) else engine


@contextlib.contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """One write transaction: committed when the block ends, rolled back if it raises.

    On SQLite it begins IMMEDIATE, so reads inside it see the state the write will be applied to.
    """
    with Session(writer(engine), expire_on_commit=False) as session, session.begin():
        yield session
