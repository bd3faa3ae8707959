"""Sign-in (db.signin), the audit trail (db.events) and case claims (db.claims) on both backends."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError

from db import claims, events, signin
from db.engine import read_session, write_session
from db.models import Event, Image, utcnow
from db.reviewers import add_reviewer, set_active

PASSWORD = "a-good-password"


@pytest.fixture
def accounts(engine) -> dict[str, int]:
    with write_session(engine) as session:
        ids = {name: add_reviewer(session, name, PASSWORD, role=role).id
               for name, role in (("rad", "reviewer"), ("boss", "admin"))}
        image = Image(sha256="a" * 64, path="/x.png", size_bytes=1, mtime=0.0, format="png")
        session.add(image)
        session.flush()
        ids["image"] = image.id
    return ids


def _sign_in(engine, username, password, now=None) -> signin.SignInResult:
    with write_session(engine) as session:
        return signin.sign_in(session, username, password, now=now)


def test_sign_in_records_every_attempt_without_the_password(engine, accounts, caplog):
    assert _sign_in(engine, "rad", PASSWORD).account.username == "rad"
    assert _sign_in(engine, "rad", "wrong-password").outcome == "bad_credentials"
    assert _sign_in(engine, "nobody", "wrong-password").outcome == "bad_credentials"
    with read_session(engine) as session:
        rows = [(e.kind, e.username, e.reviewer_id) for e in events.recent_events(session)][::-1]
    assert rows == [("sign_in", "rad", accounts["rad"]), ("sign_in_failed", "rad", None),
                    ("sign_in_failed", "nobody", None)]
    assert "wrong-password" not in caplog.text and PASSWORD not in caplog.text


def test_failed_attempts_are_rate_limited_per_account(engine, accounts):
    start = utcnow()
    for n in range(signin.MAX_FAILURES):
        _sign_in(engine, "rad", "wrong-password", now=start + dt.timedelta(seconds=n))
    refused = _sign_in(engine, "rad", PASSWORD, now=start + dt.timedelta(minutes=1))
    assert refused.outcome == "rate_limited" and refused.account is None
    assert dt.timedelta(minutes=13) < refused.retry_after <= signin.FAILURE_WINDOW
    assert _sign_in(engine, "boss", PASSWORD, now=start + dt.timedelta(minutes=1)).outcome == "ok"  # per account
    later = start + signin.FAILURE_WINDOW + dt.timedelta(seconds=5)
    assert _sign_in(engine, "rad", PASSWORD, now=later).outcome == "ok"


def test_a_deactivated_account_is_no_longer_current(engine, accounts):
    with read_session(engine) as session:
        assert signin.current_account(session, accounts["rad"]).role == "reviewer"
    with write_session(engine) as session:
        set_active(session, "rad", False)
    with read_session(engine) as session:
        assert signin.current_account(session, accounts["rad"]) is None
    assert _sign_in(engine, "rad", PASSWORD).outcome == "bad_credentials"


def test_events_are_append_only_in_the_database(engine, accounts):
    with write_session(engine) as session:
        events.record(session, events.EXPORT_FLAGGED, username="rad", details={"rows": 3})
    for statement in ("UPDATE events SET username = 'someone'", "DELETE FROM events"):
        with pytest.raises(DatabaseError, match="append-only"), write_session(engine) as session:
            session.execute(text(statement))
    with read_session(engine) as session:
        assert session.scalars(select(Event.details)).all() == [{"rows": 3}]
    with pytest.raises(ValueError, match="unknown event kind"), write_session(engine) as session:
        events.record(session, "made_up")


def test_a_claim_holds_a_case_until_it_expires_or_is_released(engine, accounts):
    image, rad, boss = accounts["image"], accounts["rad"], accounts["boss"]
    now = utcnow()
    with write_session(engine) as session:
        assert claims.claim(session, image, rad, now=now).claimed
        held = claims.claim(session, image, boss, now=now)
        assert not held.claimed and held.holder.username == "rad"
        second = claims.claim(session, image, boss, second_reading=True, now=now)
        assert second.claimed and second.holder.username == "rad"
        assert claims.claim(session, image, rad, now=now).claimed  # renewing one's own claim
    later = now + dt.timedelta(minutes=claims.CLAIM_MINUTES + 1)
    with write_session(engine) as session:
        claims.release(session, image, boss)
        assert claims.holders(session, [image], boss, now=now) == {image: claims.Holder("rad", now + dt.timedelta(
            minutes=claims.CLAIM_MINUTES))}
        assert claims.holders(session, [image], boss, now=later) == {}
        assert claims.purge_expired(session, now=later) == 1


@pytest.mark.parametrize(("email", "verified", "outcome"), [
    ("rad", True, "ok"), ("rad", None, "ok"),  # a provider that says nothing about verification
    ("rad", False, "unknown_identity"), ("nobody@example.org", True, "unknown_identity"),
    (None, True, "unknown_identity"), ("retired", True, "unknown_identity")])
def test_single_sign_on_opens_only_an_existing_active_account(engine, accounts, email, verified, outcome):
    with write_session(engine) as session:
        add_reviewer(session, "retired", PASSWORD)
        set_active(session, "retired", False)
    with write_session(engine) as session:
        result = signin.sign_in_with_identity(session, email, issuer="https://idp.example", email_verified=verified)
    assert result.outcome == outcome
    assert (result.account is not None and result.account.id == accounts["rad"]) == (outcome == "ok")
    with read_session(engine) as session:
        event = session.scalars(select(Event).order_by(Event.id.desc())).first()
    assert event.kind == (events.SIGN_IN if outcome == "ok" else events.SIGN_IN_FAILED)
    assert event.details == {"method": "oidc", "issuer": "https://idp.example"}
