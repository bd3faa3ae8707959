"""Overview: what CXR Review is and the state of this installation."""

import streamlit as st

from dashboard import data

st.title("CXR Review")
st.caption("Clinical review of chest X-ray AI: every prediction is checked by people, and their corrections "
           "train the next model.")

problem = data.schema_problem()
if problem:
    st.error(problem, icon=":material/database:")
    st.stop()

summary = data.summary()
images, predictions, reviewed, reviewers = st.columns(4)
images.metric("Images", summary.images)
predictions.metric("Predictions", summary.predictions)
reviewed.metric("Reviewed images", summary.reviewed_images)
reviewers.metric("Reviewers", summary.reviewers)

model = summary.active_model
if model is None:
    st.info("No model version is active yet. Train one with `cxr-train` and promote it; the nightly scorer "
            "(`cxr-score`) uses the active version.", icon=":material/model_training:")
else:
    st.write(f"Active model: **{model.name or f'version {model.id}'}** ({model.architecture}; classes: "
             f"{', '.join(model.classes)})")
    if model.is_synthetic:
        st.warning("This model was trained on synthetic demo data. Its predictions mean nothing clinically.",
                   icon=":material/science:")
if summary.last_run_status:
    st.write(f"Last scoring run: {summary.last_run_status}")
if summary.reviewers == 0:
    st.info("No reviewer accounts yet: create one with `cxr-db add-reviewer NAME --role admin`.",
            icon=":material/person_add:")
