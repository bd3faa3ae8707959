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
bar = st.columns(worklist_parts.BAR_WIDTHS, gap="xsmall", vertical_alignment="center")
wanted, changed = worklist_parts.filter_bar(bar, flt, version, data.image_attribute_values(), me)
page_number = urlstate.page_from_query(query)
if changed:
    st.query_params.from_dict(urlstate.filter_to_query(wanted))  # a new filter starts on page 1
    page_number = 1
    if wanted.model_version_id != version["id"]:  # the class list above belongs to the previous version
        st.rerun()
flt = wanted

result = data.worklist_page(flt, page_number, me.id)
bar[4].markdown(worklist_parts.count_line(result, flt))
if bar[5].button("Start reading", type="primary", icon=":material/play_arrow:", key="start_reading",
                 disabled=not result.rows, width="stretch",
                 help="Open the first case of this list that nobody else is reading."):
    first = data.first_case(flt, me.id)
    if first is not None:
        st.switch_page(layout.page("case"), query_params={**urlstate.filter_to_query(flt), urlstate.IMAGE: str(first)})
if not result.rows:
    worklist_parts.empty_state(flt, me.id)
    st.stop()

picked = st.dataframe(worklist_parts.table_rows(result.rows, show_files=me.is_admin), hide_index=True,
                      on_select="rerun", selection_mode="single-row", key="worklist_table",
                      height=worklist_parts.table_height(len(result.rows)), row_height=worklist_parts.ROW_HEIGHT,
                      column_config=worklist_parts.COLUMN_CONFIG)
nav = st.columns([150, 130, 700], gap="xsmall", vertical_alignment="center")
if nav[0].button("Previous page", disabled=result.page <= 1, icon=":material/chevron_left:"):
    st.query_params[urlstate.PAGE] = str(result.page - 1)
    st.rerun()
if nav[1].button("Next page", disabled=result.page >= result.pages, icon=":material/chevron_right:"):
    st.query_params[urlstate.PAGE] = str(result.page + 1)
    st.rerun()
nav[2].caption(f"Page {result.page} of {result.pages}. Select a row to open its case. ⚠: waiting longer than "
               f"{MAX_WAIT_DAYS} days (shown first in uncertainty order).")

if picked and picked.selection.rows:
    row = result.rows[picked.selection.rows[0]]
    target = {**urlstate.filter_to_query(flt), urlstate.IMAGE: str(row.image_id)}
    if result.page > 1:
        target[urlstate.PAGE] = str(result.page)
    st.switch_page(layout.page("case"), query_params=target)
