"""Worklist: the cases to read, filtered, ordered and paged in SQL; the state lives in the URL query."""

import datetime as dt

import streamlit as st

from dashboard import data, layout, urlstate
from db.worklist import DATE_FIELDS, STATUSES, WorklistFilter

MAX_WAIT_DAYS = layout.max_wait_days()
SORT_LABELS = {"uncertainty": "Most uncertain first", "confidence": "Lowest confidence first",
               "date": "Oldest scored first"}  # short enough for the column they sit in
STATUS_LABELS = {"all": "All", "unreviewed": "Unreviewed", "reviewed": "Reviewed", "flagged": "Flagged",
                 "disagrees": "Reviewer disagrees with model"}

me = layout.account()
st.title("Worklist")
default_version = data.default_version_id()
if default_version is None:
    st.info("Nothing has been scored yet. Run the nightly scorer: `cxr-score FOLDER` (or `cxr-demo` for a demo).",
            icon=":material/hourglass_empty:")
    st.stop()

query = layout.query()
flt = urlstate.filter_from_query(query, default_version, MAX_WAIT_DAYS, allow_folder=me.is_admin)
version = data.version(flt.model_version_id) or data.version(default_version)
options = data.image_attribute_values()
layout.url_problems(query)


# The filter widgets are keyed, so a widget keeps its state while its value changes, and a change is applied in
# the same run (no st.rerun): an unkeyed widget is rebuilt each time its value from the URL changes, and a rerun
# can drop a value the browser sent meanwhile, so keys pressed in a row on the slider were lost. In a run that no
# filter widget started, the URL is the truth (a link, Back, paging, Clear filters) and the widgets follow it.
# Widgets get their values only through the session state (never also a default), which Streamlit warns about.
shown = urlstate.widget_values(flt, version["id"], version["classes"], options["modality"], options["view"])
follow_url = not st.session_state.pop("worklist_widget_changed", False)
if st.session_state.pop("worklist_clear", False):  # Clear filters wins over a value sent in the same click
    flt, follow_url = urlstate.cleared(flt), True
    shown = urlstate.widget_values(flt, version["id"], version["classes"], options["modality"], options["view"])
for key, value in shown.items():
    if key not in st.session_state or (follow_url and st.session_state[key] != value):
        st.session_state[key] = value


def widget_changed() -> None:
    st.session_state["worklist_widget_changed"] = True


def clear_filters() -> None:
    st.query_params.from_dict(urlstate.filter_to_query(urlstate.cleared(flt)))
    st.session_state["worklist_clear"] = True


with st.expander("Filters and order", expanded=True):
    row1 = st.columns([2, 2, 2, 2])
    labels = {v["id"]: v["label"] + (" (active)" if v["is_active"] else "") for v in data.versions()}
    chosen = row1[0].selectbox("Model version", list(labels), format_func=labels.get, key="wl_version",
                               on_change=widget_changed)
    classes = row1[1].multiselect("Predicted class", version["classes"], key="wl_classes", on_change=widget_changed)
    status = row1[2].selectbox("Review status", STATUSES, format_func=STATUS_LABELS.get, key="wl_status",
                               on_change=widget_changed)
    sort = row1[3].selectbox("Order", list(SORT_LABELS), format_func=SORT_LABELS.get, key="wl_sort",
                             on_change=widget_changed)
    row2 = st.columns([2, 2, 2, 2])
    confidence = row2[0].slider("Confidence", 0.0, 1.0, step=0.05, key="wl_confidence", on_change=widget_changed)
    date_field = row2[1].radio("Date", list(DATE_FIELDS), horizontal=True, key="wl_date_field",
                               on_change=widget_changed)
    dates = row2[1].date_input("Date range", min_value=urlstate.EARLIEST_DATE,
                               max_value=dt.date.today() + dt.timedelta(days=1), label_visibility="collapsed",
                               key="wl_dates", on_change=widget_changed)
    modalities = [None, *options["modality"]]
    modality = row2[2].selectbox("Modality", modalities, format_func=lambda m: m or "any", key="wl_modality",
                                 on_change=widget_changed)
    views = [None, *options["view"]]
    view = row2[3].selectbox("View", views, format_func=lambda v: v or "any", key="wl_view",
                             on_change=widget_changed)
    row3 = st.columns([4, 2, 2])
    folder = None
    if me.is_admin:  # paths can name patients; reviewers must not even learn whether a folder exists
        folder = row3[0].text_input("Folder (path prefix)", key="wl_folder", on_change=widget_changed)
    outside = row3[1].checkbox("Model looks outside the lungs", on_change=widget_changed,
                               help="Only cases with a stored attribution map whose positive attribution lies mostly "
                                    "outside the central chest region.", key="wl_outside")
    date_from, date_to = (dates + (None, None))[:2] if isinstance(dates, tuple) else (None, None)
    wanted = dict(model_version_id=chosen, classes=tuple(sorted(classes)), status=status, sort=sort,
                  confidence_min=confidence[0], confidence_max=confidence[1], date_field=date_field,
                  date_from=date_from, date_to=date_to, modality=modality, view=view,
                  folder=(folder or "").strip() or None, outside_lungs=outside)
    page_number = urlstate.page_from_query(query)
    if any(getattr(flt, key) != value for key, value in wanted.items()):
        version_changed = wanted["model_version_id"] != version["id"]
        flt = WorklistFilter(**{**flt.__dict__, **wanted})
        st.query_params.from_dict(urlstate.filter_to_query(flt))  # a new filter starts on page 1
        page_number = 1
        if version_changed:  # the class list above belongs to the previous version
            st.rerun()
    row3[2].button("Clear filters", icon=":material/filter_alt_off:", disabled=not flt.active_filters,
                   on_click=clear_filters)

