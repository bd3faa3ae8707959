"""cxr-demo's dashboard account: a random password, printed once."""

from __future__ import annotations

import re

from db import migrate
from db.engine import get_engine, read_session
from db.reviewers import authenticate
from model_training import demo


def test_the_demo_account_gets_a_random_password_printed_once(capsys):
    engine = get_engine()
    migrate.upgrade(engine)
    demo.ensure_demo_account(engine)
    printed = capsys.readouterr().out
    password = re.search(r"password '([^']+)'", printed).group(1)
    assert len(password) >= 12
    with read_session(engine) as session:
        account = authenticate(session, demo.DEMO_ACCOUNT, password)
        assert account is not None and account.role == "admin"
    demo.ensure_demo_account(engine)
    assert "password" not in capsys.readouterr().out  # never shown again
