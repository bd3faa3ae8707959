"""Models: the registered versions, their training metrics and model cards, agreement with reviewers, and (for
admins) shadow scoring of challengers and promotion through the gate, or rollback."""

from pathlib import Path

import streamlit as st

from dashboard import charts, data, layout, model_parts
from model_training.card import CONFUSION_MATRIX_FILE, MARKDOWN_FILE, RELIABILITY_FILE, TRAINING_CURVES_FILE

me = layout.account()
st.title("Models")
versions = list(reversed(data.versions()))
if not versions:
    st.info("No model version is registered. Train one with `cxr-train train` (or run `cxr-demo`).")
    st.stop()

def validation(version: dict) -> dict:
    found = version["metrics"].get("validation")
    return found if isinstance(found, dict) else {}


st.dataframe([{"version": v["label"], "status": model_parts.status(v), "architecture": v["architecture"],
               "classes": ", ".join(v["classes"]), "created": v["created_at"].strftime("%Y-%m-%d"),
               "synthetic": v["is_synthetic"], "validation accuracy": validation(v).get("accuracy"),
               "macro-F1": validation(v).get("macro_f1"), "macro-AUROC": validation(v).get("macro_auroc")}
              for v in versions], hide_index=True)
model_parts.overrides()

labels = {v["id"]: f"{v['label']} ({model_parts.status(v)})" for v in versions}
chosen_id = st.selectbox("Version", list(labels), format_func=labels.get, key="model_version_choice")
version = data.version(chosen_id)

notice = st.session_state.pop(model_parts.NOTICE, None)
if notice:
    st.success(notice)
if version["is_synthetic"]:
    st.warning("Trained on synthetic demo data: its metrics mean nothing clinically.", icon=":material/science:")
if me.is_admin and not version["is_active"]:
    model_parts.shadow_controls(me, version)
    model_parts.promotion(me, version)
elif not me.is_admin:
    st.caption("Admins score challengers in the shadow, promote (through the gate) and roll back versions.")

metrics_tab, card_tab, agreement_tab, training_tab = st.tabs(
    ["Training metrics", "Model card", "Agreement with reviewers", "Reviewed cases used"])
folder = Path(version["path"]).parent
pictures = [folder / name for name in (TRAINING_CURVES_FILE, CONFUSION_MATRIX_FILE, RELIABILITY_FILE)]
with metrics_tab:
    shown = validation(version)
    cols = st.columns(5)
    for col, (label, key) in zip(cols, [("Validation images", "n"), ("Accuracy", "accuracy"),
                                        ("Macro-F1", "macro_f1"), ("Macro-AUROC", "macro_auroc"),
                                        ("ECE (calibrated)", "ece")], strict=True):
        value = shown.get(key)
        col.metric(label, "—" if value is None else f"{value:.3f}" if isinstance(value, float) else value)
    existing = [p for p in pictures if p.is_file()]
    for col, picture in zip(st.columns(max(1, len(existing))), existing, strict=False):
        col.image(str(picture), caption=picture.stem.replace("_", " "))
    with st.expander("All recorded metrics"):
        st.json(version["metrics"] or {}, expanded=1)
with card_tab:
    card = folder / MARKDOWN_FILE
    if card.is_file():
        # rendered without HTML; its pictures are shown with the metrics (local files cannot be linked)
        lines = card.read_text(encoding="utf-8", errors="replace").splitlines()
        st.markdown("\n".join(line for line in lines if not line.lstrip().startswith("![")))
    else:
        st.caption("No model card beside this checkpoint.")
with agreement_tab:
    result = data.version_agreement(version["id"])
    if not result.reviewed:
        st.info("No reviewed case has a prediction of this version yet.")
    else:
        st.markdown(f"**{result.agreed} of {result.reviewed}** reviewed cases agree ({result.agreement:.0%}); "
                    "the latest review of each case counts.")
        st.plotly_chart(charts.confusion_matrix(result), key="confusion")
        st.dataframe([{"class": c.name, "precision": c.precision, "recall": c.recall, "model called": c.predicted,
                       "reviewers read": c.read} for c in result.per_class], hide_index=True)
with training_tab:
    total, used = data.training_cases(version["id"])
    st.caption(f"{total} reviewed cases went into this version's training.")
    if used:
        st.dataframe([{"case": u.image_id} | ({"file": u.file_name} if me.is_admin else {})  # names can identify
                      | {"label": u.label, "reviewer": u.reviewer, "reviewed": u.review_time.strftime("%Y-%m-%d")}
                      for u in used], hide_index=True)
