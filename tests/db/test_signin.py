"""Sign-in (db.signin), the audit trail (db.events) and case claims (db.claims) on both backends."""

from __future__ import annotations

import datetime as dt
from unittest.mock import ANY

import pytest
import sqlalchemy
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError

from db import claims, events, migrate, reviewers, signin
from db.engine import create_database_engine, read_session, write_session
from db.models import Event, Image, utcnow
from db.reviewers import ReviewerError, add_reviewer, set_active, set_password

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


@pytest.fixture
def accounts_on_sqlite(sqlite_url):
    """The accounts on SQLite only: its query plans are what the index test reads."""
    engine = create_database_engine(sqlite_url)
    migrate.upgrade(engine)
    with write_session(engine) as session:
        add_reviewer(session, "rad", PASSWORD)
    yield engine
    engine.dispose()


def _sign_in(engine, username, password, now=None, client=None) -> signin.SignInResult:
    with write_session(engine) as session:
        return signin.sign_in(session, username, password, client=client, now=now)


def _wait(engine, username, client, now) -> dt.timedelta | None:
    with read_session(engine) as session:
        return signin.wait_before_attempt(session, username, client=client, now=now)


def _fail(engine, names, client, now) -> dt.datetime:
    """A wrong password for each of ``names`` from ``client``, each as soon as allowed; the time after the last."""
    for name in names:
        now += _wait(engine, name, client, now) or dt.timedelta(0)
        assert _sign_in(engine, name, "guess", now=now, client=client).outcome == "bad_credentials"
    return now


def _seconds(wait: dt.timedelta | None) -> float:
    return 0.0 if wait is None else wait.total_seconds()


def test_sign_in_records_every_attempt_without_the_password(engine, accounts, caplog):
    typed_in_the_name_field = "Tr0ub4dor&3-horse"
    assert _sign_in(engine, "rad", PASSWORD, client="10.0.0.1").account.username == "rad"
    assert _sign_in(engine, "rad", "wrong-password", client="10.0.0.2").outcome == "bad_credentials"
    assert _sign_in(engine, typed_in_the_name_field, "").outcome == "bad_credentials"
    assert _sign_in(engine, "nobody", "wrong-password", client="f" * 80).outcome == "bad_credentials"
    with read_session(engine) as session:
        rows = [(e.kind, e.username, e.reviewer_id, e.client) for e in events.recent_events(session)][::-1]
    assert rows == [("sign_in", "rad", accounts["rad"], "10.0.0.1"), ("sign_in_failed", "rad", None, "10.0.0.2"),
                    ("sign_in_failed", events.UNKNOWN_NAME, None, signin.UNKNOWN_CLIENT),
                    ("sign_in_failed", events.UNKNOWN_NAME, None, "f" * events.CLIENT_LENGTH)]
    assert "failed sign-in for 'rad' from 10.0.0.2" in caplog.text
    assert "failed sign-in for an unknown user name" in caplog.text
    for secret in ("wrong-password", PASSWORD, typed_in_the_name_field, "nobody"):
        assert secret not in caplog.text
    # nor does the database: a name that is no account is stored as a keyed hash, the same for the same name, so
    # that the rate limit counts it like an account's name
    assert _sign_in(engine, typed_in_the_name_field, "", client="10.0.0.3").outcome == "bad_credentials"
    with read_session(engine) as session:
        stored = session.execute(select(Event.username, Event.client).where(Event.kind == events.SIGN_IN_FAILED)
                                 .order_by(Event.id)).all()
        assert events.attempt_name(session, "rad") == "rad"
    hidden = [name for name, _ in stored if name != "rad"]
    assert len(hidden) == 3 and all(name.startswith(events.HIDDEN_NAME_PREFIX) for name in hidden)
    assert hidden[0] == hidden[2] != hidden[1]  # the typed field twice, "nobody" once
    assert not any(secret in str(row) for row in stored for secret in (typed_in_the_name_field, "nobody"))


@pytest.mark.parametrize(("rule", "failures", "seconds"), [
    (signin.PAIR_RULE, 0, 0), (signin.PAIR_RULE, 5, 0), (signin.PAIR_RULE, 6, 2), (signin.PAIR_RULE, 7, 4),
    (signin.PAIR_RULE, 14, 512), (signin.PAIR_RULE, 15, 900), (signin.PAIR_RULE, 10_000, 900),
    (signin.CLIENT_RULE, 10, 0), (signin.CLIENT_RULE, 11, 2), (signin.CLIENT_RULE, 15, 32),
    (signin.CLIENT_RULE, 100, 900),
    (signin.ACCOUNT_RULE, 20, 0), (signin.ACCOUNT_RULE, 21, 2), (signin.ACCOUNT_RULE, 25, 32),
    (signin.ACCOUNT_RULE, 26, 60), (signin.ACCOUNT_RULE, 10_000, 60)])
