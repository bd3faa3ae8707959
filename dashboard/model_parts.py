"""The Models page's parts for safe updates: a version's status, shadow scoring (challengers), the promotion gate
with its comparison on the site's own cases, the override with a reason, and the overrides so far."""

from __future__ import annotations

import streamlit as st

from dashboard import actions, data
from dashboard.layout import guarded, plain
from db.signin import Account
from model_training import gate

PROMOTE_ASKED = "promote_asked"
NOTICE = "models_notice"


def status(version: dict) -> str:
    if version["is_active"]:
        return "active"
    if version["is_challenger"]:
        return "challenger (scored in the shadow)"
    return "former active" if version["first_active_at"] else "registered"


def shadow_controls(me: Account, version: dict) -> None:
    """Start or stop scoring a version in the shadow of the active one (its output is never shown to readers)."""
    if version["is_challenger"]:
        st.caption("The nightly scorer scores new images with this version too; readers never see its output.")
        st.button("Stop scoring it in the shadow", key="stop_challenge",
                  on_click=guarded(_set_challenger), args=(me, version, False))
    else:
        st.button("Score it in the shadow (challenger)", key="start_challenge",
                  help="From the next nightly run, new images are scored by this version too, so that the "
                       "promotion gate can compare it with the active one on cases read from then on.",
                  on_click=guarded(_set_challenger), args=(me, version, True))


def _set_challenger(me: Account, version: dict, challenger: bool) -> None:
    actions.set_challenger(me, version["id"], challenger)
    st.session_state[NOTICE] = (f"{version['label']} is scored in the shadow from the next run." if challenger
                                else f"{version['label']} is no longer scored in the shadow.")


def promotion(me: Account, version: dict) -> None:
    """A first promotion or a rollback asks once; a challenger goes through the gate, and an admin may override
    a refusal with a reason that is audited."""
    if st.session_state.get(PROMOTE_ASKED) != version["id"]:
        st.button("Promote (or roll back to) this version…", key="promote_button",
                  on_click=lambda: st.session_state.update({PROMOTE_ASKED: version["id"]}))
        return
    decision = data.gate_decision(version["id"])
    if decision.comparison is not None:
        comparison(decision.comparison)
    if decision.allowed:
        st.success(f"The gate allows it: {plain(decision.reason)}.", icon=":material/verified:")
        st.warning(f"Make **{plain(version['label'])}** the scorer's version? The nightly scorer uses it from its "
                   "next run. The current version stays registered: promoting it again is the rollback.")
        yes, no = st.columns([1, 6])
        yes.button("Promote", type="primary", key="confirm_promote", on_click=guarded(_promote), args=(me, version))
    else:
        st.error(f"The gate refuses: {plain(decision.reason)}.", icon=":material/block:")
        with st.form("override_promotion"):
            reason = st.text_area("Promote anyway: the reason (recorded in the audit trail, shown on this page)",
                                  key="override_reason", max_chars=1000)
            if st.form_submit_button("Promote anyway"):
                if reason.strip():
                    _promote(me, version, reason.strip())
                    st.rerun()
                st.error("Give a reason to override the gate.")
        no = st.columns([1, 6])[1]
    no.button("Cancel", key="cancel_promote", on_click=lambda: st.session_state.pop(PROMOTE_ASKED, None))


def _promote(me: Account, version: dict, override_reason: str | None = None) -> None:
    result = actions.promote(me, version["id"], override_reason=override_reason)
    st.session_state.pop(PROMOTE_ASKED, None)
    st.session_state[NOTICE] = (f"{version['label']} is now active" + (" (the gate was overridden)."
                                                                        if result.overridden else "."))


def comparison(found: gate.Comparison) -> None:
    counts = ", ".join(f"{name} {count}" for name, count in found.per_class.items())
    without_id = (f", {found.without_patient_id} of the cases without a patient id, each counted as its own "
                  "(`cxr-score --patient-ids` gives PNG and JPEG films theirs)" if found.without_patient_id else "")
    st.markdown(f"**Prospective comparison** on the site's own cases: {found.cases} cases read after the challenger "
                f"was trained and never trained on ({plain(counts)}; {found.patients} patients{without_id}), "
                "intervals by patient.")
    if found.more_cases_needed:
        st.caption(f"Roughly {found.more_cases_needed} more reviewed cases before the balanced-accuracy interval "
                   "can exclude zero, if the difference holds.")
    rows = gate.comparison_rows(found)
    if rows:
        st.dataframe(rows, hide_index=True)


def overrides() -> None:
    found = data.gate_overrides()
    if not found:
        return
    st.caption("Promotions that overrode the gate")
    st.dataframe([{"when": e.created_at.strftime("%Y-%m-%d %H:%M"), "by": e.username or "",
                   "version": e.details.get("version"), "reason": e.details.get("reason", ""),
                   "the gate said": e.details.get("gate_reason", "")} for e in found], hide_index=True)
