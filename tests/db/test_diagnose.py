from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from db.diagnose import database_problem, shown_url


@pytest.mark.parametrize(("url", "secret"), [
    ("postgresql+psycopg://cxr:Hunter2Secret@db.example/cxr", "Hunter2Secret"),
    ("postgresql+psycopg://cxr@db.example/cxr?password=Hunter2Secret&sslmode=require", "Hunter2Secret"),
    ("postgresql+psycopg://cxr@/cxr?host=/run/pg&sslpassword=Hunter2Secret", "Hunter2Secret"),
])
def test_shown_url_hides_every_password(url, secret):
    shown = shown_url(url)
    assert secret not in shown and "cxr" in shown


def test_shown_url_keeps_what_is_not_secret():
    assert shown_url("sqlite:////srv/cxr/cxr.db") == "sqlite:////srv/cxr/cxr.db"
    assert "sslmode=require" in shown_url("postgresql+psycopg://cxr@h/cxr?sslmode=require")


@pytest.mark.parametrize(("message", "expected"), [
    ("database or disk is full", "is full"),
    ("attempt to write a readonly database", "read-only"),
    ('connection to server at "10.0.0.1", port 5432 failed: Connection refused', "unreachable"),
])
def test_database_problem_says_what_is_wrong_in_one_line(message, expected):
    error = OperationalError("INSERT ...", {"p": "value"}, Exception(message + "\nDETAIL: more"))
    line = database_problem("postgresql+psycopg://cxr:Hunter2Secret@h/cxr", error)
    assert expected in line and "\n" not in line and "Hunter2Secret" not in line and "value" not in line