def test_each_failure_past_the_allowance_doubles_the_delay_up_to_its_cap(rule, failures, seconds):
    assert rule.delay(failures) == dt.timedelta(seconds=seconds)


def test_the_attackers_client_waits_longer_each_time_while_the_owner_signs_in_elsewhere(engine, accounts):
    attacker, owner = "198.51.100.7", "10.1.2.3"
    now = utcnow()
    for _ in range(signin.PAIR_ALLOWANCE):
        assert _sign_in(engine, "rad", "guess", now=now, client=attacker).outcome == "bad_credentials"
        assert _wait(engine, "rad", attacker, now) is None  # a person's own mistyping costs nothing
    delays = []
    for _ in range(4):
        assert _sign_in(engine, "rad", "guess", now=now, client=attacker).outcome == "bad_credentials"
        wait = _wait(engine, "rad", attacker, now)
        refused = _sign_in(engine, "rad", PASSWORD, now=now + wait / 2, client=attacker)  # even the right password
        assert refused.outcome == "rate_limited" and refused.account is None and refused.retry_after == wait / 2
        delays.append(wait.total_seconds())
        now += wait
    assert delays == [2, 4, 8, 16]
    assert _sign_in(engine, "rad", PASSWORD, now=now - dt.timedelta(seconds=1), client=owner).outcome == "ok"


def test_spraying_one_password_over_many_names_from_one_client_is_slowed(engine, accounts):
    sprayer, owner = "203.0.113.9", "10.1.2.3"
    now = utcnow()
    names = [f"user{n}" for n in range(signin.CLIENT_ALLOWANCE + 3)]
    for name in names[:signin.CLIENT_ALLOWANCE]:
        assert _sign_in(engine, name, "Summer2024!", now=now, client=sprayer).outcome == "bad_credentials"
    delays = []
    for name in names[signin.CLIENT_ALLOWANCE:]:
        assert _sign_in(engine, name, "Summer2024!", now=now, client=sprayer).outcome == "bad_credentials"
        delays.append(_seconds(_wait(engine, "anyone-else", sprayer, now)))
        now += dt.timedelta(seconds=delays[-1])
    assert delays == [2, 4, 8]
    assert _sign_in(engine, "rad", PASSWORD, now=now - dt.timedelta(seconds=1), client=sprayer).outcome == \
        "rate_limited"
    assert _sign_in(engine, "rad", PASSWORD, now=now - dt.timedelta(seconds=1), client=owner).outcome == "ok"
    assert _wait(engine, "user0", sprayer, now + signin.WINDOW) is None  # forgotten after the window


def test_a_distributed_guess_never_keeps_the_owner_out_for_more_than_a_minute(engine, accounts):
    now = utcnow()
    waits = []
    for n in range(signin.ACCOUNT_ALLOWANCE + 15):  # one guess from each of many clients, as fast as allowed
        assert _sign_in(engine, "rad", "guess", now=now, client=f"192.0.2.{n}").outcome == "bad_credentials"
        waits.append(_seconds(_wait(engine, "rad", "10.1.2.3", now)))
        now += dt.timedelta(seconds=waits[-1])
    assert max(waits) == signin.ACCOUNT_CAP.total_seconds() == 60
    assert waits[:signin.ACCOUNT_ALLOWANCE] == [0] * signin.ACCOUNT_ALLOWANCE
    assert waits[signin.ACCOUNT_ALLOWANCE:signin.ACCOUNT_ALLOWANCE + 6] == [2, 4, 8, 16, 32, 60]
    assert _sign_in(engine, "rad", PASSWORD, now=now, client="10.1.2.3").outcome == "ok"
    # a successful sign-in starts the account's counts again
    assert _sign_in(engine, "rad", "guess", now=now, client="192.0.2.250").outcome == "bad_credentials"
    assert _wait(engine, "rad", "10.1.2.3", now) is None


def test_refused_attempts_do_not_extend_the_delay(engine, accounts):
    attacker = "198.51.100.7"
    start = utcnow()
    for _ in range(signin.PAIR_ALLOWANCE + 1):
        _sign_in(engine, "rad", "guess", now=start, client=attacker)
    for n in range(40):  # hammering during the 2 s delay
        assert _sign_in(engine, "rad", "guess", now=start + dt.timedelta(seconds=n / 20),
                        client=attacker).outcome == "rate_limited"
    assert _sign_in(engine, "rad", PASSWORD, now=start + dt.timedelta(seconds=2), client=attacker).outcome == "ok"
    with read_session(engine) as session:
        assert events.tally(session, events.SIGN_IN_REFUSED, start, client=attacker).count == 40
        assert events.tally(session, events.SIGN_IN_FAILED, start, client=attacker).count == 6


