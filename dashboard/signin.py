"""Sign-in: what a signed-out visitor sees at every URL. The URL stays as it was (a bookmarked case, a filtered
worklist), so that after signing in the same rerun shows what was asked for."""

from __future__ import annotations

import streamlit as st

from dashboard import actions, auth, data
from dashboard.layout import plain

# Signed out there is no sidebar; but after leaving the case page (which collapses it) Streamlit sometimes keeps
# its expand arrow in the corner, opening an empty panel.
NO_SIDEBAR_CSS = "<style>[data-testid='stExpandSidebarButton'] { display: none; }</style>"


def render() -> None:
    st.html(NO_SIDEBAR_CSS)
    st.title("CXR Review")
    st.caption("Clinical review of chest X-ray AI. Sign in to see cases.")
    problem = data.schema_problem()
    if problem:
        st.error(problem, icon=":material/database:")
        st.stop()
    notice = st.session_state.pop(auth.NOTICE_KEY, None)
    if notice:
        st.warning(plain(notice))  # it may quote a name from an identity provider
    if not data.has_accounts():
        st.info("There is no account yet. Create the first admin on the server with "
                "`cxr-db add-reviewer NAME --role admin` (or run `cxr-demo`, which creates a demo account and prints "
                "its password once).", icon=":material/person_add:")
    if auth.single_sign_on_configured():
        if auth.identity() is not None:
            st.button("Sign out of single sign-on", on_click=st.logout)
        else:
            st.button("Sign in with single sign-on", type="primary", on_click=st.login)
        st.caption("Or with a CXR Review password:")
    with st.form("sign_in", border=True, width=420):
        username = st.text_input("User name", autocomplete="username")
        password = st.text_input("Password", type="password", autocomplete="current-password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        _attempt(username, password)


def _attempt(username: str, password: str) -> None:
    result = actions.sign_in(username, password, auth.client_address())
    if result.account is not None:
        auth.remember(result.account)
        data.has_accounts.clear()
        st.rerun()
    elif result.outcome == "rate_limited":
        st.error(f"Too many failed attempts. Try again in {_wait(result.retry_after)}.")
    else:
        st.error("Unknown user name or wrong password.")


def _wait(delay) -> str:
    seconds = max(1, round(delay.total_seconds())) if delay else 60
    return f"{seconds} seconds" if seconds < 90 else f"about {round(seconds / 60)} minutes"
