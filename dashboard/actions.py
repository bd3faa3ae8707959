"""Every write the dashboard makes, in one place: each is one transaction, re-checks the signed-in account (and
its role where it matters) in the database, records an audit event where one is due, and clears the caches it
affects. A page that calls an admin action for a reviewer gets ``PermissionError``, whatever its UI showed; an
account that was deactivated, or whose sessions were ended (sign-out elsewhere, a new password), gets
``SignedOut`` and writes nothing.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from dashboard import data
from db import claims, events, model_versions, reviewers, signin
from db.engine import write_session
from db.export import export_classes, flagged_csv
from db.reviews import add_review, flagged_cases
from model_training import gate

log = logging.getLogger("cxr.dashboard")


class SignedOut(PermissionError):
    """The account is deactivated or this browser session was ended: the page signs it out."""


def sign_in(username: str, password: str, client: str | None) -> signin.SignInResult:
    with write_session(data.engine()) as session:
        return signin.sign_in(session, username, password, client=client)


def sign_in_with_identity(found: signin.Identity, trust_unverified_email: bool,
                          client: str | None) -> signin.SignInResult:
    with write_session(data.engine()) as session:
        return signin.sign_in_with_identity(session, found, trust_unverified_email=trust_unverified_email,
                                            client=client)


def sign_out(me: signin.Account) -> None:
    """Ends every session of the account (other tabs and browsers at their next interaction) and gives back the
    cases it held."""
    with write_session(data.engine()) as session:
        signin.end_sessions(session, me.id)
        events.record(session, events.SIGN_OUT, username=me.username, reviewer_id=me.id)


def claim(me: signin.Account, image_id: int, *, second_reading: bool = False) -> claims.ClaimResult:
    with write_session(data.engine()) as session:
        _account(session, me)
        return claims.claim(session, image_id, me.id, second_reading=second_reading)


def release_claim(me: signin.Account, image_id: int) -> None:
    """A case left without saving (N, P, the worklist) is free for others at once."""
    with write_session(data.engine()) as session:
        claims.release(session, image_id, me.id)


def save_review(me: signin.Account, *, image_id: int, prediction_id: int | None, label: str, flagged: bool,
                comment: str, mode: str, overlay_shown: bool, seconds_spent: float,
                second_reading: bool = False) -> int:
    with write_session(data.engine()) as session:
        _account(session, me)
        review = add_review(session, image_id=image_id, reviewer_id=me.id, label=label,
                            prediction_id=prediction_id, flagged_for_retraining=flagged, comment=comment.strip(),
                            mode=mode, overlay_shown=overlay_shown, seconds_spent=round(seconds_spent, 1),
                            second_reading=second_reading)
        claims.release(session, image_id, me.id)
        review_id = review.id
    data.clear_after_review(image_id)
    return review_id


def export_flagged(me: signin.Account, *, include_paths: bool) -> str:
    """The CSV ``cxr-export-flagged`` writes (the same function), built when asked for and recorded in the audit
    trail in the same transaction; paths only for admins."""
    with write_session(data.engine()) as session:
        account = _account(session, me)
        if include_paths and not account.is_admin:
            raise PermissionError("only admins export file-system paths")
        cases = flagged_cases(session)
        events.record(session, events.EXPORT_FLAGGED, username=account.username, reviewer_id=account.id,
                      details={"rows": len(cases), "include_paths": include_paths, "from": "dashboard"})
        return flagged_csv(cases, include_paths=include_paths, classes=export_classes(session))


def promote(me: signin.Account, version_id: int, *, override_reason: str | None = None) -> gate.Promotion:
    """Through the promotion gate (:mod:`model_training.gate`): refused, nothing changes; with
    ``override_reason``, promoted anyway and audited."""
    with write_session(data.engine()) as session:
        account = _admin(session, me)
        result = gate.promote(session, str(version_id), by=account.username, reviewer_id=account.id,
                              override_reason=override_reason, via="dashboard")
    if result.promoted:
        log.info("%s promoted model version %d%s", me.username, version_id,
                 " overriding the gate" if result.overridden else "")
        data.clear_after_promotion()
    return result


def set_challenger(me: signin.Account, version_id: int, challenger: bool) -> None:
    with write_session(data.engine()) as session:
        account = _admin(session, me)
        model_versions.set_challenger(session, str(version_id), challenger)
        events.record(session, events.CHALLENGE, username=account.username, reviewer_id=account.id,
                      details={"version": version_id, "challenger": challenger, "from": "dashboard"})
    data.clear_after_promotion()


def create_account(me: signin.Account, username: str, password: str, role: str, display_name: str | None) -> None:
    with write_session(data.engine()) as session:
        admin = _admin(session, me)
        created = reviewers.add_reviewer(session, username, password, role=role, display_name=display_name or None)
        events.record(session, events.ACCOUNT_CREATED, username=admin.username, reviewer_id=admin.id,
                      details={"account": created.username, "role": role})
    data.clear_after_account_change()


def set_active(me: signin.Account, username: str, active: bool) -> None:
    with write_session(data.engine()) as session:
        admin = _admin(session, me)
        if username == admin.username and not active:
            raise reviewers.ReviewerError("you cannot deactivate your own account")
        reviewers.set_active(session, username, active)
        kind = events.ACCOUNT_ACTIVATED if active else events.ACCOUNT_DEACTIVATED
        events.record(session, kind, username=admin.username, reviewer_id=admin.id, details={"account": username})
    data.clear_after_account_change()


def reset_password(me: signin.Account, username: str, password: str) -> None:
    with write_session(data.engine()) as session:
        admin = _admin(session, me)
        reviewers.set_password(session, username, password)
        events.record(session, events.PASSWORD_RESET, username=admin.username, reviewer_id=admin.id,
                      details={"account": username})
    data.clear_after_account_change()


def unlock(me: signin.Account, username: str) -> None:
    """Lifts the sign-in delays of an account (its failed attempts so far no longer count)."""
    with write_session(data.engine()) as session:
        admin = _admin(session, me)
        signin.unlock(session, username, by=admin.username)
    data.clear_after_account_change()


def _account(session: Session, me: signin.Account) -> signin.Account:
    account = signin.current_account(session, me.id, me.session_epoch)
    if account is None:
        raise SignedOut("this account was deactivated or signed out")
    return account


def _admin(session: Session, me: signin.Account) -> signin.Account:
    account = _account(session, me)
    if not account.is_admin:
        raise PermissionError("only admins may do this")
    return account
