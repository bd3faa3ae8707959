"""Worklist: the cases to read, filtered, ordered and paged in SQL; the state lives in the URL query."""

import streamlit as st

from dashboard import data, layout, urlstate, worklist_parts

MAX_WAIT_DAYS = layout.max_wait_days()

me = layout.account()
st.title("Worklist")
default_version = data.default_version_id()
if default_version is None:
    st.info("Nothing has been scored yet. Run the nightly scorer: `cxr-score FOLDER` (or `cxr-demo` for a demo).",
            icon=":material/hourglass_empty:")
    st.stop()

query = layout.query()
flt = urlstate.filter_from_query(query, default_version, MAX_WAIT_DAYS, allow_folder=me.is_admin,
                                 any_version=me.is_admin)
version = data.version(flt.model_version_id) or data.version(default_version)
layout.url_problems(query)
wanted, changed = worklist_parts.filter_panel(flt, version, data.image_attribute_values(), me)
page_number = urlstate.page_from_query(query)
if changed:
    st.query_params.from_dict(urlstate.filter_to_query(wanted))  # a new filter starts on page 1
    page_number = 1
    if wanted.model_version_id != version["id"]:  # the class list above belongs to the previous version
        st.rerun()
flt = wanted

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


table = worklist_parts.table_rows(result.rows, show_files=me.is_admin)
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
