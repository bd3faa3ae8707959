"""Signing in to the dashboard: argon2id accounts (:mod:`db.reviewers`), growing delays after failed attempts,
every attempt in the audit trail (:mod:`db.events`), and session epochs that end every session of an account.

Failed sign-ins are throttled, not locked out. Three counters run over the last hour: the failures of one account
name from one client (network address), of one client across all names (password spraying), and of one account
name across all clients (a distributed guess). Each has a free allowance (5, 10 and 20 failures); past it, every
further failure makes the next attempt wait ``min(cap, 2 s * 2 ** (failures - allowance - 1))`` after that
failure, capped at 15 minutes per client but at 60 seconds account-wide, so that nobody can keep an account's
owner out for more than a minute at a time. An attempt made while a delay runs is refused without checking the
password, and refused attempts do not count as failures, so retrying cannot make a delay longer. The counts of an
account start again after its successful sign-in and after an admin unlocks it (``cxr-db unlock NAME``). Unknown
user names are treated exactly like existing ones, so the answer never tells whether a name exists.

Functions take a Session and never commit: the caller commits the events, also of a failure.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import events
from db.models import Reviewer, utcnow
from db.passwords import hash_password, verify_password
from db.reviewers import ReviewerError, authenticate, find_reviewer, raise_session_epoch

log = logging.getLogger("cxr.signin")

WINDOW = dt.timedelta(hours=1)  # failures older than this are forgotten
BASE_DELAY = dt.timedelta(seconds=2)  # the first delay past an allowance: a typo costs a person nothing
PAIR_ALLOWANCE = 5  # one name from one browser: room for a person's own mistyping
CLIENT_ALLOWANCE = 10  # one client across names: a shared workstation may see several people mistype
ACCOUNT_ALLOWANCE = 20  # one name from everywhere: above what its owner and one attacker together reach quickly
CLIENT_CAP = dt.timedelta(minutes=15)  # an attacking client is held back for long
ACCOUNT_CAP = dt.timedelta(seconds=60)  # an account-wide delay also holds back its owner, so it stays short
UNKNOWN_CLIENT = "unknown"  # all attempts without a known address share one client's counters
_DUMMY_HASH = hash_password("not-a-password-of-anyone")  # equal work for unknown names


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    display_name: str | None
    role: str
    is_active: bool
    session_epoch: int  # the account's epoch when it was read; a browser session keeps the one it signed in with

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
    retry_after: dt.timedelta | None = None  # with "rate_limited": how long until the next attempt is checked


@dataclass(frozen=True)
class Rule:
    """A counter's free allowance of failures, and the growing delay after each one past it."""

    allowance: int
    cap: dt.timedelta
    base: dt.timedelta = BASE_DELAY

    def delay(self, failures: int) -> dt.timedelta:
        excess = failures - self.allowance
        if excess <= 0:
            return dt.timedelta(0)
        doublings = min(excess - 1, 32)  # 2 s * 2**32 is far past any cap; bounds the arithmetic
        return min(self.cap, self.base * 2 ** doublings)


PAIR_RULE = Rule(PAIR_ALLOWANCE, CLIENT_CAP)
CLIENT_RULE = Rule(CLIENT_ALLOWANCE, CLIENT_CAP)
ACCOUNT_RULE = Rule(ACCOUNT_ALLOWANCE, ACCOUNT_CAP)


def account_of(reviewer: Reviewer) -> Account:
    return Account(reviewer.id, reviewer.username, reviewer.display_name, reviewer.role, reviewer.is_active,
                   reviewer.session_epoch)


