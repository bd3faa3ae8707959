from __future__ import annotations

import datetime as dt
import getpass
import io
import logging
import subprocess
import sys

import pytest
from sqlalchemy import select

from db import cli, events, migrate, signin
from db.clitools import printable
from db.engine import create_database_engine, read_session, write_session
from db.models import Reviewer, ScoringFailure, ScoringRun, utcnow
from db.paths import to_stored
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
    assert run_cli(monkeypatch, "--db", db_url, "add-reviewer", "carol", "--password-stdin",
                   stdin="12345678\n") == 1
    assert run_cli(monkeypatch, "--db", db_url, "add-reviewer", "dave", "--role", "admin", "--password-stdin",
                   stdin="long enough\n") == 1  # 11 characters: enough for a reviewer, not for an admin
    assert "commonly used" in caplog.text and "need at least 12" in caplog.text


def test_the_password_prompt_says_the_rule(monkeypatch, db_url):
    run_cli(monkeypatch, "--db", db_url, "upgrade")
    prompts = []
    monkeypatch.setattr(getpass, "getpass", lambda prompt: prompts.append(prompt) or "mauve otter lanterns")
    assert run_cli(monkeypatch, "--db", db_url, "add-reviewer", "alice", "--role", "admin") == 0
    assert run_cli(monkeypatch, "--db", db_url, "set-password", "alice") == 0
    assert "at least 12 characters" in prompts[0] and "not a common one" in prompts[0]
    assert "at least 8 characters, 12 for an admin" in prompts[2]


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
    with read_session(engine) as session:
        assert session.scalars(select(Reviewer.session_epoch)).one() == 2  # the new password, the deactivation


def test_unlock_lifts_the_sign_in_delays_of_an_account(monkeypatch, db_url, caplog):
    run_cli(monkeypatch, "--db", db_url, "upgrade")
    run_cli(monkeypatch, "--db", db_url, "add-reviewer", "alice", "--password-stdin", stdin="first password\n")
    engine = create_database_engine(db_url)
    attempt = utcnow() - dt.timedelta(minutes=20)
    for _ in range(signin.PAIR_ALLOWANCE + 10):  # each as soon as allowed: the last delay is the 15-minute cap
        with write_session(engine) as session:
            attempt += signin.wait_before_attempt(session, "alice", client="198.51.100.7", now=attempt) or \
                dt.timedelta(0)
            assert signin.sign_in(session, "alice", "guess", client="198.51.100.7", now=attempt).account is None
    with read_session(engine) as session:
        assert signin.wait_before_attempt(session, "alice", client="198.51.100.7") > dt.timedelta(minutes=10)
    caplog.clear()
    assert run_cli(monkeypatch, "--db", db_url, "unlock", "alice") == 0
    assert "sign-in delays of 'alice' lifted" in caplog.text
    with read_session(engine) as session:
        assert signin.wait_before_attempt(session, "alice", client="198.51.100.7") is None
        unlocked = events.recent_events(session, kinds=[events.ACCOUNT_UNLOCKED])
    assert [(e.username, e.details) for e in unlocked] == [(None, {"account": "alice"})]
    caplog.clear()
    assert run_cli(monkeypatch, "--db", db_url, "unlock", "nobody") == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["no reviewer 'nobody'"]


# --- what cxr-db prints: one record per line, nothing that drives the terminal ---------------------------------

@pytest.mark.parametrize("text, shown", [
    ("plain name.png", "plain name.png"),
    ("two\nlines", "two\\x0alines"),
    ("tab\there", "tab\\x09here"),
    ("\x1b[2J\x1b]0;owned\x07", "\\x1b[2J\\x1b]0;owned\\x07"),
    ("carriage\rreturn", "carriage\\x0dreturn"),
    ("del\x7f", "del\\x7f"),
    ("c1 csi\x9b31m", "c1 csi\\u009b31m"),
    ("line\u2028separator", "line\\u2028separator"),
    ("bidi \u202eevil", "bidi \\u202eevil"),
    ("undecodable \udcff byte", "undecodable \\xff byte"),
    ("a literal \\x1b", "a literal \\\\x1b"),
    ("Zoë 日本 ÿ", "Zoë 日本 ÿ"),
    ("no-break\u00a0space", "no-break\\u00a0space"),
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("tag \U000e0001", "tag \\U000e0001"),
    (None, "None"),
    (42, "42"),
])
def test_printable(text, shown):
    assert printable(text) == shown