result = data.worklist_page(flt, page_number, me.id)
filters = urlstate.describe_filters(flt)
filter_note = f" · filter: {layout.plain(', '.join(filters))}" if filters else " · no filter"
head = st.columns([6, 2])
head[0].markdown(f"**{result.first}–{result.last} of {result.total}** cases{filter_note}")
if not result.rows:
    st.info("No case matches. Clear a filter, or score more images with `cxr-score`.")
    st.stop()
if head[1].button("Start reading", type="primary", icon=":material/play_arrow:", key="start_reading",
                  help="Open the first case of this list that nobody else is reading."):
    first = data.first_case(flt, me.id)
    if first is not None:
        st.switch_page(layout.page("case"), query_params={**urlstate.filter_to_query(flt), urlstate.IMAGE: str(first)})


def waited(delta: dt.timedelta) -> str:
    return f"{delta.days} d" if delta.days else f"{delta.seconds // 3600} h"


table = [{"case": r.image_id} | ({"file": r.file_name} if me.is_admin else {}) | {"predicted": r.predicted_class,
          "confidence": round(r.confidence, 3), "uncertainty": round(r.entropy, 3),
          "waiting": ("⚠ " if r.overdue else "") + waited(r.waited),
          "study date": str(r.study_date) if r.study_date else "—",  # PNG/JPEG carry none of these
          "modality": r.modality or "—", "view": r.view_position or "—",
          "review": ((r.latest_label or "") + (" ⚑" if r.latest_flagged else "")) or "—",
          "being read by": r.claimed_by or ""} for r in result.rows]
picked = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row", key="worklist_table",
                      column_config={"confidence": st.column_config.ProgressColumn(min_value=0, max_value=1,
                                                                                   format="%.2f")})
st.caption(f"Select a row to open its case. ⚠: waiting longer than {MAX_WAIT_DAYS} days (shown first in "
           "uncertainty order).")
nav = st.columns([1, 1, 6])
if nav[0].button("Previous page", disabled=result.page <= 1, icon=":material/chevron_left:"):
    st.query_params[urlstate.PAGE] = str(result.page - 1)
    st.rerun()
if nav[1].button("Next page", disabled=result.page >= result.pages, icon=":material/chevron_right:"):
    st.query_params[urlstate.PAGE] = str(result.page + 1)
    st.rerun()
nav[2].caption(f"Page {result.page} of {result.pages}")

if picked and picked.selection.rows:
    row = result.rows[picked.selection.rows[0]]
    target = {**urlstate.filter_to_query(flt), urlstate.IMAGE: str(row.image_id)}
    if result.page > 1:
        target[urlstate.PAGE] = str(result.page)
    st.switch_page(layout.page("case"), query_params=target)
