"""Overview: counts, the last scoring runs (for admins, the files they could not score), and charts of volume,
classes, confidence and agreement."""

import streamlit as st

from dashboard import charts, data, layout

me = layout.account()
st.title("Overview")
version_id = data.default_version_id()
info = data.overview_data(version_id)
counts = info["counts"]
cols = st.columns(6)
for col, (label, value) in zip(cols, [("Scored", counts.scored), ("Awaiting review", counts.awaiting_review),
                                      ("Reviewed", counts.reviewed), ("Flagged", counts.flagged),
                                      ("Failed files", counts.failed_files), ("Out of scope", counts.out_of_scope)],
                               strict=True):
    col.metric(label, value)
if version_id is not None:
    st.caption(f"Scored and awaiting review: predictions of model version {data.version(version_id)['label']}.")

st.subheader("Last scoring runs")
if not info["runs"]:
    st.info("No scoring run yet. Run `cxr-score FOLDER` (nightly from cron), or `cxr-demo` for the demo.")
else:
    shadowed = any(r.shadow_scored or r.shadow_unavailable for r in info["runs"])

    def shadow(run) -> str:
        def name(version_id: int) -> str:
            return (data.version(version_id) or {}).get("label", str(version_id))

        return ", ".join([f"{name(v)}: {n}" for v, n in sorted(run.shadow_scored.items())]
                         + [f"{name(v)}: not scored ({why})" for v, why in sorted(run.shadow_unavailable.items())])

    st.dataframe([{"run": r.id, "started": r.started_at.strftime("%Y-%m-%d %H:%M"), "status": r.status,
                   "scanned": r.scanned, "scored": r.scored, "skipped": r.skipped, "out of scope": r.out_of_scope,
                   "failed": r.failed, "known failures": r.known_failures}
                  | ({"challengers (scored in the shadow)": shadow(r)} if shadowed else {})
                  for r in info["runs"]], hide_index=True)
    if shadowed:
        st.caption("Challengers are model versions scored in the shadow of the active one (`cxr-train challenge`): "
                   "the column counts the images each scored in that run. Their predictions are kept for comparing "
                   "versions and are never shown to readers.")

failed_runs = {r.run_id: r for r in data.runs_with_failures()}
if failed_runs and not me.is_admin:  # file paths may name patients: admins only, as on the Flagged page
    st.caption("An admin sees the files a run could not score here, or with `cxr-db failures --run ID`.")
elif failed_runs:
    st.subheader("Files that could not be scored")
    run_id = st.selectbox("Run", list(failed_runs), key="failed_run", format_func=lambda i: (
        f"run {i} · {failed_runs[i].started_at:%Y-%m-%d %H:%M} · {failed_runs[i].failures} failed"))
    failures = data.failures_by_reason(run_id)
    counts = " · ".join(f"{reason}: {n}" for reason, n in failures.by_reason.items())
    st.caption(f"{counts} · files listed from {layout.plain(failures.folder)}/" if failures.folder else counts)
    st.dataframe([{"reason": f.reason, "file": failures.name_in_folder(f), "what is wrong": f.detail}
                  for f in failures.files],
                 hide_index=True, height=min(36 + 35 * len(failures.files), 320))
    listed = len(failures.files)
    st.caption((f"The first {listed} of {failed_runs[run_id].failures}. " if listed < failed_runs[run_id].failures
                else "") + "A failed file is not read again while it is unchanged: replace it, or fix the cause (a "
               f"codec, a share) and run `cxr-score --retry-failed FOLDER`. `cxr-db failures --run {run_id}` prints "
               "the whole list.")

left, right = st.columns(2)
if info["volume"]:
    left.plotly_chart(charts.daily_volume(info["volume"]), key="volume")
    right.plotly_chart(charts.class_mix(info["mix"]), key="mix")
    left.plotly_chart(charts.confidence_histogram(info["histogram"]), key="confidence")
else:
    st.info("Nothing scored in the last 90 days: run `cxr-score FOLDER`.")
if info["agreement"]:
    right.plotly_chart(charts.agreement_over_time(info["agreement"]), key="agreement")
else:
    right.info("No reviews yet: open the worklist and read a case.")