def test_printable_is_unambiguous():
    tricky = ["\n", "\\x0a", "\\\n", "\\\\x0a", "\udcff", "\\xff", "ÿ", "\x85", "\\u0085", "\u2028", "\\u2028"]
    shown = [printable(text) for text in tricky]
    assert len(set(shown)) == len(tricky)
    assert all(char.isprintable() and char not in "\u2028\u2029" for text in shown for char in text)


def _failing_run(db_url, stored_paths_and_messages) -> None:
    engine = create_database_engine(db_url)
    with write_session(engine) as session:
        run = ScoringRun(host="test", arguments={})
        session.add(run)
        session.flush()
        session.add_all([ScoringFailure(run_id=run.id, path=path, reason="corrupt", message=message)
                         for path, message in stored_paths_and_messages])
    engine.dispose()


def test_failures_are_one_escaped_record_per_line(monkeypatch, db_url, capsys):
    """Paths stored as the scorer stores them (:func:`db.paths.to_stored`) print as they are stored (escaped once,
    not twice); a path stored raw, before paths were escaped, is escaped when printed."""
    run_cli(monkeypatch, "--db", db_url, "upgrade")
    names = ["/data/two\nlines.png", "/data/\x1b]0;owned\x07\x1b[2J.png", "/data/back\\slash.png", "/data/plain.png",
             "/data/undecodable-\udcff.png"]
    messages = ["cut at byte 12", "tab\tin it", "line\u2028separator", "ok", "\x1b[31mred"]
    stored = [(to_stored(name), message) for name, message in zip(names, messages, strict=True)]
    legacy = ("/data/old\nname\t\x1b[2J.png", "stored raw")
    _failing_run(db_url, [*stored, legacy])
    capsys.readouterr()
    assert run_cli(monkeypatch, "--db", db_url, "failures") == 0
    out = capsys.readouterr().out
    records = [record.split("\t") for record in out.split("\n")[:-1]]
    assert records == [["1", "corrupt", path, printable(message)] for path, message in stored] + \
        [["1", "corrupt", "/data/old\\x0aname\\x09\\x1b[2J.png", "stored raw"]]
    assert [record[2] for record in records[:3]] == ["/data/two\\x0alines.png",
                                                     "/data/\\x1b]0;owned\\x07\\x1b[2J.png", "/data/back\\\\slash.png"]
    assert records[4][2] == "/data/undecodable-\\xff.png" and "\x1b" not in out


def test_reviewers_show_escaped_display_names(monkeypatch, db_url, capsys):
    run_cli(monkeypatch, "--db", db_url, "upgrade")
    assert run_cli(monkeypatch, "--db", db_url, "add-reviewer", "alice", "--display-name",
                   "Dr A\x1b[8m hidden\nsecond line", "--password-stdin", stdin="long enough\n") == 0
    capsys.readouterr()
    assert run_cli(monkeypatch, "--db", db_url, "reviewers") == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "\x1b" not in out and "Dr A\\x1b[8m hidden\\x0asecond line" in out


def test_the_help_says_how_text_is_escaped():
    for argv in (["failures", "--help"], ["reviewers", "--help"], ["--help"]):
        result = subprocess.run([sys.executable, "-m", "db", *argv], capture_output=True, text=True)
        shown = " ".join(result.stdout.split())
        assert result.returncode == 0 and "escapes of stored file paths" in shown and "\\x1b ESC" in shown


def test_reset_sign_on_lifts_an_accounts_binding_to_a_provider_user(monkeypatch, db_url, caplog):
    run_cli(monkeypatch, "--db", db_url, "upgrade")
    run_cli(monkeypatch, "--db", db_url, "add-reviewer", "alice@example.org", "--password-stdin",
            stdin="first password\n")
    engine = create_database_engine(db_url)
    first, second = (signin.Identity("alice@example.org", "https://idp.example", subject, True)
                     for subject in ("old-id", "new-id"))
    with write_session(engine) as session:
        assert signin.sign_in_with_identity(session, first).outcome == "ok"
    with write_session(engine) as session:
        assert signin.sign_in_with_identity(session, second).outcome == "bound_to_another"
    assert run_cli(monkeypatch, "--db", db_url, "reset-sign-on", "alice@example.org") == 0
    assert "single sign-on binding of 'alice@example.org' lifted" in caplog.text
    with write_session(engine) as session:
        assert signin.sign_in_with_identity(session, second).outcome == "ok"
    assert run_cli(monkeypatch, "--db", db_url, "reset-sign-on", "nobody") == 1
