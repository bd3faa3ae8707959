"""What every signed-in page shares: the sidebar (who is signed in, sign-out, synthetic-data notice), the
account of this rerun, and the URL query as lists."""

from __future__ import annotations

import functools
import os

import streamlit as st

from dashboard import actions, auth, data, keyboard, urlstate
from db.signin import Account
from db.worklist import DEFAULT_MAX_WAIT_DAYS

SYNTHETIC_NOTICE = ("Synthetic demo data: phantoms, not patients, and a model trained on them. Nothing here means "
                    "anything clinically.")


MARKDOWN_SPECIALS = set("\\`*_{}[]()#+-.!|<>~$:")


def plain(text: object) -> str:
    """Stored text (a comment, a file name, a display name) for st.markdown/st.caption: every character markdown
    could act on is escaped, so it shows exactly as stored and never becomes markup, a link or HTML."""
    return "".join("\\" + ch if ch in MARKDOWN_SPECIALS else ch for ch in str(text))


def max_wait_days() -> int:
    """Cases scored longer ago than this rise to the top of the uncertainty order (``CXR_MAX_WAIT_DAYS``)."""
    try:
        return max(1, int(os.environ.get("CXR_MAX_WAIT_DAYS", DEFAULT_MAX_WAIT_DAYS)))
    except ValueError:
        return DEFAULT_MAX_WAIT_DAYS


def sidebar(account: Account) -> None:
    with st.sidebar:
        st.caption(f"Signed in as **{plain(account.shown_name)}** ({account.role})")
        if st.button("Sign out", icon=":material/logout:", key="sign_out"):
            auth.sign_out(account)
            st.rerun()
        active = data.version(data.default_version_id())
        if active and active["is_synthetic"]:
            st.warning(SYNTHETIC_NOTICE, icon=":material/science:")
        keyboard.keep_shortcuts_working()


# Streamlit leaves 6rem above a page's title; the toolbar needs about half of that, and on a laptop screen the rest
# is two rows of the worklist.
PAGE_CSS = """<style>
[data-testid="stMainBlockContainer"] { padding-top: 3.4rem; }
</style>"""

READING_ROOM_CSS = """<style>
[data-testid="stMainBlockContainer"] { padding: 3.4rem 1.25rem 1rem 1.25rem; max-width: none; }
[data-testid="stMainBlockContainer"] h4 { padding: 0.1rem 0 0 0; }
[data-testid="stMainBlockContainer"] h5 { padding: 0.4rem 0 0.1rem 0; }
</style>"""


def page_frame() -> None:
    """Every signed-in page's frame: less empty space above the title (the case page narrows it further)."""
    st.html(PAGE_CSS)


def reading_room() -> None:
    """The case page's frame: narrow margins, so that the film can be as large as the screen."""
    st.html(READING_ROOM_CSS)


def guarded(callback):
    """A callback that writes: when the account was deactivated or its sessions were ended meanwhile, this browser
    is signed out with a plain notice instead of a traceback, and nothing is written."""
    @functools.wraps(callback)
    def run(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except actions.SignedOut:
            auth.forget_session()
    return run


def url_problems(query: dict[str, list[str]]) -> None:
    """A plain message for a link whose values were not valid (they were ignored)."""
    invalid = urlstate.invalid_keys(query)
    if invalid:
        st.warning(f"This link has values that are not valid ({', '.join(invalid)}); they were ignored.",
                   icon=":material/link_off:")


def account() -> Account:
    """The signed-in account (the app only runs a page for one)."""
    current = auth.current_account()
    if current is None:
        st.stop()
    return current


def query() -> dict[str, list[str]]:
    return {key: st.query_params.get_all(key) for key in st.query_params}


def admins_only() -> None:
    st.title("Accounts")
    st.info("Accounts are managed by admins. Ask an admin to create an account or to reset a password.",
            icon=":material/lock:")


def page(name: str) -> st.Page:
    return st.session_state["pages"][name]


def to_worklist() -> None:
    st.switch_page(page("worklist"), query_params={key: st.query_params.get_all(key) for key in st.query_params})
