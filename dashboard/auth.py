"""Who is signed in to this browser session. The account is read from the database at every rerun, so a
deactivated account is signed out at its next interaction, not only at its next sign-in. A session remembers the
account's session epoch from its sign-in: signing out (in any window), a deactivation or a new password raises
the epoch, which ends every other session of that account at its next interaction too.

Besides the password form, single sign-on through Streamlit's ``st.login`` (OpenID Connect) is offered when an
``[auth]`` section is configured in ``dashboard/.streamlit/secrets.toml``: the provider's verified e-mail address
opens the active account of that user name (see :func:`db.signin.sign_in_with_identity`)."""

from __future__ import annotations

import streamlit as st

from dashboard import actions, data
from db import signin
from db.engine import read_session

ACCOUNT_KEY = "account_id"
EPOCH_KEY = "session_epoch"
NOTICE_KEY = "signin_notice"
IDENTITY_TRIED_KEY = "identity_tried"


def single_sign_on_configured() -> bool:
    try:
        return "auth" in st.secrets
    except FileNotFoundError:  # no secrets.toml at all
        return False


def identity() -> tuple[str | None, str, bool | None] | None:
    """The provider's (e-mail, issuer, email_verified) when this browser is signed in through st.login."""
    if not single_sign_on_configured() or not st.user.get("is_logged_in"):
        return None
    verified = st.user.get("email_verified")
    return st.user.get("email"), str(st.user.get("iss") or "oidc"), None if verified is None else bool(verified)


def client_address() -> str:
    """The browser's network address, for throttling failed sign-ins per client. A connection from this machine is
    the reverse proxy's (the app listens on loopback only), which overwrites ``X-Real-IP`` with the address it
    saw; a header from anywhere else is not trusted."""
    direct = st.context.ip_address  # None for a connection from this machine
    if isinstance(direct, str):
        return direct
    forwarded = st.context.headers.get("X-Real-IP")
    if isinstance(forwarded, str) and forwarded.strip():
        return forwarded.strip()[:64]
    return "localhost"


def current_account() -> signin.Account | None:
    account_id = st.session_state.get(ACCOUNT_KEY)
    if account_id is None:
        return _account_from_identity()
    with read_session(data.engine()) as session:
        account = signin.current_account(session, account_id, st.session_state.get(EPOCH_KEY))
    if account is None:
        forget_session()
    return account


def forget_session() -> None:
    """This browser is signed out because the account was deactivated or its sessions were ended elsewhere."""
    account_id = st.session_state.get(ACCOUNT_KEY)
    with read_session(data.engine()) as session:
        still_active = account_id is not None and signin.current_account(session, account_id) is not None
    _forget()
    st.session_state[NOTICE_KEY] = (
        "You were signed out: this account signed out in another window, or its password was changed."
        if still_active else "Your account was deactivated. Ask an admin.")


def _account_from_identity() -> signin.Account | None:
    """Once per browser session (not at every rerun, so a refused identity is logged once)."""
    if st.session_state.get(IDENTITY_TRIED_KEY):
        return None
    found = identity()
    if found is None:
        return None
    st.session_state[IDENTITY_TRIED_KEY] = True
    email, issuer, verified = found
    result = actions.sign_in_with_identity(email, issuer, verified, client_address())
    if result.account is None:
        st.session_state[NOTICE_KEY] = (f"No active CXR Review account has the user name {email or '(no e-mail)'}"
                                        + (" (the provider has not verified it)" if verified is False else "")
                                        + ". Ask an admin to create one.")
        return None
    remember(result.account)
    return result.account


def remember(account: signin.Account) -> None:
    st.session_state[ACCOUNT_KEY] = account.id
    st.session_state[EPOCH_KEY] = account.session_epoch


def sign_out(account: signin.Account) -> None:
    """Signs out every session of the account, this one at once."""
    actions.sign_out(account)
    through_provider = identity() is not None
    _forget()
    st.query_params.clear()
    if through_provider:
        st.logout()  # also forget the provider's identity cookie, or the next rerun would sign in again


def _forget() -> None:
    for key in list(st.session_state.keys()):
        del st.session_state[key]