def sign_in(session: Session, username: str, password: str, *, client: str | None = None,
            now: dt.datetime | None = None) -> SignInResult:
    """Check a password sign-in from ``client`` (the browser's network address; None when unknown)."""
    now = now or utcnow()
    username = username.strip()
    client = client or UNKNOWN_CLIENT
    recorded_as = events.attempt_name(session, username)
    wait = _wait(session, username, recorded_as, client, now)
    if wait is not None:
        events.record(session, events.SIGN_IN_REFUSED, username=recorded_as, client=client, now=now)
        log.warning("sign-in refused for %s from %s: too many failed attempts, next in %s",
                    _logged_name(username, recorded_as), client, wait)
        return SignInResult(None, "rate_limited", wait)
    reviewer = _check_credentials(session, username, password)
    if reviewer is None:
        events.record(session, events.SIGN_IN_FAILED, username=recorded_as, client=client, now=now)
        log.warning("failed sign-in for %s from %s", _logged_name(username, recorded_as), client)
        return SignInResult(None, "bad_credentials")
    events.record(session, events.SIGN_IN, username=reviewer.username, reviewer_id=reviewer.id, client=client,
                  now=now)
    log.info("%s signed in from %s", reviewer.username, client)
    return SignInResult(account_of(reviewer), "ok")


@dataclass(frozen=True)
class Identity:
    """Who an OpenID Connect provider says signed in: the claims ``email``, ``iss``, ``sub`` and
    ``email_verified`` (None when the provider does not send it)."""

    email: str | None
    issuer: str
    subject: str | None
    email_verified: bool | None


def sign_in_with_identity(session: Session, identity: Identity, *, trust_unverified_email: bool = False,
                          client: str | None = None, now: dt.datetime | None = None) -> SignInResult:
    """A sign-in vouched for by an OpenID Connect provider (Streamlit's ``st.login``).

    The account bound to the provider's user (``issuer`` and ``subject``, its ``iss`` and ``sub``) is opened if
    there is one. Otherwise the identity's e-mail address opens the active account of that user name, which an
    admin creates first (signing in at the provider never creates an account here), and the account is bound to
    that provider's user from then on, so that another user who later gets or claims the address cannot open it.
    That first sign-in needs an address the provider says is verified (``email_verified``); a provider that sends
    no such claim is trusted only with ``trust_unverified_email``. An account bound to another user of the same
    provider is refused (``cxr-db reset-sign-on NAME`` lifts the binding)."""
    now = now or utcnow()
    name = (identity.email or "").strip()
    details = {"method": "oidc", "issuer": identity.issuer}
    reviewer, outcome = _identity_account(session, name, identity, trust_unverified_email)
    if reviewer is None:
        events.record(session, events.SIGN_IN_FAILED, username=name or None, client=client,
                      details=details | {"refused": outcome}, now=now)
        log.warning("single sign-on identity %r refused: %s", name, outcome)
        return SignInResult(None, outcome)
    events.record(session, events.SIGN_IN, username=reviewer.username, reviewer_id=reviewer.id, client=client,
                  details=details, now=now)
    log.info("%s signed in through %s", reviewer.username, identity.issuer)
    return SignInResult(account_of(reviewer), "ok")


def _identity_account(session: Session, name: str, identity: Identity,
                      trust_unverified_email: bool) -> tuple[Reviewer | None, str]:
    if not identity.subject:
        return None, "unknown_identity"  # OpenID Connect always names its user; without it nothing can be bound
    bound = session.scalar(select(Reviewer).where(Reviewer.identity_issuer == identity.issuer,
                                                  Reviewer.identity_subject == identity.subject))
    if bound is not None:
        return (bound, "ok") if bound.is_active else (None, "unknown_identity")
    reviewer = find_reviewer(session, name) if name else None
    if reviewer is None or not reviewer.is_active:
        return None, "unknown_identity"
    verified = identity.email_verified
    if not (verified or (verified is None and trust_unverified_email)):
        return None, "unverified_identity"
    if reviewer.identity_subject is not None:
        return None, "bound_to_another"
    reviewer.identity_issuer, reviewer.identity_subject = identity.issuer, identity.subject
    return reviewer, "ok"


