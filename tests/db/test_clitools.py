"""The CLI frame: options every command shares, one base error for "cannot run" and the one place that turns
it into an exit code and one line, and the password policy's own error."""

from __future__ import annotations

import argparse
import io
import logging
import shlex
import subprocess
import sys
from pathlib import Path

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

REPO_ROOT = Path(__file__).resolve().parents[2]

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


def test_a_reader_that_stops_reading_ends_the_command_quietly():
    """`cxr-db failures | head`: the output's reader goes away; no "cannot go on" line, no traceback at exit."""
    script = ("import logging, sys\nfrom db.clitools import run_command\n"
              "def listing():\n    for n in range(200_000):\n        print(f'line {n}')\n    return 0\n"
              "sys.exit(run_command(logging.getLogger('cxr.test'), None, listing))\n")
    done = subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} | head -1; "
                                         "echo \"status ${PIPESTATUS[0]}\" >&2"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.stdout == "line 0\n"
    assert done.stderr.strip() == "status 141", done.stderr


def test_a_broken_pipe_elsewhere_is_still_a_refusal(caplog):
    """A socket's broken pipe (a PACS that hung up) is not the output's reader going away."""
    def sends():
        raise BrokenPipeError(32, "Broken pipe")
    assert run_command(logging.getLogger("cxr.test"), None, sends) == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "cannot go on: BrokenPipeError: [Errno 32] Broken pipe (-v shows where)"]
