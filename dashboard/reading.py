"""The reader's unsaved work in this browser session (:mod:`dashboard.case_session`), tied to the case claims:
opening a case claims it, leaving it without saving (N, P, the worklist, a link) gives it back at once."""

from __future__ import annotations

import time

import streamlit as st

from dashboard import actions
from dashboard.case_session import CaseDraft, ReadingSession
from db.signin import Account

KEY = "reading_session"


def reading_session() -> ReadingSession:
    return st.session_state.setdefault(KEY, ReadingSession())


def open_case(me: Account, image_id: int) -> CaseDraft:
    draft, left = reading_session().open(image_id, time.monotonic())
    if left is not None:
        actions.release_claim(me, left)
    if draft.claim is None:
        draft.claim = actions.claim(me, image_id, second_reading=draft.second_reading)
    return draft


def on_screen(draft: CaseDraft) -> bool:
    """Whether the case a button acting on ``draft`` was drawn for is still the reader's case. The case page's
    buttons keep their keys from case to case, and a press that reaches the server while the next case is being
    drawn (its film shows first) comes with the callback of the case before: applied, a label meant for the new film
    went to the case just saved, and S could store it there as a second review. Such a press is dropped, and the
    reader told."""
    if reading_session().current == draft.image_id:  # the case the last run opened
        return True
    st.session_state["case_notice"] = ("A key arrived while the case was changing and was not applied to any case: "
                                       "press it again.")
    return False


def leave_case(me: Account) -> None:
    """Another page is shown: the case on screen (if any) stops its clock and is given back."""
    left = reading_session().leave(time.monotonic())
    if left is not None:
        actions.release_claim(me, left)


def read_anyway(me: Account, draft: CaseDraft) -> None:
    """A deliberate second reading of a case another reviewer holds (recorded with the review)."""
    if not on_screen(draft):
        return
    draft.second_reading = True
    draft.claim = actions.claim(me, draft.image_id, second_reading=True)


def saved(image_id: int) -> None:
    reading_session().saved(image_id)
