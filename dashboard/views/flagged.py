"""Flagged: cases whose latest review is flagged for retraining, and exactly the CSV of cxr-export-flagged (the one
way out for this data: built on request, audited, delivered to the signed-in browser only)."""

import streamlit as st

from dashboard import actions, data, download, layout, urlstate
from db.signin import Account

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


def export(account: Account, include_paths: bool) -> None:
    csv_text = actions.export_flagged(account, include_paths=include_paths)
    download.offer("flagged.csv", csv_text, "text/csv")


include_paths = me.is_admin and st.checkbox("Include file paths in the CSV (admins only)", key="export_paths")
st.button("Download CSV", icon=":material/download:", key="download_flagged",
          on_click=layout.guarded(export), args=(me, include_paths))
download.deliver_pending()
st.caption("The same file as `cxr-export-flagged`" + (" --include-paths" if include_paths else "")
           + "; each download is recorded in the audit trail.")

if picked and picked.selection.rows:
    case = cases[picked.selection.rows[0]]
    st.switch_page(layout.page("case"), query_params={urlstate.IMAGE: str(case.case_id), "status": "flagged"})
