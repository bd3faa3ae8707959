"""The audit trail beyond reviews: an append-only table of who did what, when.

Sign-ins (successful, failed, refused by the rate limit), sign-outs, exports, promotions and account
changes, with the network address (client) a sign-in came from. A password never reaches an event, not even one
typed as the user name: a password sign-in attempt with a name that is no account is recorded under a keyed hash
of the name (:func:`attempt_name`), which the rate limit counts as it counts an account's name.
Functions take a Session and never commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.config import pseudonym_key
from db.models import Event, Reviewer, utcnow

SIGN_IN = "sign_in"
SIGN_IN_FAILED = "sign_in_failed"
SIGN_IN_REFUSED = "sign_in_refused"  # refused by the rate limit; the password was not even checked
SIGN_OUT = "sign_out"
EXPORT_FLAGGED = "export_flagged"
PROMOTE = "promote"
PROMOTE_OVERRIDE = "promote_override"  # a challenger promoted although the gate refused it, with the reason
CHALLENGE = "challenge"  # a version started (or stopped) being scored in the shadow
ACCOUNT_CREATED = "account_created"
ACCOUNT_DEACTIVATED = "account_deactivated"
ACCOUNT_ACTIVATED = "account_activated"
PASSWORD_RESET = "password_reset"
ACCOUNT_UNLOCKED = "account_unlocked"  # an admin lifted the sign-in delays of an account
KINDS = (SIGN_IN, SIGN_IN_FAILED, SIGN_IN_REFUSED, SIGN_OUT, EXPORT_FLAGGED, PROMOTE, PROMOTE_OVERRIDE, CHALLENGE,
         ACCOUNT_CREATED, ACCOUNT_DEACTIVATED, ACCOUNT_ACTIVATED, PASSWORD_RESET, ACCOUNT_UNLOCKED)
USERNAME_LENGTH = 64
CLIENT_LENGTH = 64


@dataclass(frozen=True)
class EventRow:
    id: int
    created_at: dt.datetime
    kind: str
    username: str | None
    reviewer_id: int | None
    details: dict[str, Any]
    client: str | None = None


@dataclass(frozen=True)
class Tally:
    count: int
    latest: dt.datetime | None


def record(session: Session, kind: str, *, username: str | None = None, reviewer_id: int | None = None,
           client: str | None = None, details: dict[str, Any] | None = None, now: dt.datetime | None = None) -> None:
    """Append one event. ``username`` is the name given, known or not, and ``client`` the network address it came
    from; both are cut to their column's length."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    session.add(Event(kind=kind, username=username[:USERNAME_LENGTH] if username else None,
                      client=client[:CLIENT_LENGTH] if client else None, reviewer_id=reviewer_id,
                      details=details or {}, created_at=now or utcnow()))
    session.flush()


UNKNOWN_NAME = "(not an account)"
HIDDEN_NAME_PREFIX = "unknown:"  # no user name has a colon, so no account's name starts so


def attempt_name(session: Session, name: str) -> str | None:
    """The name a password sign-in attempt with ``name`` is recorded and counted under: an account's name as it
    is, any other name as a keyed hash of it. A name that is no account is often a password typed into the wrong
    field, so it is never stored; the same name gives the same hash, so the rate limit still counts attempts per
    name and treats unknown names like accounts."""
    if not name:
        return None
    if session.scalar(select(Reviewer.id).where(Reviewer.username == name)) is not None:
        return name
    digest = hmac.new(pseudonym_key(), b"cxr-review sign-in name\0" + name.encode("utf-8"), hashlib.sha256)
    return HIDDEN_NAME_PREFIX + digest.hexdigest()[:32]


def recent_events(session: Session, *, limit: int = 200, kinds: Sequence[str] = ()) -> list[EventRow]:
    """The latest events, newest first. The name a failed or refused password sign-in gave is shown as
    :data:`UNKNOWN_NAME` unless it is an account's (a single sign-on's address came from the provider, not from a
    keyboard, and tells an admin whom to give an account)."""
    query = select(Event).order_by(Event.created_at.desc(), Event.id.desc()).limit(limit)
    if kinds:
        query = query.where(Event.kind.in_(kinds))
    rows = list(session.scalars(query))
    attempted = {e.username for e in rows if e.kind in _ATTEMPTS and e.username}
    accounts = set(session.scalars(select(Reviewer.username).where(Reviewer.username.in_(attempted))))
    return [EventRow(e.id, e.created_at, e.kind, _shown_name(e, accounts), e.reviewer_id, dict(e.details), e.client)
            for e in rows]


_ATTEMPTS = (SIGN_IN_FAILED, SIGN_IN_REFUSED)


def _shown_name(event: Event, accounts: set[str]) -> str | None:
    typed = event.kind in _ATTEMPTS and event.details.get("method") != "oidc"
    if typed and event.username and event.username not in accounts:
        return UNKNOWN_NAME
    return event.username


def tally(session: Session, kind: str, since: dt.datetime, *, username: str | None = None,
          client: str | None = None) -> Tally:
    """How many events of ``kind`` at or after ``since`` there are for ``username`` and/or ``client`` (at least one
    must be given, so that an index on it serves the count), and when the latest was."""
    if username is None and client is None:
        raise ValueError("tally needs a username or a client")
    query = select(func.count(), func.max(Event.created_at)).where(Event.kind == kind, Event.created_at >= since)
    if username is not None:
        query = query.where(Event.username == username[:USERNAME_LENGTH])
    if client is not None:
        query = query.where(Event.client == client[:CLIENT_LENGTH])
    count, latest = session.execute(query).one()
    return Tally(count, latest)


def latest_about(session: Session, kind: str, account: str, since: dt.datetime) -> dt.datetime | None:
    """When the latest event of ``kind`` at or after ``since`` concerned ``account`` (``details["account"]``,
    as in the events of an admin's change to an account), or None."""
    return session.scalar(select(func.max(Event.created_at)).where(
        Event.kind == kind, Event.created_at >= since, Event.details["account"].as_string() == account))

