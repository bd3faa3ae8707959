"""Accounts (admins): list, create, deactivate or reactivate, reset a password; and the audit trail."""

import streamlit as st

from dashboard import actions, data, layout
from db.models import ROLES
from db.passwords import MIN_ADMIN_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, PasswordPolicyError
from db.reviewers import ReviewerError

me = layout.account()
st.title("Accounts")
if not me.is_admin:  # the page is not in a reviewer's navigation; this guards a direct call too
    st.error("Only admins manage accounts.")
    st.stop()

notice = st.session_state.pop("accounts_notice", None)
if notice:
    st.success(notice)
accounts = data.accounts()
st.dataframe([{"user": a["username"], "name": a["display_name"] or "", "role": a["role"],
               "active": a["is_active"], "created": a["created_at"].strftime("%Y-%m-%d")} for a in accounts],
             hide_index=True)


def run(action, *args, done: str) -> None:
    try:
        action(me, *args)
    except (ReviewerError, PasswordPolicyError) as exc:
        st.error(str(exc))
        return
    st.session_state["accounts_notice"] = done
    st.rerun()


PASSWORD_RULE = (f"At least {MIN_PASSWORD_LENGTH} characters ({MIN_ADMIN_PASSWORD_LENGTH} for admins); a passphrase "
                 "is best. Common, repetitive or sequential passwords and ones made of the user name are refused.")
create, change, audit = st.tabs(["Create", "Deactivate or reset", "Audit trail"])
with create, st.form("create_account", clear_on_submit=True):
    username = st.text_input("User name")
    display_name = st.text_input("Display name (optional)")
    role = st.selectbox("Role", ROLES)
    password = st.text_input("Initial password", type="password", help=PASSWORD_RULE)
    if st.form_submit_button("Create account", type="primary"):
        run(actions.create_account, username.strip(), password, role, display_name.strip(),
            done=f"Created {username.strip()}.")
with change:
    names = [a["username"] for a in accounts]
    who = st.selectbox("Account", names, key="account_choice")
    chosen = next(a for a in accounts if a["username"] == who)
    if chosen["is_active"]:
        if st.button("Deactivate", key="deactivate", disabled=who == me.username):
            run(actions.set_active, who, False, done=f"Deactivated {who}; signed out at their next click.")
    elif st.button("Reactivate", key="reactivate"):
        run(actions.set_active, who, True, done=f"Reactivated {who}.")
    if st.button("Lift sign-in delays", key="unlock", help="Failed sign-ins so far no longer slow this account "
                 "down (the same as `cxr-db unlock NAME`)."):
        run(actions.unlock, who, done=f"Sign-in delays of {who} lifted.")
    with st.form("reset_password", clear_on_submit=True):
        new_password = st.text_input("New password", type="password", help=PASSWORD_RULE)
        if st.form_submit_button("Reset password"):
            run(actions.reset_password, who, new_password, done=f"Password of {who} reset.")
with audit:
    st.dataframe([{"when": e.created_at.strftime("%Y-%m-%d %H:%M:%S"), "event": e.kind, "user": e.username or "",
                   "client": e.client or "", "details": ", ".join(f"{k}={v}" for k, v in e.details.items())}
                  for e in data.audit_events()], hide_index=True)
