"""Flagged: cases whose latest review is flagged for retraining, and exactly the CSV of cxr-export-flagged."""

import streamlit as st

from dashboard import actions, data, layout, urlstate

me = layout.account()
st.title("Flagged for retraining")
cases = data.flagged()
if not cases:
    st.info("No case is flagged. A review whose label differs from the model's is flagged by default.")
    st.stop()

st.caption(f"{len(cases)} case{'s' if len(cases) != 1 else ''} whose latest review is flagged, oldest review first.")
picked = st.dataframe(
    [{"case": c.case_id, "reviewed": c.review_time.strftime("%Y-%m-%d %H:%M"), "reviewer": c.reviewer,
      "reviewer's label": c.reviewer_label, "model said": c.predicted_class or "—", "model version": c.model_version,
      "comment": c.comment or ""} | ({"path": c.path} if me.is_admin else {}) for c in cases],
    hide_index=True, on_select="rerun", selection_mode="single-row", key="flagged_table")

include_paths = me.is_admin and st.checkbox("Include file paths in the CSV (admins only)", key="export_paths")
csv_text = actions.flagged_export(me.id, include_paths=include_paths)
st.download_button("Download CSV", csv_text, file_name="flagged.csv", mime="text/csv", icon=":material/download:",
                   on_click=actions.record_export, args=(me.id, include_paths, len(cases)), key="download_flagged")
st.caption("The same file as `cxr-export-flagged`" + (" --include-paths" if include_paths else "") + ".")

if picked and picked.selection.rows:
    case = cases[picked.selection.rows[0]]
    st.switch_page(layout.page("case"), query_params={urlstate.IMAGE: str(case.case_id), "status": "flagged"})
