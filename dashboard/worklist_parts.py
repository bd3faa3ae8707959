"""The worklist's parts: one compact filter bar (its widgets kept in step with the URL), the count line, the empty
state and the table of cases."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import streamlit as st

from dashboard import data, layout, urlstate
from db.signin import Account
from db.worklist import DATE_FIELDS, STATUSES, WorklistFilter, WorklistPage, WorklistRow, without_review_filter

SORT_LABELS = {"uncertainty": "Most uncertain first", "confidence": "Lowest confidence first",
               "date": "Oldest scored first"}
# The bar's menus show no label above them, so each choice names what it is.
STATUS_LABELS = {"all": "Any review status", "unreviewed": "Unreviewed", "reviewed": "Reviewed", "flagged": "Flagged",
                 "disagrees": "Reader disagrees with model"}
# status, class, order, more filters, count line, start reading: about the pixels each needs at 1440 px
BAR_WIDTHS = [130, 185, 190, 130, 215, 135]
ROW_HEIGHT = 27  # px; compact rows, so that 20 of them and the page buttons fit a 900 px screen below the bar
HEADER_HEIGHT = 36  # px; the table's header keeps its own height whatever the rows'
VISIBLE_ROWS = 20
NEUTRAL = "#7a8ca3"  # a slate blue: confidence and uncertainty are facts to weigh, not alarms
COLUMN_CONFIG = {
    "confidence": st.column_config.ProgressColumn(min_value=0, max_value=1, format="%.2f", color=NEUTRAL,
                                                  width=110),
    "uncertainty": st.column_config.ProgressColumn(min_value=0, max_value=1, format="%.2f", color=NEUTRAL,
                                                   width=110,
                                                   help="Normalised entropy of the prediction: 1 is a coin toss."),
    "read by": st.column_config.TextColumn(help="Who gave the latest review."),
}
CHANGED_KEY = "worklist_widget_changed"
APPLY_KEY = "worklist_apply"


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
    applied = st.session_state.pop(APPLY_KEY, None)
    if applied is not None:  # a button's filter (Clear filters) wins over a value sent in the same click
        flt, follow_url = applied, True
    shown = urlstate.widget_values(flt, version["id"], version["classes"], options["modality"], options["view"])
    for key, value in shown.items():
        if key not in st.session_state or (follow_url and st.session_state[key] != value):
            st.session_state[key] = value
    return flt


def _apply(flt: WorklistFilter) -> None:
    st.query_params.from_dict(urlstate.filter_to_query(flt))
    st.session_state[APPLY_KEY] = flt


def filter_bar(bar: list, flt: WorklistFilter, version: dict, options: dict,
               me: Account) -> tuple[WorklistFilter, bool]:
    """The most used filters and the order in the bar's first columns, the rest behind "More filters"; returns
    the filter they show and whether it differs from the URL's (then the URL is updated and the list starts on
    page 1)."""
    flt = _sync_widgets(flt, version, options)
    status = bar[0].selectbox("Review status", STATUSES, format_func=STATUS_LABELS.get, key="wl_status",
                              on_change=_widget_changed, label_visibility="collapsed")
    classes = bar[1].multiselect("Predicted class", version["classes"], key="wl_classes", on_change=_widget_changed,
                                 placeholder="Any predicted class", label_visibility="collapsed")
    sort = bar[2].selectbox("Order", list(SORT_LABELS), format_func=SORT_LABELS.get, key="wl_sort",
                            on_change=_widget_changed, label_visibility="collapsed")
    with bar[3].popover("More filters", key="wl_more", width="stretch"):
        wanted = _more_filters(replace(flt, status=status, classes=tuple(sorted(classes)), sort=sort), version,
                               options, me)
    return wanted, wanted != flt


def _more_filters(flt: WorklistFilter, version: dict, options: dict, me: Account) -> WorklistFilter:
    """The less used filters, inside the popover; returns ``flt`` with their values."""
    shown = data.versions() if me.is_admin else [version]  # readers: the active version's output only
    labels = {v["id"]: v["label"] + (" (active)" if v["is_active"] else " (challenger)" if v["is_challenger"]
                                     else "") for v in shown}
    chosen = st.selectbox("Model version", list(labels), format_func=labels.get, key="wl_version",
                          on_change=_widget_changed, disabled=not me.is_admin,
                          help=None if me.is_admin else "Readers see the active version's predictions.")
    confidence = st.slider("Confidence", 0.0, 1.0, step=0.05, key="wl_confidence", on_change=_widget_changed)
    date_field = st.radio("Date", list(DATE_FIELDS), horizontal=True, key="wl_date_field", on_change=_widget_changed)
    dates = st.date_input("Date range", min_value=urlstate.EARLIEST_DATE,
                          max_value=dt.date.today() + dt.timedelta(days=1), label_visibility="collapsed",
                          key="wl_dates", on_change=_widget_changed)
    left, right = st.columns(2)
    modality = left.selectbox("Modality", [None, *options["modality"]], format_func=lambda m: m or "any",
                              key="wl_modality", on_change=_widget_changed)
    view = right.selectbox("View", [None, *options["view"]], format_func=lambda v: v or "any", key="wl_view",
                           on_change=_widget_changed)
    folder = None
    if me.is_admin:  # paths can name patients; reviewers must not even learn whether a folder exists
        folder = st.text_input("Folder (path prefix)", key="wl_folder", on_change=_widget_changed)
    outside = st.checkbox("Model looks outside the lungs", on_change=_widget_changed, key="wl_outside",
                          help="Only cases with a stored attribution map whose positive attribution lies "
                               "mostly outside the central chest region.")
    date_from, date_to = (dates + (None, None))[:2] if isinstance(dates, tuple) else (None, None)
    wanted = replace(flt, model_version_id=chosen, confidence_min=confidence[0], confidence_max=confidence[1],
                     date_field=date_field, date_from=date_from, date_to=date_to, modality=modality, view=view,
                     folder=(folder or "").strip() or None, outside_lungs=outside)
    st.button("Clear filters", icon=":material/filter_alt_off:", disabled=not wanted.active_filters,
              on_click=_apply, args=(urlstate.cleared(wanted),))
    return wanted


def count_line(result: WorklistPage, flt: WorklistFilter) -> str:
    """E.g. "**1–50 of 216** cases · filter: unreviewed"; without the range when nothing matches."""
    filters = urlstate.describe_filters(flt)
    note = f"filter: {layout.plain(', '.join(filters))}" if filters else "no filter"
    if not result.rows:
        return f"**No case** · {note}"
    return f"**{result.first}–{result.last} of {result.total}** cases · {note}"


def empty_state(flt: WorklistFilter, reviewer_id: int) -> None:
    """What to do when nothing matches: the usual filter with nothing left to read is said plainly."""
    score = "score more images with `cxr-score FOLDER`"
    cleared = urlstate.cleared(flt)
    if not data.worklist_page(without_review_filter(cleared), 1, reviewer_id).total:  # every case of the version
        st.info(f"This model version has scored no image yet: {score}.", icon=":material/hourglass_empty:")
    elif flt.active_filters == cleared.active_filters and flt.status == cleared.status:
        st.info(f"Nothing unreviewed remains: every case this model version scored has been read. Show all cases "
                f"to see the readings, or {score}.", icon=":material/task_alt:")
        st.button("Show all cases", key="wl_show_all", on_click=_apply, args=(replace(flt, status="all"),))
    else:
        st.info(f"No case matches these filters. Clear filters to see every unreviewed case, or {score}.",
                icon=":material/filter_alt_off:")
        st.button("Clear filters", key="wl_clear_empty", icon=":material/filter_alt_off:", on_click=_apply,
                  args=(cleared,))


def table_height(rows: int) -> int:
    """Up to VISIBLE_ROWS rows on screen (the table scrolls inside for the rest of the page), the header and
    the border."""
    return HEADER_HEIGHT + min(rows, VISIBLE_ROWS) * ROW_HEIGHT + 2


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
               "read by": r.latest_reviewer or "", "being read by": r.claimed_by or ""} for r in rows]
