"""The audit trail beyond reviews: an append-only table of who did what, when.

Sign-ins (successful, failed, refused by the rate limit), sign-outs, exports, promotions and account
changes, with the network address (client) a sign-in came from. A password never reaches an event. Functions take
a Session and never commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Event, utcnow

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


def recent_events(session: Session, *, limit: int = 200, kinds: Sequence[str] = ()) -> list[EventRow]:
    """The latest events, newest first."""
    query = select(Event).order_by(Event.created_at.desc(), Event.id.desc()).limit(limit)
    if kinds:
        query = query.where(Event.kind.in_(kinds))
    return [EventRow(e.id, e.created_at, e.kind, e.username, e.reviewer_id, dict(e.details), e.client)
            for e in session.scalars(query)]


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

