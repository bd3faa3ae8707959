from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from db import migrate
from db.engine import create_database_engine
from scoring.lock import ADVISORY_LOCK_WAIT_S, RunLock, RunLockHeld


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


HOLD_THEN_FORK = """
import os, sys, time
from db.engine import create_database_engine
from scoring.lock import RunLock
with RunLock(create_database_engine(sys.argv[1])):
    if os.fork() == 0:  # a worker with its copy of the lock's socket, which outlives the scorer for a second
        time.sleep(1)
        os._exit(0)
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_run_right_after_a_killed_one_waits_for_its_session_to_end(db_url):
    """kill -9 of a scorer whose worker still holds a copy of the lock's connection: the server keeps the session,
    and its advisory lock, until the worker is gone too. The next run waits for that instead of stepping aside."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THEN_FORK, db_url], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=30)
    engine = create_database_engine(db_url)
    started = time.monotonic()
    with RunLock(engine):
        waited = time.monotonic() - started
    engine.dispose()
    assert 0.5 < waited < ADVISORY_LOCK_WAIT_S  # the worker's second, not the whole wait


HOLD_LOCK = """
import sys, time
from db.engine import create_database_engine
from scoring.lock import RunLock
with RunLock(create_database_engine(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture
def lock_held_by_another_process():
    """Hold the run lock through ``url`` in a separate process (POSIX locks are per process)."""
    holders = []

    def hold(url: str) -> None:
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, url], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout.readline().strip() == "held"

    yield hold
    for holder in holders:
        holder.stdin.close()
        holder.wait(timeout=30)


def _other_name(kind: str, database: Path, tmp_path: Path, monkeypatch) -> str:
    if kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "link.db").symlink_to(database)
        return f"sqlite:///{tmp_path / 'elsewhere' / 'link.db'}"
    if kind == "hard link":
        (tmp_path / "other-folder").mkdir()
        os.link(database, tmp_path / "other-folder" / "same.db")
        return f"sqlite:///{tmp_path / 'other-folder' / 'same.db'}"
    monkeypatch.chdir(database.parent.parent)
    return f"sqlite:///{database.parent.name}/{database.name}"  # relative to the working folder


@pytest.mark.parametrize("kind", ["symlink", "hard link", "relative path"])
def test_another_name_for_the_same_database_finds_the_lock_held(kind, tmp_path, monkeypatch,
                                                                lock_held_by_another_process):
    database = tmp_path / "data" / "cxr.db"
    database.parent.mkdir()
    engine = create_database_engine(f"sqlite:///{database}")
    migrate.ensure_schema(engine)  # a real database file, with an inode to link to
    engine.dispose()
    other = create_database_engine(_other_name(kind, database, tmp_path, monkeypatch))
    lock_held_by_another_process(f"sqlite:///{database}")
    with pytest.raises(RunLockHeld, match="another scoring run"):
        with RunLock(other):
            pass
    other.dispose()


def test_a_database_that_does_not_exist_yet_is_locked_by_identity_too(tmp_path, lock_held_by_another_process):
    url = f"sqlite:///{tmp_path / 'new' / 'cxr.db'}"
    lock_held_by_another_process(url)  # creates the (empty) database file to get its inode
    assert (tmp_path / "new" / "cxr.db").is_file()
    (tmp_path / "alias.db").symlink_to(tmp_path / "new" / "cxr.db")
    with pytest.raises(RunLockHeld):
        with RunLock(create_database_engine(f"sqlite:///{tmp_path / 'alias.db'}")):
            pass


def test_a_database_the_lock_creates_is_readable_by_its_owner_only(tmp_path):
    engine = create_database_engine(f"sqlite:///{tmp_path / 'cxr.db'}")
    try:
        with RunLock(engine):
            migrate.ensure_schema(engine)
    finally:
        engine.dispose()
    for name in ("cxr.db", "cxr.db-wal", "cxr.db-shm"):
        if (tmp_path / name).exists():
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


def test_different_databases_do_not_share_a_lock(tmp_path, lock_held_by_another_process):
    lock_held_by_another_process(f"sqlite:///{tmp_path / 'one.db'}")
    with RunLock(create_database_engine(f"sqlite:///{tmp_path / 'two.db'}")):
        pass


def test_the_scorer_through_a_symlink_exits_75(tmp_path, tiny_checkpoint, lock_held_by_another_process):
    database = tmp_path / "cxr.db"
    lock_held_by_another_process(f"sqlite:///{database}")
    (tmp_path / "link.db").symlink_to(database)
    (tmp_path / "images").mkdir()
    result = subprocess.run([sys.executable, "-m", "scoring", "--db", f"sqlite:///{tmp_path / 'link.db'}",
                             "--model", str(tiny_checkpoint), str(tmp_path / "images")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 75, result.stderr
