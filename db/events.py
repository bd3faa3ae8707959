"""The audit trail beyond reviews: an append-only table of who did what, when.

Sign-ins (successful, failed, refused by the rate limit), sign-outs, exports, promotions and account
changes. A password never reaches an event. Functions take a Session and never commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Event, utcnow

SIGN_IN = "sign_in"
SIGN_IN_FAILED = "sign_in_failed"
SIGN_IN_REFUSED = "sign_in_refused"  # refused by the rate limit; the password was not even checked
SIGN_OUT = "sign_out"
EXPORT_FLAGGED = "export_flagged"
PROMOTE = "promote"
ACCOUNT_CREATED = "account_created"
ACCOUNT_DEACTIVATED = "account_deactivated"
ACCOUNT_ACTIVATED = "account_activated"
PASSWORD_RESET = "password_reset"
KINDS = (SIGN_IN, SIGN_IN_FAILED, SIGN_IN_REFUSED, SIGN_OUT, EXPORT_FLAGGED, PROMOTE, ACCOUNT_CREATED,
         ACCOUNT_DEACTIVATED, ACCOUNT_ACTIVATED, PASSWORD_RESET)
USERNAME_LENGTH = 64


@dataclass(frozen=True)
class EventRow:
    id: int
    created_at: dt.datetime
    kind: str
    username: str | None
    reviewer_id: int | None
    details: dict[str, Any]


def record(session: Session, kind: str, *, username: str | None = None, reviewer_id: int | None = None,
           details: dict[str, Any] | None = None, now: dt.datetime | None = None) -> None:
    """Append one event. ``username`` is the name given (cut to the column's length), known or not."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    session.add(Event(kind=kind, username=username[:USERNAME_LENGTH] if username else None,
                      reviewer_id=reviewer_id, details=details or {}, created_at=now or utcnow()))
    session.flush()


def recent_events(session: Session, *, limit: int = 200, kinds: Sequence[str] = ()) -> list[EventRow]:
    """The latest events, newest first."""
    query = select(Event).order_by(Event.created_at.desc(), Event.id.desc()).limit(limit)
    if kinds:
        query = query.where(Event.kind.in_(kinds))
    return [EventRow(e.id, e.created_at, e.kind, e.username, e.reviewer_id, dict(e.details))
            for e in session.scalars(query)]


def times_of(session: Session, username: str, kind: str, since: dt.datetime) -> list[dt.datetime]:
    """When ``username`` had events of ``kind`` at or after ``since``, newest first."""
    return list(session.scalars(
        select(Event.created_at)
        .where(Event.username == username[:USERNAME_LENGTH], Event.kind == kind, Event.created_at >= since)
        .order_by(Event.created_at.desc())))
