"""The password policy (db.passwords.check_password, NIST SP 800-63B) and where accounts apply it."""

from __future__ import annotations

import secrets

import pytest

from db.engine import read_session, write_session
from db.models import Reviewer
from db.passwords import (
    MAX_PASSWORD_LENGTH,
    PasswordPolicyError,
    check_password,
    common_passwords,
    hash_password,
    verify_password,
)
from db.reviewers import add_reviewer, set_password

PASSPHRASE = "mauve otter jogs past seven lanterns beneath Tuesday's drizzle"


@pytest.mark.parametrize(("password", "role", "username", "refusal"), [
    ("12345678", "reviewer", "rad", "common"),
    ("kq7-vr2m", "reviewer", "rad", None),  # 8 characters are enough for a reviewer
    ("kq7-vr2mzw4", "admin", "boss", "too short: 11 characters, need at least 12"),
    ("kq7-vr2mzw4j", "admin", "boss", None),
    ("kq7-vr2", "reviewer", "rad", "too short: 7 characters, need at least 8"),
    ("cafe\u0301 ok", "reviewer", "rad", "too short: 7 characters"),  # NFKC: e + accent is one character
    ("PassWord", "reviewer", "rad", "common"),
    ("ILOVEYOU", "reviewer", "rad", "common"),
    ("Iloveyou2024!", "reviewer", "rad", "common"),  # a common one with digits and symbols added
    ("football12345", "admin", "boss", "common"),
    ("radiologist", "reviewer", "radiologist", "user name"),
    ("xx-Radiologist-xx", "reviewer", "radiologist", "user name"),
    ("bossbossboss!", "admin", "boss", "user name"),
    ("cxr-review-2024", "reviewer", "rad", "service's name"),
    ("My CXR Review pw", "admin", "boss", "service's name"),
    ("alice-dragon1", "reviewer", "alice", "common"),  # what is left besides the user name is a common password
    ("aaaaaaaaaaaa", "admin", "boss", "repetitive or sequential"),
    ("123456789012", "admin", "boss", "repetitive or sequential"),
    ("abcdefghijkl", "admin", "boss", "repetitive or sequential"),
    ("qwertyuiop12", "admin", "boss", "common|repetitive or sequential"),
    ("zyxwvutsrqpo", "admin", "boss", "repetitive or sequential"),
    ("abcd1234efgh", "admin", "boss", "repetitive or sequential"),
    ("kq7kq7kq7kq7", "admin", "boss", "repetitive or sequential"),
    (PASSPHRASE, "admin", "boss", None),
    ("all lower case words only", "admin", "boss", None),  # no composition rules
    (secrets.token_urlsafe(750), "admin", "boss", None),  # 1000 characters: long ones are welcome
    ("v" + secrets.token_hex(MAX_PASSWORD_LENGTH // 2), "admin", "boss", "too long: 1025 characters"),
])
def test_the_password_policy(password, role, username, refusal):
    if refusal is None:
        check_password(password, role=role, username=username)
    else:
        with pytest.raises(PasswordPolicyError, match=refusal):
            check_password(password, role=role, username=username)


def test_a_short_user_name_inside_a_strong_passphrase_is_fine():
    check_password(PASSPHRASE, role="admin", username="ot")  # "ot" is in "otter": what is left is strong


def test_the_common_password_list_is_shipped_and_large():
    common = common_passwords()
    assert len(common) >= 20_000
    assert {"password", "123456", "iloveyou", "qwertyuiop"} <= common


def test_the_demo_accounts_random_password_always_passes():
    # model_training/demo.py: secrets.token_urlsafe(12) for the admin "demo"; also with "demo" inside by chance
    for password in [secrets.token_urlsafe(12) for _ in range(2000)] + ["demo" + secrets.token_urlsafe(9),
                                                                        "x-Demo_" + secrets.token_urlsafe(7)[:9]]:
        check_password(password, role="admin", username="demo")


def test_hashing_applies_no_policy():
    assert verify_password(hash_password("short"), "short")


def test_accounts_apply_the_policy_of_their_role(engine):
    with pytest.raises(PasswordPolicyError, match="common"), write_session(engine) as session:
        add_reviewer(session, "rad", "12345678")
    with pytest.raises(PasswordPolicyError, match="at least 12"), write_session(engine) as session:
        add_reviewer(session, "boss", "kq7-vr2mzw4", role="admin")
    with write_session(engine) as session:
        add_reviewer(session, "rad", "kq7-vr2mzw4")
        add_reviewer(session, "boss", "kq7-vr2mzw4j", role="admin")
    with write_session(engine) as session:
        set_password(session, "rad", "pt9-zn4q")
    with pytest.raises(PasswordPolicyError, match="at least 12"), write_session(engine) as session:
        set_password(session, "boss", "pt9-zn4q")  # the admin's role sets the rule
    with pytest.raises(PasswordPolicyError, match="user name"), write_session(engine) as session:
        set_password(session, "rad", "rad-rad-rad!")
    with read_session(engine) as session:
        rad = session.query(Reviewer).filter_by(username="rad").one()
        assert verify_password(rad.password_hash, "pt9-zn4q")
