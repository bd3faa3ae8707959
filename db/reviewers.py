"""Reviewer accounts. Functions take a Session and never commit; the caller owns the transaction."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import claims
from db.models import ROLES, Reviewer
from db.passwords import check_password, hash_password, needs_rehash, verify_password

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{1,63}$")


class ReviewerError(ValueError):
    pass


def add_reviewer(session: Session, username: str, password: str, *, role: str = "reviewer",
                 display_name: str | None = None) -> Reviewer:
    if not USERNAME_PATTERN.match(username):
        raise ReviewerError(f"invalid user name {username!r}: use 2-64 letters, digits, '.', '_', '@' or '-'")
    if display_name is not None and len(display_name) > 128:
        raise ReviewerError(f"display name too long: {len(display_name)} characters, at most 128")
    if role not in ROLES:
        raise ReviewerError(f"invalid role {role!r}: choose one of {', '.join(ROLES)}")
    if find_reviewer(session, username) is not None:
        raise ReviewerError(f"reviewer {username!r} already exists")
    check_password(password, role=role, username=username)
    reviewer = Reviewer(username=username, role=role, display_name=display_name,
                        password_hash=hash_password(password))
    session.add(reviewer)
    session.flush()
    return reviewer


def find_reviewer(session: Session, username: str) -> Reviewer | None:
    return session.scalar(select(Reviewer).where(Reviewer.username == username))


def authenticate(session: Session, username: str, password: str) -> Reviewer | None:
    """The active reviewer with these credentials, or None. Upgrades an outdated hash in place."""
    reviewer = find_reviewer(session, username)
    if reviewer is None or not reviewer.is_active:
        return None
    if not verify_password(reviewer.password_hash, password):
        return None
    if needs_rehash(reviewer.password_hash):
        reviewer.password_hash = hash_password(password)
    return reviewer


def list_reviewers(session: Session) -> list[Reviewer]:
    return list(session.scalars(select(Reviewer).order_by(Reviewer.username)))


def set_password(session: Session, username: str, password: str) -> Reviewer:
    """A new password (the policy for the account's role) ends every signed-in session of the account."""
    reviewer = _existing(session, username)
    check_password(password, role=reviewer.role, username=reviewer.username)
    reviewer.password_hash = hash_password(password)
    raise_session_epoch(session, reviewer)
    return reviewer


def set_active(session: Session, username: str, active: bool) -> Reviewer:
    """Deactivate (or reactivate) an account; its reviews stay, attributed to it. Deactivating ends every
    signed-in session of the account."""
    reviewer = _existing(session, username)
    reviewer.is_active = active
    if not active:
        raise_session_epoch(session, reviewer)
    return reviewer


def reset_sign_on(session: Session, username: str) -> Reviewer:
    """Lift the account's binding to a single sign-on user (after the provider moved the person to a new id, say):
    the next verified sign-in with the account's e-mail address binds it again. Ends its signed-in sessions."""
    reviewer = _existing(session, username)
    reviewer.identity_issuer = reviewer.identity_subject = None
    raise_session_epoch(session, reviewer)
    return reviewer


def raise_session_epoch(session: Session, reviewer: Reviewer) -> int:
    """Raise the account's session epoch, so that every browser session signed in with an older one ends at its
    next interaction, and give back the cases it held (no session is left to read them: a deactivated reader's
    case would otherwise stay held from others until the claim expires); the new epoch. Incremented in SQL, so
    that two at once both count."""
    reviewer.session_epoch = Reviewer.session_epoch + 1
    claims.release_all(session, reviewer.id)
    session.flush()
    session.refresh(reviewer, ["session_epoch"])
    return reviewer.session_epoch


def _existing(session: Session, username: str) -> Reviewer:
    reviewer = find_reviewer(session, username)
    if reviewer is None:
        raise ReviewerError(f"no reviewer {username!r}")
    return reviewer