def test_unlock_lets_the_owner_in_at_once_but_keeps_a_sprayers_client_slowed(engine, accounts):
    attacker, sprayer = "198.51.100.7", "203.0.113.9"
    now = _fail(engine, ["rad"] * (signin.PAIR_ALLOWANCE + 3), attacker, utcnow())
    now = _fail(engine, ["rad"] + [f"user{n}" for n in range(signin.CLIENT_ALLOWANCE)], sprayer, now)
    assert _seconds(_wait(engine, "rad", attacker, now)) == 8
    with write_session(engine) as session:
        signin.unlock(session, "rad", by="boss", now=now)
    assert _wait(engine, "rad", attacker, now) is None
    assert _seconds(_wait(engine, "rad", sprayer, now)) == 2  # a client's failures across names still count
    assert _sign_in(engine, "rad", PASSWORD, now=now, client=attacker).outcome == "ok"
    with read_session(engine) as session:
        unlocked = events.recent_events(session, kinds=[events.ACCOUNT_UNLOCKED])
    assert [(e.username, e.reviewer_id, e.details) for e in unlocked] == [("boss", accounts["boss"],
                                                                          {"account": "rad"})]
    with pytest.raises(ReviewerError, match="'ghost'"), write_session(engine) as session:
        signin.unlock(session, "ghost")


def test_unknown_and_deactivated_names_are_treated_exactly_like_existing_ones(engine, accounts, monkeypatch):
    with write_session(engine) as session:
        add_reviewer(session, "retired", PASSWORD)
        set_active(session, "retired", False)
    checks = []
    for module in (signin, reviewers):  # the dummy hash in db.signin, the real one in db.reviewers
        monkeypatch.setattr(module, "verify_password", lambda h, p, real=module.verify_password: checks.append(1)
                            or real(h, p))
    now = utcnow()
    seen = {}
    for name in ("rad", "ghost", "retired"):
        outcomes = []
        for n in range(signin.PAIR_ALLOWANCE + 2):
            checks.clear()
            result = _sign_in(engine, name, "guess", now=now + dt.timedelta(seconds=n), client=f"client-{name}")
            outcomes.append((result.outcome, result.retry_after, len(checks)))
        seen[name] = outcomes
    assert seen["ghost"] == seen["rad"] == seen["retired"]
    assert seen["rad"][-1] == ("rate_limited", dt.timedelta(seconds=1), 0)  # refused: no password checked
    assert seen["rad"][0] == ("bad_credentials", None, 1)  # one password check each, known or not


@pytest.mark.parametrize("ends", ["sign_out", "deactivation", "new_password"])
def test_ending_the_sessions_of_an_account_signs_out_every_browser(engine, accounts, ends):
    result = _sign_in(engine, "rad", PASSWORD, client="10.0.0.1")
    epoch = result.account.session_epoch
    with read_session(engine) as session:
        assert signin.current_account(session, accounts["rad"], epoch) == result.account
    with write_session(engine) as session:
        if ends == "sign_out":
            assert signin.end_sessions(session, accounts["rad"]) == epoch + 1
        elif ends == "deactivation":
            set_active(session, "rad", False)
            set_active(session, "rad", True)  # reactivating does not revive the old sessions
        else:
            set_password(session, "rad", "a-new-good-password")
    with read_session(engine) as session:
        assert signin.current_account(session, accounts["rad"], epoch) is None
        assert signin.current_account(session, accounts["boss"], 0) is not None  # other accounts go on
        current = signin.current_account(session, accounts["rad"])
    assert current.session_epoch == epoch + 1
    with read_session(engine) as session:
        assert signin.current_account(session, accounts["rad"], current.session_epoch) == current
    with pytest.raises(ReviewerError, match="999"), write_session(engine) as session:
        signin.end_sessions(session, 999)


def test_a_deactivated_account_is_no_longer_current(engine, accounts):
    with read_session(engine) as session:
        assert signin.current_account(session, accounts["rad"]).role == "reviewer"
    with write_session(engine) as session:
        set_active(session, "rad", False)
    with read_session(engine) as session:
        assert signin.current_account(session, accounts["rad"]) is None
    assert _sign_in(engine, "rad", PASSWORD).outcome == "bad_credentials"


