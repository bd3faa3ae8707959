from __future__ import annotations

import sqlite3

import pytest

from db import migrate
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
    assert not list(tmp_path.glob(".*.partial"))
    engine.dispose()


def test_backup_into_a_folder_gets_a_dated_name(tmp_path, sqlite_url):
    migrate.ensure_schema(create_database_engine(sqlite_url))
    (tmp_path / "backups").mkdir()
    made = backup_database(sqlite_url, tmp_path / "backups")
    assert made.path.parent == tmp_path / "backups" and made.path.name.startswith("cxr-")


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
