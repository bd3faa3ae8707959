"""Case claims: an opened case is held for a few minutes, so that two reviewers do not read it at once by
accident. A second reading is a deliberate choice (``second_reading=True``). Saving a review, leaving the case
and signing out release the claim, as does anything that ends the account's sessions (deactivation, a new
password); an abandoned one (a closed browser) simply expires. Functions take a Session
and never commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.models import CaseClaim, Reviewer, utcnow

CLAIM_MINUTES = 10


@dataclass(frozen=True)
class Holder:
    username: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class ClaimResult:
    claimed: bool
    holder: Holder | None  # who else is reading the case now, if anyone


def claim(session: Session, image_id: int, reviewer_id: int, *, second_reading: bool = False,
          minutes: int = CLAIM_MINUTES, now: dt.datetime | None = None) -> ClaimResult:
    """Hold ``image_id`` for ``reviewer_id`` (renewing their claim), unless someone else holds it and this is
    neither a deliberate second reading nor the renewal of a claim the reviewer still holds."""
    now = now or utcnow()
    other = holders(session, [image_id], reviewer_id, now=now).get(image_id)
    mine = session.scalar(select(CaseClaim).where(CaseClaim.image_id == image_id,
                                                  CaseClaim.reviewer_id == reviewer_id))
    already_reading = mine is not None and mine.expires_at > now
    if other is not None and not (second_reading or already_reading):
        return ClaimResult(False, other)
    until = now + dt.timedelta(minutes=minutes)
    if mine is None:
        session.add(CaseClaim(image_id=image_id, reviewer_id=reviewer_id, claimed_at=now, expires_at=until))
    else:
        mine.claimed_at, mine.expires_at = now, until
    session.flush()
    return ClaimResult(True, other)


def release(session: Session, image_id: int, reviewer_id: int) -> None:
    session.execute(delete(CaseClaim).where(CaseClaim.image_id == image_id, CaseClaim.reviewer_id == reviewer_id))


def release_all(session: Session, reviewer_id: int) -> int:
    """Every case the reviewer holds (at sign-out); returns how many."""
    result = session.execute(delete(CaseClaim).where(CaseClaim.reviewer_id == reviewer_id))
    return result.rowcount or 0


def holders(session: Session, image_ids: Iterable[int], reviewer_id: int | None,
            *, now: dt.datetime | None = None) -> dict[int, Holder]:
    """Who else (not ``reviewer_id``) holds an unexpired claim on each of ``image_ids``."""
    ids = list(image_ids)
    if not ids:
        return {}
    query = (select(CaseClaim.image_id, Reviewer.username, CaseClaim.expires_at)
             .join(Reviewer, Reviewer.id == CaseClaim.reviewer_id)
             .where(CaseClaim.image_id.in_(ids), CaseClaim.expires_at > (now or utcnow()))
             .order_by(CaseClaim.expires_at))
    if reviewer_id is not None:
        query = query.where(CaseClaim.reviewer_id != reviewer_id)
    return {image_id: Holder(username, until) for image_id, username, until in session.execute(query)}


def purge_expired(session: Session, *, now: dt.datetime | None = None) -> int:
    result = session.execute(delete(CaseClaim).where(CaseClaim.expires_at <= (now or utcnow())))
    return result.rowcount or 0
