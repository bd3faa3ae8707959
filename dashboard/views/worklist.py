"""Worklist: the cases to read, filtered, ordered and paged in SQL; the state lives in the URL query."""

import datetime as dt

import streamlit as st

from dashboard import data, layout, urlstate
from db.worklist import STATUSES, WorklistFilter

MAX_WAIT_DAYS = layout.max_wait_days()
SORT_LABELS = {"uncertainty": "Uncertainty (most uncertain first)", "confidence": "Confidence (lowest first)",
               "date": "Scoring date (oldest first)"}
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
flt = urlstate.filter_from_query(query, default_version, MAX_WAIT_DAYS)
version = data.version(flt.model_version_id) or data.version(default_version)
options = data.image_attribute_values()


def set_query(**changes) -> None:
    new = urlstate.filter_to_query(WorklistFilter(**{**flt.__dict__, **changes}))
    st.query_params.from_dict(new)


with st.expander("Filters and order" + (f" — {len(flt.active_filters)} active" if flt.active_filters else ""),
                 expanded=True):
    row1 = st.columns([2, 2, 2, 2])
    labels = {v["id"]: v["label"] + (" (active)" if v["is_active"] else "") for v in data.versions()}
    chosen = row1[0].selectbox("Model version", list(labels), index=list(labels).index(version["id"]),
                               format_func=labels.get)
    classes = row1[1].multiselect("Predicted class", version["classes"],
                                  default=[c for c in flt.classes if c in version["classes"]])
    status = row1[2].selectbox("Review status", STATUSES, index=STATUSES.index(flt.status),
                               format_func=STATUS_LABELS.get)
    sort = row1[3].selectbox("Order", list(SORT_LABELS), index=list(SORT_LABELS).index(flt.sort),
                             format_func=SORT_LABELS.get)
    row2 = st.columns([2, 2, 2, 2])
    confidence = row2[0].slider("Confidence", 0.0, 1.0, (flt.confidence_min, flt.confidence_max), 0.05)
    date_field = row2[1].radio("Date", ["scored", "study"], index=["scored", "study"].index(flt.date_field),
                               horizontal=True, format_func={"scored": "scored", "study": "study"}.get)
    dates = row2[1].date_input("Date range", value=(flt.date_from, flt.date_to) if flt.date_from and flt.date_to
                               else (), max_value=dt.date.today() + dt.timedelta(days=1), label_visibility="collapsed")
    modality = row2[2].selectbox("Modality", [None, *options["modality"]],
                                 index=([None, *options["modality"]].index(flt.modality)
                                        if flt.modality in options["modality"] else 0),
                                 format_func=lambda m: m or "any")
    view = row2[3].selectbox("View", [None, *options["view"]],
                             index=[None, *options["view"]].index(flt.view) if flt.view in options["view"] else 0,
                             format_func=lambda v: v or "any")
    row3 = st.columns([4, 2, 2])
    folder = row3[0].text_input("Folder (path prefix)", value=flt.folder or "")
    outside = row3[1].checkbox("Model looks outside the lungs", value=flt.outside_lungs,
                               help="Only cases with a stored attribution map whose positive attribution lies mostly "
                                    "outside the central chest region.")
    date_from, date_to = (dates + (None, None))[:2] if isinstance(dates, tuple) else (None, None)
    wanted = dict(model_version_id=chosen, classes=tuple(sorted(classes)), status=status, sort=sort,
                  confidence_min=confidence[0], confidence_max=confidence[1], date_field=date_field,
                  date_from=date_from, date_to=date_to, modality=modality, view=view, folder=folder.strip() or None,
                  outside_lungs=outside)
    if any(getattr(flt, key) != value for key, value in wanted.items()):
        set_query(**wanted)
        st.rerun()
    if flt.active_filters and row3[2].button("Clear filters", icon=":material/filter_alt_off:"):
        st.query_params.from_dict({"v": str(flt.model_version_id)})
        st.rerun()

page_number = urlstate.page_from_query(query)
result = data.worklist_page(flt, page_number, me.id)
filter_note = f" · filter active: {', '.join(flt.active_filters)}" if flt.active_filters else " · no filter"
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


table = [{"case": r.image_id, "file": r.file_name, "predicted": r.predicted_class,
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
