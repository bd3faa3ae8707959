"""The worklist's parts: the filter panel (its widgets kept in step with the URL) and the table of cases."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from dashboard import data, urlstate
from db.signin import Account
from db.worklist import DATE_FIELDS, STATUSES, WorklistFilter, WorklistRow

SORT_LABELS = {"uncertainty": "Most uncertain first", "confidence": "Lowest confidence first",
               "date": "Oldest scored first"}  # short enough for the column they sit in
STATUS_LABELS = {"all": "All", "unreviewed": "Unreviewed", "reviewed": "Reviewed", "flagged": "Flagged",
                 "disagrees": "Reviewer disagrees with model"}
CHANGED_KEY = "worklist_widget_changed"
CLEAR_KEY = "worklist_clear"


def _widget_changed() -> None:
    st.session_state[CHANGED_KEY] = True


def _sync_widgets(flt: WorklistFilter, version: dict, options: dict) -> WorklistFilter:
    """The filter widgets are keyed, so a widget keeps its state while its value changes, and a change is applied
    in the same run (no st.rerun): an unkeyed widget is rebuilt each time its value from the URL changes, and a
    rerun can drop a value the browser sent meanwhile, so keys pressed in a row on the slider were lost. In a run
    that no filter widget started, the URL is the truth (a link, Back, paging, Clear filters) and the widgets
    follow it. Widgets get their values only through the session state (never also a default, which Streamlit
    warns about). Returns the filter the widgets start from."""
    follow_url = not st.session_state.pop(CHANGED_KEY, False)
    if st.session_state.pop(CLEAR_KEY, False):  # Clear filters wins over a value sent in the same click
        flt, follow_url = urlstate.cleared(flt), True
    shown = urlstate.widget_values(flt, version["id"], version["classes"], options["modality"], options["view"])
    for key, value in shown.items():
        if key not in st.session_state or (follow_url and st.session_state[key] != value):
            st.session_state[key] = value
    return flt


def _clear_filters(flt: WorklistFilter) -> None:
    st.query_params.from_dict(urlstate.filter_to_query(urlstate.cleared(flt)))
    st.session_state[CLEAR_KEY] = True


def filter_panel(flt: WorklistFilter, version: dict, options: dict, me: Account) -> tuple[WorklistFilter, bool]:
    """The filters and the order; returns the filter they show and whether it differs from the URL's (then the
    URL is updated and the list starts on page 1)."""
    flt = _sync_widgets(flt, version, options)
    with st.expander("Filters and order", expanded=True):
        row1 = st.columns([2, 2, 2, 2])
        shown = data.versions() if me.is_admin else [version]  # readers: the active version's output only
        labels = {v["id"]: v["label"] + (" (active)" if v["is_active"] else " (challenger)" if v["is_challenger"]
                                         else "") for v in shown}
        chosen = row1[0].selectbox("Model version", list(labels), format_func=labels.get, key="wl_version",
                                   on_change=_widget_changed, disabled=not me.is_admin,
                                   help=None if me.is_admin else "Readers see the active version's predictions.")
        classes = row1[1].multiselect("Predicted class", version["classes"], key="wl_classes",
                                      on_change=_widget_changed)
        status = row1[2].selectbox("Review status", STATUSES, format_func=STATUS_LABELS.get, key="wl_status",
                                   on_change=_widget_changed)
        sort = row1[3].selectbox("Order", list(SORT_LABELS), format_func=SORT_LABELS.get, key="wl_sort",
                                 on_change=_widget_changed)
        row2 = st.columns([2, 2, 2, 2])
        confidence = row2[0].slider("Confidence", 0.0, 1.0, step=0.05, key="wl_confidence",
                                    on_change=_widget_changed)
        date_field = row2[1].radio("Date", list(DATE_FIELDS), horizontal=True, key="wl_date_field",
                                   on_change=_widget_changed)
        dates = row2[1].date_input("Date range", min_value=urlstate.EARLIEST_DATE,
                                   max_value=dt.date.today() + dt.timedelta(days=1), label_visibility="collapsed",
                                   key="wl_dates", on_change=_widget_changed)
        modality = row2[2].selectbox("Modality", [None, *options["modality"]], format_func=lambda m: m or "any",
                                     key="wl_modality", on_change=_widget_changed)
        view = row2[3].selectbox("View", [None, *options["view"]], format_func=lambda v: v or "any",
                                 key="wl_view", on_change=_widget_changed)
        row3 = st.columns([4, 2, 2])
        folder = None
        if me.is_admin:  # paths can name patients; reviewers must not even learn whether a folder exists
            folder = row3[0].text_input("Folder (path prefix)", key="wl_folder", on_change=_widget_changed)
        outside = row3[1].checkbox("Model looks outside the lungs", on_change=_widget_changed, key="wl_outside",
                                   help="Only cases with a stored attribution map whose positive attribution lies "
                                        "mostly outside the central chest region.")
        date_from, date_to = (dates + (None, None))[:2] if isinstance(dates, tuple) else (None, None)
        wanted = WorklistFilter(
            model_version_id=chosen, classes=tuple(sorted(classes)), status=status, sort=sort,
            confidence_min=confidence[0], confidence_max=confidence[1], date_field=date_field, date_from=date_from,
            date_to=date_to, modality=modality, view=view, folder=(folder or "").strip() or None,
            outside_lungs=outside, max_wait_days=flt.max_wait_days)
        row3[2].button("Clear filters", icon=":material/filter_alt_off:", disabled=not wanted.active_filters,
                       on_click=_clear_filters, args=(wanted,))
    return wanted, wanted != flt


def _waited(delta: dt.timedelta) -> str:
    return f"{delta.days} d" if delta.days else f"{delta.seconds // 3600} h"


def table_rows(rows: list[WorklistRow], *, show_files: bool) -> list[dict]:
    """One row per case; the file name only for admins (names can carry a patient's name or record number)."""
    return [{"case": r.image_id} | ({"file": r.file_name} if show_files else {})
            | {"predicted": r.predicted_class, "confidence": round(r.confidence, 3),
               "uncertainty": round(r.entropy, 3), "waiting": ("⚠ " if r.overdue else "") + _waited(r.waited),
               "study date": str(r.study_date) if r.study_date else "—",  # PNG/JPEG carry none of these
               "modality": r.modality or "—", "view": r.view_position or "—",
               "review": ((r.latest_label or "") + (" ⚑" if r.latest_flagged else "")) or "—",
               "being read by": r.claimed_by or ""} for r in rows]
