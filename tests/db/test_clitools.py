"""The CLI frame: options every command shares, one base error for "cannot run" and the one place that turns
it into an exit code and one line, and the password policy's own error."""

from __future__ import annotations

import argparse
import io
import logging
import sys

import pytest

from db import cli as db_cli
from db import export, reviewers
from db.clitools import run_command
from db.errors import CannotRun
from db.passwords import PasswordPolicyError, check_password
from model_training import cli as train_cli
from model_training import demo
from scoring import cli as score_cli
from scoring.lock import RunLockHeld

log = logging.getLogger("cxr.test")


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option of a parser and of its sub-commands, by option string (sub-commands overwrite alike)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.update(options(sub))
        for flag in action.option_strings:
            found[flag] = action
    return found


PARSERS = {"cxr-db": db_cli.build_parser, "cxr-score": score_cli.build_parser, "cxr-train": train_cli.build_parser,
           "cxr-export-flagged": export.build_parser, "cxr-demo": demo.build_parser}


@pytest.mark.parametrize("flag", ["--db", "-v", "--device"])
def test_shared_options_have_one_definition(flag):
    defined = {name: options(build())[flag] for name, build in PARSERS.items() if flag in options(build())}
    assert len(defined) == (2 if flag == "--device" else len(PARSERS))  # --device: cxr-score, cxr-train
    assert len({(a.help, a.metavar, tuple(a.choices or ())) for a in defined.values()}) == 1, defined


def test_cannot_run_is_its_exit_code_and_one_line(caplog):
    def no_model() -> int:
        raise CannotRun("no active model version; promote one")

    assert run_command(log, None, no_model) == 2
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("ERROR", "no active model version; "
                                                                                 "promote one")]


def test_a_held_run_lock_steps_aside_with_75_and_a_warning(caplog):
    def locked() -> int:
        raise RunLockHeld("another scoring run (pid 1) holds the lock; not starting")

    assert run_command(log, None, locked) == 75
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_other_errors_are_not_swallowed():
    def bug() -> int:
        raise ValueError("a bug, not a condition")

    with pytest.raises(ValueError, match="a bug"):
        run_command(log, None, bug)


def test_an_unreachable_database_is_one_line_without_its_password(caplog):
    url = "postgresql+psycopg://cxr:Sup3rSecretPassw0rd@127.0.0.1:9/cxr"  # port 9 (discard): nothing listens
    assert db_cli.main(["--db", url, "current"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "unreachable" in errors[0] and "127.0.0.1:9" in errors[0]
    assert "Sup3rSecretPassw0rd" not in caplog.text


def test_the_password_policy_has_its_own_error(monkeypatch, db_url, caplog):
    with pytest.raises(PasswordPolicyError, match="too short"):
        check_password("short", role="reviewer", username="alice")
    assert db_cli.main(["--db", db_url, "upgrade"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert db_cli.main(["--db", db_url, "add-reviewer", "alice", "--password-stdin"]) == 1
    assert "too short" in caplog.text

    def broken(*args, **kwargs):
        raise ValueError("an unrelated failure")

    monkeypatch.setattr(reviewers, "add_reviewer", broken)  # no longer mistaken for a refused password
    monkeypatch.setattr(sys, "stdin", io.StringIO("long enough\n"))
    with pytest.raises(ValueError, match="unrelated"):
        db_cli.main(["--db", db_url, "add-reviewer", "alice", "--password-stdin"])