def wait_before_attempt(session: Session, username: str, *, client: str | None = None,
                        now: dt.datetime | None = None) -> dt.timedelta | None:
    """How long a sign-in as ``username`` from ``client`` must wait before its password is checked, or None: the
    longest delay still running of the three counters."""
    return _wait(session, username, events.attempt_name(session, username), client or UNKNOWN_CLIENT,
                 now or utcnow())


def _wait(session: Session, username: str, recorded_as: str | None, client: str,
          now: dt.datetime) -> dt.timedelta | None:
    """``wait_before_attempt`` for a name whose attempts are recorded as ``recorded_as`` (``events.attempt_name``)."""
    window_start = now - WINDOW
    account_start = _account_counts_since(session, username, window_start)
    recorded_as = recorded_as or ""  # "": no attempt is recorded under an empty name
    counted = (
        (PAIR_RULE, events.tally(session, events.SIGN_IN_FAILED, account_start, username=recorded_as,
                                 client=client)),
        (CLIENT_RULE, events.tally(session, events.SIGN_IN_FAILED, window_start, client=client)),
        (ACCOUNT_RULE, events.tally(session, events.SIGN_IN_FAILED, account_start, username=recorded_as)),
    )
    ends = [tally.latest + rule.delay(tally.count) for rule, tally in counted if tally.count > rule.allowance]
    wait = max(ends, default=now) - now
    return wait if wait > dt.timedelta(0) else None


def unlock(session: Session, username: str, *, by: str | None = None, now: dt.datetime | None = None) -> None:
    """Lift the sign-in delays of account ``username``: its failed attempts so far no longer count (a client's
    failures across all names still do). ``by``: the admin who did it, None from the command line."""
    reviewer = find_reviewer(session, username)
    if reviewer is None:
        raise ReviewerError(f"no reviewer {username!r}")
    actor = find_reviewer(session, by) if by else None
    events.record(session, events.ACCOUNT_UNLOCKED, username=by, reviewer_id=actor.id if actor else None,
                  details={"account": reviewer.username}, now=now)
    log.info("sign-in delays of %r lifted by %s", reviewer.username, by or "the command line")


def current_account(session: Session, reviewer_id: int, session_epoch: int | None = None) -> Account | None:
    """The signed-in account as it is now (checked at every rerun): None once it is deactivated, or, given the
    ``session_epoch`` a browser session signed in with, once the account's sessions were ended since."""
    reviewer = session.get(Reviewer, reviewer_id)
    if reviewer is None or not reviewer.is_active:
        return None
    if session_epoch is not None and reviewer.session_epoch != session_epoch:
        return None
    return account_of(reviewer)


def end_sessions(session: Session, reviewer_id: int) -> int:
    """End every browser session of the account at its next interaction (signing out ends them all); the new
    epoch."""
    reviewer = session.get(Reviewer, reviewer_id)
    if reviewer is None:
        raise ReviewerError(f"no reviewer with id {reviewer_id}")
    return raise_session_epoch(session, reviewer)


def _logged_name(username: str, recorded_as: str | None) -> str:
    """The name of an account, quoted; a name that is no account (recorded under its hash) is not repeated: it is
    often a password typed into the wrong field, or one that belongs to another system."""
    return repr(username) if username and recorded_as == username else "an unknown user name"


def _check_credentials(session: Session, username: str, password: str) -> Reviewer | None:
    reviewer = find_reviewer(session, username) if username else None
    if reviewer is None or not reviewer.is_active:
        verify_password(_DUMMY_HASH, password)  # the same work as for a real account: time tells nothing
        return None
    return authenticate(session, username, password)


def _account_counts_since(session: Session, username: str, window_start: dt.datetime) -> dt.datetime:
    """An account's counters start at its latest successful sign-in or unlock within the window."""
    success = events.tally(session, events.SIGN_IN, window_start, username=username).latest
    unlocked = events.latest_about(session, events.ACCOUNT_UNLOCKED, username, window_start)
    return max(t for t in (window_start, success, unlocked) if t is not None)
