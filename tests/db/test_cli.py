from __future__ import annotations

import io
import subprocess
import sys

from sqlalchemy import select

from db import cli, migrate
from db.engine import create_database_engine, read_session
from db.models import Reviewer
from db.reviewers import authenticate


def run_cli(monkeypatch, *argv: str, stdin: str = "") -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return cli.main(list(argv))


def test_add_reviewer_stores_only_a_salted_hash(monkeypatch, db_url):
    assert run_cli(monkeypatch, "--db", db_url, "upgrade") == 0
    password = "correct horse battery"
    assert run_cli(monkeypatch, "--db", db_url, "add-reviewer", "alice", "--role", "admin",
                   "--password-stdin", stdin=password + "\n") == 0
    assert run_cli(monkeypatch, "--db", db_url, "add-reviewer", "bob", "--password-stdin",
                   stdin=password + "\n") == 0
    engine = create_database_engine(db_url)
    with read_session(engine) as session:
        alice, bob = session.scalars(select(Reviewer).order_by(Reviewer.username)).all()
        assert alice.role == "admin" and bob.role == "reviewer"
        assert password not in alice.password_hash and alice.password_hash.startswith("$argon2id$")
        assert alice.password_hash != bob.password_hash  # salted
        assert authenticate(session, "alice", password) is not None
        assert authenticate(session, "alice", "wrong password") is None
        assert authenticate(session, "nobody", password) is None


def test_add_reviewer_refuses_duplicates_and_short_passwords(monkeypatch, db_url, caplog):
    run_cli(monkeypatch, "--db", db_url, "upgrade")
    assert run_cli(monkeypatch, "--db", db_url, "add-reviewer", "alice", "--password-stdin",
                   stdin="long enough\n") == 0
    assert run_cli(monkeypatch, "--db", db_url, "add-reviewer", "alice", "--password-stdin",
                   stdin="long enough\n") == 1
    assert run_cli(monkeypatch, "--db", db_url, "add-reviewer", "carol", "--password-stdin", stdin="short\n") == 1
    assert "already exists" in caplog.text and "too short" in caplog.text


def test_commands_refuse_an_unmigrated_database(monkeypatch, db_url, caplog):
    assert run_cli(monkeypatch, "--db", db_url, "add-reviewer", "alice", "--password-stdin",
                   stdin="long enough\n") == 2
    assert "cxr-db upgrade" in caplog.text


def test_console_script_and_module_entry_point(db_url):
    result = subprocess.run([sys.executable, "-m", "db", "--db", db_url, "upgrade"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    result = subprocess.run(["cxr-db", "--db", db_url, "current"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    head = migrate.head_revision()
    assert f"database: {head}; software: {head}" in result.stdout


def test_password_change_deactivation_and_listing(monkeypatch, db_url, capsys, caplog):
    run_cli(monkeypatch, "--db", db_url, "upgrade")
    assert run_cli(monkeypatch, "--db", db_url, "add-reviewer", "alice", "--password-stdin",
                   stdin="first password\n") == 0
    assert run_cli(monkeypatch, "--db", db_url, "set-password", "alice", "--password-stdin",
                   stdin="second password\n") == 0
    engine = create_database_engine(db_url)
    with read_session(engine) as session:
        assert authenticate(session, "alice", "first password") is None
        assert authenticate(session, "alice", "second password") is not None
    assert run_cli(monkeypatch, "--db", db_url, "deactivate", "alice") == 0
    with read_session(engine) as session:
        assert authenticate(session, "alice", "second password") is None  # deactivated: no login
    capsys.readouterr()
    assert run_cli(monkeypatch, "--db", db_url, "reviewers") == 0
    listing = capsys.readouterr().out
    assert "alice" in listing and "deactivated" in listing
    assert run_cli(monkeypatch, "--db", db_url, "activate", "alice") == 0
    with read_session(engine) as session:
        assert authenticate(session, "alice", "second password") is not None
    assert run_cli(monkeypatch, "--db", db_url, "set-password", "nobody", "--password-stdin",
                   stdin="whatever pass\n") == 1
    assert "no reviewer 'nobody'" in caplog.text
