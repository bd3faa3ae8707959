"""Every write the dashboard makes, in one place: each is one transaction, re-checks the signed-in account (and
its role where it matters) in the database, records an audit event where one is due, and clears the caches it
affects. A page that calls an admin action for a reviewer gets ``PermissionError``, whatever its UI showed.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from dashboard import data
from db import claims, events, model_versions, reviewers, signin
from db.engine import write_session
from db.export import flagged_csv
from db.reviews import add_review, flagged_cases

log = logging.getLogger("cxr.dashboard")


def sign_in(username: str, password: str) -> signin.SignInResult:
    with write_session(data.engine()) as session:
        return signin.sign_in(session, username, password)


def sign_in_with_identity(email: str | None, issuer: str, email_verified: bool | None) -> signin.SignInResult:
    with write_session(data.engine()) as session:
        return signin.sign_in_with_identity(session, email, issuer=issuer, email_verified=email_verified)


def sign_out(account_id: int, username: str) -> None:
    with write_session(data.engine()) as session:
        events.record(session, events.SIGN_OUT, username=username, reviewer_id=account_id)


def claim(account_id: int, image_id: int, *, second_reading: bool = False) -> claims.ClaimResult:
    with write_session(data.engine()) as session:
        _account(session, account_id)
        return claims.claim(session, image_id, account_id, second_reading=second_reading)


def save_review(account_id: int, *, image_id: int, prediction_id: int | None, label: str, flagged: bool,
                comment: str, mode: str, overlay_shown: bool, seconds_spent: float) -> int:
    with write_session(data.engine()) as session:
        _account(session, account_id)
        review = add_review(session, image_id=image_id, reviewer_id=account_id, label=label,
                            prediction_id=prediction_id, flagged_for_retraining=flagged, comment=comment.strip(),
                            mode=mode, overlay_shown=overlay_shown, seconds_spent=round(seconds_spent, 1))
        claims.release(session, image_id, account_id)
        review_id = review.id
    data.clear_after_review(image_id)
    return review_id


def flagged_export(account_id: int, *, include_paths: bool) -> str:
    """The CSV ``cxr-export-flagged`` writes (the same function); paths only for admins."""
    with write_session(data.engine()) as session:
        account = _account(session, account_id)
        if include_paths and not account.is_admin:
            raise PermissionError("only admins export file-system paths")
        return flagged_csv(flagged_cases(session), include_paths=include_paths)


def record_export(account_id: int, include_paths: bool, rows: int) -> None:
    with write_session(data.engine()) as session:
        account = _account(session, account_id)
        events.record(session, events.EXPORT_FLAGGED, username=account.username, reviewer_id=account.id,
                      details={"rows": rows, "include_paths": include_paths, "from": "dashboard"})


def promote(account_id: int, version_id: int) -> str:
    with write_session(data.engine()) as session:
        account = _admin(session, account_id)
        version, previous = model_versions.promote(session, str(version_id))
        events.record(session, events.PROMOTE, username=account.username, reviewer_id=account.id,
                      details={"version": version.id, "previous": previous.id if previous else None})
        shown = version.name or f"version {version.id}"
    log.info("%s promoted model version %d", account.username, version_id)
    data.clear_after_promotion()
    return shown


def create_account(account_id: int, username: str, password: str, role: str, display_name: str | None) -> None:
    with write_session(data.engine()) as session:
        admin = _admin(session, account_id)
        created = reviewers.add_reviewer(session, username, password, role=role, display_name=display_name or None)
        events.record(session, events.ACCOUNT_CREATED, username=admin.username, reviewer_id=admin.id,
                      details={"account": created.username, "role": role})
    data.clear_after_account_change()


def set_active(account_id: int, username: str, active: bool) -> None:
    with write_session(data.engine()) as session:
        admin = _admin(session, account_id)
        if username == admin.username and not active:
            raise reviewers.ReviewerError("you cannot deactivate your own account")
        reviewers.set_active(session, username, active)
        kind = events.ACCOUNT_ACTIVATED if active else events.ACCOUNT_DEACTIVATED
        events.record(session, kind, username=admin.username, reviewer_id=admin.id, details={"account": username})
    data.clear_after_account_change()


def reset_password(account_id: int, username: str, password: str) -> None:
    with write_session(data.engine()) as session:
        admin = _admin(session, account_id)
        reviewers.set_password(session, username, password)
        events.record(session, events.PASSWORD_RESET, username=admin.username, reviewer_id=admin.id,
                      details={"account": username})
    data.clear_after_account_change()


def _account(session: Session, account_id: int) -> signin.Account:
    account = signin.current_account(session, account_id)
    if account is None:
        raise PermissionError("this account is signed out or deactivated")
    return account


def _admin(session: Session, account_id: int) -> signin.Account:
    account = _account(session, account_id)
    if not account.is_admin:
        raise PermissionError("only admins may do this")
    return account
