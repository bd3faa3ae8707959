"""Who is signed in to this browser session. The account is read from the database at every rerun, so a
deactivated account is signed out at its next interaction, not only at its next sign-in."""

from __future__ import annotations

import streamlit as st

from dashboard import actions, data
from db import signin
from db.engine import read_session

ACCOUNT_KEY = "account_id"
NOTICE_KEY = "signin_notice"


def current_account() -> signin.Account | None:
    account_id = st.session_state.get(ACCOUNT_KEY)
    if account_id is None:
        return None
    with read_session(data.engine()) as session:
        account = signin.current_account(session, account_id)
    if account is None:
        _forget()
        st.session_state[NOTICE_KEY] = "This account is no longer active. Ask an admin."
    return account


def remember(account: signin.Account) -> None:
    st.session_state[ACCOUNT_KEY] = account.id


def sign_out(account: signin.Account) -> None:
    actions.sign_out(account.id, account.username)
    _forget()
    st.query_params.clear()


def _forget() -> None:
    for key in list(st.session_state.keys()):
        del st.session_state[key]
