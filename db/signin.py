"""Signing in to the dashboard: argon2id accounts (:mod:`db.reviewers`), a per-account rate limit on failed
attempts, and every attempt in the audit trail (:mod:`db.events`).

After ``MAX_FAILURES`` failed attempts within ``FAILURE_WINDOW`` (counted since the last successful sign-in),
the account is refused without checking the password until fewer than ``MAX_FAILURES`` failures lie within
the window. Unknown user names are treated the same way, so the answer never tells whether a name
exists. Functions take a Session and never commit: the caller commits the events, also of a failure.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from db import events
from db.models import Reviewer, utcnow
from db.passwords import hash_password, verify_password
from db.reviewers import authenticate, find_reviewer

log = logging.getLogger("cxr.signin")

MAX_FAILURES = 5
FAILURE_WINDOW = dt.timedelta(minutes=15)
_DUMMY_HASH = hash_password("not-a-password-of-anyone")  # equal work for unknown names


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    display_name: str | None
    role: str
    is_active: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def shown_name(self) -> str:
        return self.display_name or self.username


@dataclass(frozen=True)
class SignInResult:
    account: Account | None
    outcome: str  # "ok", "bad_credentials", "rate_limited" or "unknown_identity"
    retry_after: dt.timedelta | None = None


def account_of(reviewer: Reviewer) -> Account:
    return Account(reviewer.id, reviewer.username, reviewer.display_name, reviewer.role, reviewer.is_active)


def sign_in(session: Session, username: str, password: str, *, now: dt.datetime | None = None) -> SignInResult:
    now = now or utcnow()
    username = username.strip()
    wait = lockout_remaining(session, username, now=now)
    if wait is not None:
        events.record(session, events.SIGN_IN_REFUSED, username=username, now=now)
        log.warning("sign-in refused for %r: too many failed attempts", username)
        return SignInResult(None, "rate_limited", wait)
    reviewer = authenticate(session, username, password) if username else None
    if reviewer is None:
        if not username or find_reviewer(session, username) is None:
            verify_password(_DUMMY_HASH, password)
        events.record(session, events.SIGN_IN_FAILED, username=username or None, now=now)
        log.warning("failed sign-in for %r", username)
        return SignInResult(None, "bad_credentials")
    events.record(session, events.SIGN_IN, username=reviewer.username, reviewer_id=reviewer.id, now=now)
    log.info("%s signed in", reviewer.username)
    return SignInResult(account_of(reviewer), "ok")


def sign_in_with_identity(session: Session, email: str | None, *, issuer: str, email_verified: bool | None,
                          now: dt.datetime | None = None) -> SignInResult:
    """A sign-in vouched for by an OpenID Connect provider (Streamlit's ``st.login``). It opens the active account
    whose user name is the identity's e-mail address: an admin creates that account first, because signing in
    at the provider must not create an account here. An address the provider says is unverified is refused."""
    now = now or utcnow()
    name = (email or "").strip()
    reviewer = find_reviewer(session, name) if name and email_verified is not False else None
    details = {"method": "oidc", "issuer": issuer}
    if reviewer is None or not reviewer.is_active:
        events.record(session, events.SIGN_IN_FAILED, username=name or None, details=details, now=now)
        log.warning("single sign-on identity %r has no active account", name)
        return SignInResult(None, "unknown_identity")
    events.record(session, events.SIGN_IN, username=reviewer.username, reviewer_id=reviewer.id, details=details,
                  now=now)
    log.info("%s signed in through %s", reviewer.username, issuer)
    return SignInResult(account_of(reviewer), "ok")


def lockout_remaining(session: Session, username: str, *, now: dt.datetime | None = None) -> dt.timedelta | None:
    """How long ``username`` must wait before the next attempt is checked, or None."""
    now = now or utcnow()
    since = now - FAILURE_WINDOW
    successes = events.times_of(session, username, events.SIGN_IN, since)
    if successes:
        since = successes[0]
    failures = events.times_of(session, username, events.SIGN_IN_FAILED, since)
    if len(failures) < MAX_FAILURES:
        return None
    return failures[MAX_FAILURES - 1] + FAILURE_WINDOW - now


def current_account(session: Session, reviewer_id: int) -> Account | None:
    """The signed-in account as it is now: None once it is deactivated (checked at every rerun)."""
    reviewer = session.get(Reviewer, reviewer_id)
    if reviewer is None or not reviewer.is_active:
        return None
    return account_of(reviewer)

