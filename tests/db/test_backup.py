from __future__ import annotations

import datetime as dt
import hashlib
import os
import resource
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from db import backup, migrate
from db.backup import BackupError, backup_database
from db.engine import create_database_engine, write_session
from db.reviewers import add_reviewer


def test_backup_is_a_standalone_checked_copy(tmp_path, sqlite_url):
    engine = create_database_engine(sqlite_url)
    migrate.ensure_schema(engine)
    with write_session(engine) as session:
        add_reviewer(session, "ada", "a long enough password")
    made = backup_database(sqlite_url, tmp_path / "copy.db")
    assert made.integrity == "ok" and made.path == tmp_path / "copy.db" and made.size_bytes > 0
    assert not (tmp_path / "copy.db-wal").exists()
    with sqlite3.connect(made.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert db.execute("SELECT username FROM reviewers").fetchall() == [("ada",)]
    assert not list(tmp_path.glob(".*"))
    engine.dispose()


def test_backup_into_a_folder_gets_a_dated_name(tmp_path, sqlite_url):
    migrate.ensure_schema(create_database_engine(sqlite_url))
    (tmp_path / "backups").mkdir()
    made = backup_database(sqlite_url, tmp_path / "backups")
    assert made.path.parent == tmp_path / "backups" and made.path.name.startswith("cxr-")


@pytest.mark.parametrize("into", ["file", "folder"])
def test_a_new_copy_is_readable_by_its_owner_only(tmp_path, sqlite_url, into):
    migrate.ensure_schema(create_database_engine(sqlite_url))
    old_umask = os.umask(0o022)
    try:
        destination = tmp_path / "copy.db" if into == "file" else tmp_path
        made = backup_database(sqlite_url, destination)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(made.path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_a_replaced_copy_keeps_its_permissions(tmp_path, sqlite_url, mode):
    migrate.ensure_schema(create_database_engine(sqlite_url))
    destination = tmp_path / "copy.db"
    backup_database(sqlite_url, destination)
    destination.chmod(mode)  # as the operator set it, for a backup agent of their group say
    backup_database(sqlite_url, destination)
    assert stat.S_IMODE(destination.stat().st_mode) == mode


@pytest.mark.parametrize(("url", "message"), [
    ("postgresql+psycopg://cxr@localhost/cxr", "pg_dump"),
    ("sqlite://", "in-memory"),
    ("sqlite:////nonexistent/cxr.db", "does not exist"),
])
def test_backup_refuses_what_it_cannot_copy(url, message, tmp_path):
    with pytest.raises(BackupError, match=message):
        backup_database(url, tmp_path / "copy.db")
    assert not (tmp_path / "copy.db").exists()


def test_the_cli_command(tmp_path, sqlite_url, capsys):
    from db import cli

    assert cli.main(["--db", sqlite_url, "upgrade"]) == 0
    assert cli.main(["--db", sqlite_url, "backup", str(tmp_path / "nightly.db")]) == 0
    assert "integrity ok" in capsys.readouterr().out
    assert cli.main(["--db", sqlite_url, "backup", str(tmp_path / "no-such-folder" / "x.db")]) == 2


# --- the live database and its side files are never a destination ---------------------------------------------

def _same_path(db: Path) -> Path:
    return db


def _symlink(db: Path) -> Path:
    (db.parent / "link.db").symlink_to(db)
    return db.parent / "link.db"


def _hard_link(db: Path) -> Path:
    os.link(db, db.parent / "hard.db")
    return db.parent / "hard.db"


def _through_a_linked_folder(db: Path) -> Path:
    (db.parent.parent / "linked-folder").symlink_to(db.parent)
    return db.parent.parent / "linked-folder" / db.name


def _relative(db: Path) -> Path:
    return Path(os.path.relpath(db))


def _side_file(suffix: str):
    def destination(db: Path) -> Path:
        return db.with_name(db.name + suffix)
    destination.__name__ = f"the {suffix} file"
    return destination


@pytest.fixture
def live_db(tmp_path) -> Path:
    """A migrated SQLite database in WAL mode, held open by a connection (so its -wal and -shm files exist)."""
    folder = tmp_path / "data"
    folder.mkdir()
    url = f"sqlite:///{folder / 'cxr.db'}"
    engine = create_database_engine(url)
    migrate.ensure_schema(engine)
    with write_session(engine) as session:
        add_reviewer(session, "ada", "a long enough password")
    with engine.connect():
        yield folder / "cxr.db"
    engine.dispose()


@pytest.mark.parametrize("destination", [
    _same_path, _symlink, _hard_link, _through_a_linked_folder, _relative, _side_file("-wal"),
    _side_file("-shm"), _side_file("-journal"),  # -journal does not exist in WAL mode: refused by its name
], ids=lambda f: f.__name__.strip("_"))
def test_the_live_database_and_its_side_files_are_refused(live_db, destination, monkeypatch):
    monkeypatch.chdir(live_db.parent.parent)
    target = destination(live_db)
    files_before = _files(live_db.parent)
    with pytest.raises(BackupError, match="is the database .* itself or one of its -wal, -shm or -journal files"):
        backup_database(f"sqlite:///{live_db}", target)
    assert _files(live_db.parent) == files_before  # the same files, the same contents: nothing replaced
    with sqlite3.connect(live_db) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT username FROM reviewers").fetchall() == [("ada",)]


def _files(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {p.name: (p.lstat().st_ino, p.lstat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest()
                     if p.is_file() and not p.is_symlink() else "")
            for p in folder.iterdir()}


# --- only a regular file or a folder ------------------------------------------------------------------------------

def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _full_device(path: Path) -> None:
    """A node for the same device as /dev/full (the issue's case), made here so the real one is never at risk."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("mknod needs root (CAP_MKNOD); the FIFO and socket cases cover the same check")


def _socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays


@pytest.mark.parametrize("make", [_fifo, _full_device, _socket], ids=lambda f: f.__name__.strip("_"))
def test_a_destination_that_is_no_file_or_folder_is_refused(tmp_path, sqlite_url, make):
    migrate.ensure_schema(create_database_engine(sqlite_url))
    node = tmp_path / "node"
    make(node)
    mode = node.lstat().st_mode
    with pytest.raises(BackupError, match="is not a regular file or a folder"):
        backup_database(sqlite_url, node)
    assert node.lstat().st_mode == mode  # still the FIFO, device or socket it was
    assert not list(tmp_path.glob(".*"))


# --- backups at once and in the same second ---------------------------------------------------------------------

@pytest.fixture
def frozen_clock(monkeypatch) -> str:
    """Every backup in the same second, as two nightly jobs started together are."""
    moment = dt.datetime(2026, 12, 5, 2, 0, 0, tzinfo=dt.UTC)
    frozen = type("FrozenDatetime", (dt.datetime,), {"now": classmethod(lambda cls, tz=None: moment)})
    monkeypatch.setattr(backup, "dt", types.SimpleNamespace(datetime=frozen, UTC=dt.UTC))
    return "20261205T020000Z"


def test_a_dated_copy_never_replaces_another(tmp_path, sqlite_url, frozen_clock):
    migrate.ensure_schema(create_database_engine(sqlite_url))
    folder = tmp_path / "backups"
    folder.mkdir()
    (folder / f"cxr-{frozen_clock}.db").write_bytes(b"an earlier copy")
    made = [backup_database(sqlite_url, folder).path.name for _ in range(2)]
    assert made == [f"cxr-{frozen_clock}-2.db", f"cxr-{frozen_clock}-3.db"]
    assert (folder / f"cxr-{frozen_clock}.db").read_bytes() == b"an earlier copy"


@pytest.mark.parametrize("at_once", [2, 4])
def test_backups_at_once_each_make_their_own_copy(tmp_path, sqlite_url, frozen_clock, at_once):
    engine = create_database_engine(sqlite_url)
    migrate.ensure_schema(engine)
    with write_session(engine) as session:
        add_reviewer(session, "ada", "a long enough password")
    folder = tmp_path / "backups"
    folder.mkdir()
    start, made, failed = threading.Barrier(at_once), [], []

    def one() -> None:
        start.wait()
        try:
            made.append(backup_database(sqlite_url, folder))
        except Exception as exc:  # noqa: BLE001 - collected and asserted on below
            failed.append(exc)

    threads = [threading.Thread(target=one) for _ in range(at_once)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failed == []
    assert sorted(p.name for p in folder.iterdir()) == sorted(m.path.name for m in made)
    assert len({m.path for m in made}) == at_once
    for copy in made:
        with sqlite3.connect(copy.path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert db.execute("SELECT username FROM reviewers").fetchall() == [("ada",)]
    engine.dispose()


# --- a full disk or a file-size limit ---------------------------------------------------------------------------

@pytest.fixture
def big_db(tmp_path) -> Path:
    """A 3 MB SQLite database: too big for the 2 MiB file system and the 1 MiB file-size limit below."""
    path = tmp_path / "big.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE blobs (data BLOB)")
        db.executemany("INSERT INTO blobs VALUES (randomblob(4000))", [()] * 750)
    return path


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # Python ignores SIGXFSZ: writes get EFBIG


@pytest.mark.parametrize("fault", ["full disk", "file-size limit"])
@pytest.mark.parametrize("into", ["file", "folder"])
def test_backup_onto_a_full_disk_is_exit_2_one_line_and_leaves_nothing(tmp_path, big_db, request, fault, into):
    folder = request.getfixturevalue("small_disk") if fault == "full disk" else tmp_path / "disk"
    folder.mkdir(exist_ok=True)
    (folder / "nightly.db").write_bytes(b"last night's copy")
    destination = folder / "nightly.db" if into == "file" else folder
    result = subprocess.run([sys.executable, "-m", "db", "--db", f"sqlite:///{big_db}", "backup", str(destination)],
                            capture_output=True, text=True, timeout=120,
                            preexec_fn=_limit_file_size if fault == "file-size limit" else None)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and " ERROR cxr.db: cannot back up " in lines[0], result.stderr
    assert ("the disk is full" if fault == "full disk" else "a full disk or a file-size limit") in lines[0]
    assert result.stdout == ""
    assert [p.name for p in folder.iterdir()] == ["nightly.db"]  # no partial file, no temporary folder
    assert (folder / "nightly.db").read_bytes() == b"last night's copy"