def test_the_throttles_queries_read_the_events_through_indexes(sqlite_url, accounts_on_sqlite):
    engine = accounts_on_sqlite
    statements = []

    def remember(conn, cursor, statement, parameters, context, executemany):
        if "FROM events" in statement:
            statements.append((statement, parameters))

    sqlalchemy.event.listen(engine, "before_cursor_execute", remember)
    _sign_in(engine, "rad", "guess", client="10.0.0.1")
    sqlalchemy.event.remove(engine, "before_cursor_execute", remember)
    assert len(statements) == 5
    with engine.connect() as connection:
        for statement, parameters in statements:
            plan = " ".join(row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement,
                                                                          parameters))
            assert "USING" in plan and "INDEX" in plan and "SCAN" not in plan, (statement, plan)


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


@pytest.mark.parametrize("end", [
    lambda session: set_active(session, "rad", False),
    lambda session: set_password(session, "rad", "another long enough passphrase"),
    lambda session: reviewers.reset_sign_on(session, "rad"),
], ids=["deactivated", "new_password", "sign_on_reset"])
def test_ending_an_accounts_sessions_gives_back_the_cases_it_held(engine, accounts, end):
    image, rad, boss = accounts["image"], accounts["rad"], accounts["boss"]
    with write_session(engine) as session:
        assert claims.claim(session, image, rad).claimed
        assert claims.claim(session, image, boss, second_reading=True).claimed
    with write_session(engine) as session:
        end(session)
    with read_session(engine) as session:
        assert claims.holders(session, [image], rad) == {image: claims.Holder("boss", ANY)}
        assert claims.holders(session, [image], boss) == {}


IDP = "https://idp.example"


def _sign_in_with(engine, email, subject="user-1", verified=True, trust=False, issuer=IDP) -> signin.SignInResult:
    with write_session(engine) as session:
        return signin.sign_in_with_identity(session, signin.Identity(email, issuer, subject, verified),
                                            trust_unverified_email=trust)


@pytest.mark.parametrize(("email", "verified", "trust", "outcome"), [
    ("rad", True, False, "ok"),
    ("rad", None, False, "unverified_identity"),  # a provider that says nothing about verification...
    ("rad", None, True, "ok"),  # ...is trusted only when the site says so
    ("rad", False, True, "unverified_identity"),
    ("nobody@example.org", True, False, "unknown_identity"), (None, True, False, "unknown_identity"),
    ("retired", True, False, "unknown_identity")])
def test_single_sign_on_opens_only_an_existing_active_account(engine, accounts, email, verified, trust, outcome):
    with write_session(engine) as session:
        add_reviewer(session, "retired", PASSWORD)
        set_active(session, "retired", False)
    result = _sign_in_with(engine, email, verified=verified, trust=trust)
    assert result.outcome == outcome
    assert (result.account is not None and result.account.id == accounts["rad"]) == (outcome == "ok")
    with read_session(engine) as session:
        event = session.scalars(select(Event).order_by(Event.id.desc())).first()
    assert event.kind == (events.SIGN_IN if outcome == "ok" else events.SIGN_IN_FAILED)
    assert event.details == {"method": "oidc", "issuer": IDP} | ({} if outcome == "ok" else {"refused": outcome})
    with read_session(engine) as session:  # the provider's address, not typed, tells an admin whom to add
        assert events.recent_events(session, limit=1)[0].username == email


def test_single_sign_on_binds_the_account_to_the_provider_user_that_opened_it(engine, accounts):
    assert _sign_in_with(engine, "rad", subject="user-1").outcome == "ok"
    # the provider renames its user: the binding, not the address, opens the account
    assert _sign_in_with(engine, "dr.rad@example.org", subject="user-1", verified=None).account.id == accounts["rad"]
    # another user who gets (or claims) the address cannot open it, verified or not
    assert _sign_in_with(engine, "rad", subject="user-2").outcome == "bound_to_another"
    # the same subject at another provider is another user
    assert _sign_in_with(engine, "rad", subject="user-1", issuer="https://other.example").outcome == "bound_to_another"
    with write_session(engine) as session:
        epoch = reviewers.find_reviewer(session, "rad").session_epoch
        reviewers.reset_sign_on(session, "rad")
    with read_session(engine) as session:
        assert reviewers.find_reviewer(session, "rad").session_epoch == epoch + 1  # its sessions end
    assert _sign_in_with(engine, "rad", subject="user-2").outcome == "ok"
    assert _sign_in_with(engine, "rad", subject="user-1").outcome == "bound_to_another"


def test_a_deactivated_bound_account_stays_closed(engine, accounts):
    assert _sign_in_with(engine, "rad").outcome == "ok"
    with write_session(engine) as session:
        set_active(session, "rad", False)
    assert _sign_in_with(engine, "rad").outcome == "unknown_identity"


def test_an_identity_without_a_subject_is_refused(engine, accounts):
    assert _sign_in_with(engine, "rad", subject=None).outcome == "unknown_identity"
