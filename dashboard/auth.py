"""Who is signed in to this browser session. The account is read from the database at every rerun, so a
deactivated account is signed out at its next interaction, not only at its next sign-in. A session remembers the
account's session epoch from its sign-in: signing out (in any window), a deactivation or a new password raises
the epoch, which ends every other session of that account at its next interaction too. A session left without
activity for ``idle_minutes`` (30 by default) is signed out, and its page replaced by the sign-in screen.

Besides the password form, single sign-on through Streamlit's ``st.login`` (OpenID Connect) is offered when an
``[auth]`` section is configured in ``dashboard/.streamlit/secrets.toml``: the provider's verified e-mail address
opens the active account of that user name the first time, its user only from then on (see
:func:`db.signin.sign_in_with_identity`)."""

from __future__ import annotations

import time

import streamlit as st

from dashboard import actions, data, reading
from db import signin
from db.engine import read_session

ACCOUNT_KEY = "account_id"
EPOCH_KEY = "session_epoch"
NOTICE_KEY = "signin_notice"
IDENTITY_TRIED_KEY = "identity_tried"
ACTIVE_AT_KEY = "active_at"  # time.monotonic() of this session's last rerun by the reader
DEFAULT_IDLE_MINUTES = 30.0  # an unattended reading-room screen signs out, and hides the film, after this
IDLE_CHECK_SECONDS = 30


def single_sign_on_configured() -> bool:
    try:
        return "auth" in st.secrets
    except FileNotFoundError:  # no secrets.toml at all
        return False


def identity() -> signin.Identity | None:
    """Who the provider says this browser is, when it is signed in through st.login."""
    if not single_sign_on_configured() or not st.user.get("is_logged_in"):
        return None
    verified, subject = st.user.get("email_verified"), st.user.get("sub")
    return signin.Identity(st.user.get("email"), str(st.user.get("iss") or "oidc"),
                           None if subject is None else str(subject), None if verified is None else bool(verified))


def trust_unverified_email() -> bool:
    """``trust_unverified_email = true``: for a provider that sends no ``email_verified`` claim but only ever gives
    its users addresses it manages."""
    return _site_setting("trust_unverified_email", False) is True


def _site_setting(name: str, default: object) -> object:
    """A setting under ``[cxr_review]`` in secrets.toml (beside Streamlit's own ``[auth]``), else ``default``."""
    try:
        return st.secrets.get("cxr_review", {}).get(name, default)
    except FileNotFoundError:  # no secrets.toml at all
        return default


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
        return None
    minutes = idle_minutes()
    if idle_expired(st.session_state.get(ACTIVE_AT_KEY), time.monotonic(), minutes):
        _sign_out_idle(account, minutes)
        return None
    st.session_state[ACTIVE_AT_KEY] = time.monotonic()  # a whole-app rerun is the reader's doing (see idle_watchdog)
    return account


def idle_minutes() -> float:
    """``idle_minutes`` (0: never), else ``DEFAULT_IDLE_MINUTES``."""
    value = _site_setting("idle_minutes", DEFAULT_IDLE_MINUTES)
    return float(value) if isinstance(value, int | float) and value >= 0 else DEFAULT_IDLE_MINUTES


def idle_expired(active_at: float | None, now: float, minutes: float) -> bool:
    return bool(minutes) and active_at is not None and now - active_at > minutes * 60


@st.fragment(run_every=IDLE_CHECK_SECONDS)
def idle_watchdog() -> None:
    """Reruns the app once the session has been idle too long, so that the sign-in screen replaces the film on an
    unattended screen instead of waiting for the next click. Its own runs are not activity (they do not run
    :func:`current_account`)."""
    if idle_expired(st.session_state.get(ACTIVE_AT_KEY), time.monotonic(), idle_minutes()):
        st.rerun(scope="app")


def _sign_out_idle(account: signin.Account, minutes: float) -> None:
    reading.leave_case(account)  # the case on screen is free for others at once, as when it is left
    _end_session(f"You were signed out after {idle_span(minutes)} without activity.")


def idle_span(minutes: float) -> str:
    """'30 minutes', '1 minute', under a minute in seconds ('3 seconds', not '0.05 minutes')."""
    if minutes < 1:
        seconds = max(1, round(minutes * 60))
        return f"{seconds} second{'s' * (seconds != 1)}"
    return f"{minutes:g} minute{'s' * (minutes != 1)}"


def forget_session() -> None:
    """This browser is signed out because the account was deactivated or its sessions were ended elsewhere."""
    account_id = st.session_state.get(ACCOUNT_KEY)
    with read_session(data.engine()) as session:
        still_active = account_id is not None and signin.current_account(session, account_id) is not None
    _end_session("You were signed out: this account signed out in another window, or its password was changed."
                 if still_active else "Your account was deactivated. Ask an admin.")


def _end_session(notice: str) -> None:
    """Signs this browser out, saying why on the sign-in screen."""
    through_provider = identity() is not None
    _forget()
    if through_provider:
        # The provider's identity cookie outlives this session: without this, the next rerun would sign the browser
        # in again with no credential asked. Signing in again goes through the provider's sign-out and sign-in.
        st.session_state[IDENTITY_TRIED_KEY] = True
    st.session_state[NOTICE_KEY] = notice


def _account_from_identity() -> signin.Account | None:
    """Once per browser session (not at every rerun, so a refused identity is logged once)."""
    if st.session_state.get(IDENTITY_TRIED_KEY):
        return None
    found = identity()
    if found is None:
        return None
    st.session_state[IDENTITY_TRIED_KEY] = True
    result = actions.sign_in_with_identity(found, trust_unverified_email(), client_address())
    if result.account is None:
        st.session_state[NOTICE_KEY] = _refusal(result.outcome, found.email or "(no e-mail)")
        return None
    remember(result.account)
    return result.account


def _refusal(outcome: str, email: str) -> str:
    if outcome == "unverified_identity":
        return (f"The provider does not say that {email} is verified, so it cannot open the CXR Review account of "
                "that name. Ask an admin.")
    if outcome == "bound_to_another":
        return (f"The CXR Review account {email} is bound to another user of this sign-on provider. Ask an admin "
                "(cxr-db reset-sign-on).")
    return f"No active CXR Review account has the user name {email}. Ask an admin to create one."


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
