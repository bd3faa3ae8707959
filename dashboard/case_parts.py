"""The case viewer's parts, each a small function over the plain dataclasses of ``db.cases``. Stored text
(comments, file names, header explanations) only ever reaches the page as plain text."""

from __future__ import annotations

import time

import streamlit as st

from dashboard import actions, data, reading, viewer
from dashboard.case_session import CaseDraft
from dashboard.layout import guarded, plain
from db.cases import CaseDetail
from db.signin import Account
from db.worklist import WorklistFilter
from scoring.imaging import AS_READ, XRayReadError, apply_window
from scoring.imaging.verified import NoVerifiedCopy
from scoring.imaging.viewing import Window

CUSTOM = "custom (sliders)"


# --- the header and claims -----------------------------------------------------------------------------

def case_caption(container, detail: CaseDetail, me: Account, notice: str | None) -> None:
    """Under the case number: the last action's notice, the study's attributes, and the file name for admins only
    (file names can carry patient names and record numbers; reviewers see the case number)."""
    image = detail.image
    parts = [notice, image.modality, image.view_position,
             f"study {image.study_date.isoformat()}" if image.study_date else None,
             image.file_name if me.is_admin else None]
    container.caption(plain(" · ".join(part for part in parts if part)) or "\u00a0")


def claim_banner(me: Account, draft: CaseDraft) -> None:
    claim = draft.claim
    if claim.claimed:
        if claim.holder is not None:
            st.info(f"Second reading: {plain(claim.holder.username)} is reading this case too.")
        return
    until = claim.holder.expires_at.strftime("%H:%M UTC")
    st.warning(f"{plain(claim.holder.username)} opened this case and holds it until {until}, so that it is not "
               "read twice by accident.", icon=":material/lock:")
    st.button("Read it anyway (second reading)", key="second_reading_button",
              on_click=guarded(reading.read_anyway), args=(me, draft))


# --- the image -----------------------------------------------------------------------------------------

def _toggle(key: str) -> None:
    st.session_state[key] = not st.session_state.get(key, False)


def _reset_zoom() -> None:
    st.session_state["zoom_key"] = st.session_state.get("zoom_key", 0) + 1


@st.cache_data(ttl=600, max_entries=64, show_spinner=False)
def grey_png(image_id: int, preset: str, custom: tuple[float, float] | None, invert: bool) -> bytes:
    image = data.viewing_image(image_id)
    window = Window(CUSTOM, *custom, "LINEAR_EXACT") if custom else image.window(preset)
    return viewer.grey_png(apply_window(image, window), invert=invert)


@st.cache_resource(ttl=1800, max_entries=32, show_spinner=False)
def attribution(image_id: int, version_id: int, method: str, target: str):
    from scoring.attribution import load_or_compute

    return load_or_compute(data.engine(), image_id, version_id, method, target)


@st.cache_data(ttl=600, max_entries=32, show_spinner=False)
def overlay_png(image_id: int, version_id: int, method: str, target: str, opacity: float,
                preset: str, custom: tuple[float, float] | None, invert: bool) -> bytes:
    image = data.viewing_image(image_id)
    window = Window(CUSTOM, *custom, "LINEAR_EXACT") if custom else image.window(preset)
    amap = attribution(image_id, version_id, method, target)
    heat = viewer.normalised_attribution(amap.values, amap.value_max)
    return viewer.overlay_png(apply_window(image, window), heat, opacity=opacity, invert=invert)


def image_panel(detail: CaseDetail, *, hidden: bool) -> bool:
    """The image (and the overlay, if on and allowed); returns whether an overlay was shown."""
    try:
        image = data.viewing_image(detail.image.id)
    except NoVerifiedCopy as exc:
        st.error(f"This case's film cannot be shown: {exc}. It was changed, moved or deleted after it was scored; "
                 "scoring the folder that now holds it records its new place.", icon=":material/image_not_supported:")
        return False
    except XRayReadError as exc:
        st.error(f"The image cannot be read now ({exc.reason}).")
        return False
    controls = st.columns([2.4, 1.2, 1.3, 1.6], vertical_alignment="bottom")
    preset = controls[0].selectbox("Window", [*image.presets, CUSTOM], key="window_preset",
                                   help="The header's own windows, the reader's percentile window (auto) and the "
                                        "full range of values. 'As read by the model' is what the model saw.")
    controls[1].button("Invert", key="invert_button", shortcut="I", on_click=_toggle, args=("invert",))
    controls[2].button("Overlay", key="overlay_button", shortcut="O", on_click=_toggle, args=("overlay_on",),
                       disabled=hidden or detail.prediction is None)
    controls[3].button("Reset zoom", key="zoom_button", shortcut="Z", on_click=_reset_zoom)
    custom = _custom_window(image) if preset == CUSTOM else None
    invert = st.session_state.get("invert", False)
    overlay_on = st.session_state.get("overlay_on", False) and not hidden and detail.prediction is not None
    pictures = [("image" + (" (inverted)" if invert else ""),
                 grey_png(detail.image.id, preset if preset != CUSTOM else AS_READ, custom, invert))]
    shape = image.pixels.shape
    if overlay_on:
        overlay = _overlay(detail, preset if preset != CUSTOM else AS_READ, custom, invert)
        if overlay is None:
            overlay_on = False
        else:
            pictures.append(overlay)
    st.plotly_chart(viewer.figure(pictures, shape=shape, zoom_key=st.session_state.get("zoom_key", 0),
                                  legend=overlay_on), config=viewer.PLOTLY_CONFIG, key="case_figure")
    if overlay_on:
        _overlay_caption(detail)
    elif hidden:
        st.caption("Read-first mode: overlays stay hidden until you have chosen a label.")
    else:
        st.caption("Overlay off (press O to show where the model looked). Scroll to zoom, drag to pan.")
    return overlay_on


def _custom_window(image) -> tuple[float, float]:
    low, high = float(image.full.center - image.full.width / 2), float(image.full.center + image.full.width / 2)
    step = (high - low) / 200 or 0.01
    cols = st.columns(2)
    center = cols[0].slider("Level (centre)", low, high, float(image.auto.center), step, key="window_center")
    width = cols[1].slider("Width", step, high - low + step, float(image.auto.width), step, key="window_width")
    return center, width


def _overlay(detail: CaseDetail, preset: str, custom, invert: bool) -> tuple[str, bytes] | None:
    from scoring.attribution import METHOD_INFO, METHODS, AttributionError

    prediction = detail.prediction
    cols = st.columns([2, 2, 2])
    method = cols[0].selectbox("Method", METHODS, key="overlay_method", format_func=lambda m: METHOD_INFO[m].label)
    classes = list(prediction.classes)
    target = cols[1].selectbox("Class", classes, index=classes.index(prediction.predicted_class),
                               key=f"overlay_class_{detail.image.id}")
    opacity = cols[2].slider("Opacity", 0.1, 1.0, 0.6, 0.05, key="overlay_opacity")
    args = (detail.image.id, prediction.model_version_id, method, target, opacity, preset, custom, invert)
    try:
        # Streamlit shows a spinner only after half a second: a stored map appears without one.
        with st.spinner(f"Computing {METHOD_INFO[method].label} for {target}…"):
            png = overlay_png(*args)
    except (AttributionError, XRayReadError, NoVerifiedCopy) as exc:
        st.error(f"No attribution map: {exc}")
        return None
    return (f"{METHOD_INFO[method].label} · {target}", png)


def _overlay_caption(detail: CaseDetail) -> None:
    from scoring.attribution import METHOD_INFO, WHAT_A_MAP_SHOWS
    from scoring.attribution.engine import method_with_settings

    method, target = st.session_state["overlay_method"], st.session_state[f"overlay_class_{detail.image.id}"]
    amap = attribution(detail.image.id, detail.prediction.model_version_id, method, target)
    settings = ", ".join(f"{k}={v}" for k, v in sorted(amap.params.items()))
    info = METHOD_INFO[method]
    st.caption(f"{plain(method_with_settings(method, amap.params))} for class '{plain(target)}', model version "
               f"{plain(detail.prediction.version_label)}.", help=f"All settings: {plain(settings or 'defaults')}")
    st.caption(f"**{WHAT_A_MAP_SHOWS}** Colour: positive attribution to '{plain(target)}' as a share of this map's "
               f"strongest; below {viewer.OVERLAY_FLOOR:.0%} not drawn. Sanity check of the method: {info.sanity}.")
    if not amap.sanity_ok or info.sanity == "failed":
        st.warning("This method failed the model-randomisation check: do not read meaning into this map.")


# --- the model's output, history, metadata -------------------------------------------------------------

def model_output(me: Account, detail: CaseDetail, *, hidden: bool) -> None:
    st.subheader("Model")
    if hidden:
        st.info("Read-first mode: the model's output appears once you have chosen a label.",
                icon=":material/visibility_off:")
        return
    p = detail.prediction
    if p is None:
        st.info("No prediction of this model version for this image.")
        return
    st.markdown(f"**{p.predicted_class}** · confidence {p.confidence:.2f} · uncertainty (normalised entropy) "
                f"{p.entropy:.2f}")
    st.caption(f"Model version {plain(p.version_label)}" + (" (active)" if p.is_active else "")
               + (" · synthetic" if p.is_synthetic else "") + f" · scored {p.scored_at:%Y-%m-%d %H:%M} UTC")
    for name in p.classes:
        value = p.probabilities.get(name, 0.0)
        st.progress(min(1.0, max(0.0, value)), text=f"{name}: {value:.3f}")
    if detail.other_predictions and me.is_admin:  # readers see the active version's output only
        st.caption("Other model versions that scored this image (admins only)")
        st.dataframe([{"version": o.version_label + (" (challenger, hidden from readers)" if o.is_challenger else ""),
                       "predicted": o.predicted_class, "confidence": round(o.confidence, 3),
                       "scored": o.scored_at.strftime("%Y-%m-%d")} for o in detail.other_predictions],
                     hide_index=True)


def history(detail: CaseDetail) -> None:
    st.subheader("Review history")
    if not detail.reviews:
        st.caption("Not reviewed yet.")
        return
    for r in reversed(detail.reviews):
        flag = " · flagged for retraining" if r.flagged else ""
        how = f"{r.mode.replace('_', ' ')}, overlay {'shown' if r.overlay_shown else 'not shown'}"
        if r.second_reading:
            how += ", second reading"
        if r.seconds_spent is not None:
            how += f", {r.seconds_spent:.0f} s"
        st.markdown(f"**{plain(r.label)}** by {plain(r.reviewer)} · {r.created_at:%Y-%m-%d %H:%M} UTC{flag} ({how})")
        if r.comment:
            st.text(r.comment)


def metadata(detail: CaseDetail) -> None:
    with st.expander("Image details (non-identifying)"):
        st.dataframe([{"attribute": k, "value": str(v)} for k, v in detail.image.shown_metadata().items()],
                     hide_index=True)


# --- the review form -----------------------------------------------------------------------------------

def comment_key(image_id: int) -> str:
    return f"review_comment_{image_id}"


def flag_key(image_id: int) -> str:
    return f"review_flag_{image_id}"


def _choose(draft: CaseDraft, label: str, predicted: str | None) -> None:
    draft.choose(label, predicted)
    st.session_state[flag_key(draft.image_id)] = draft.flagged


def _keep_flag(draft: CaseDraft) -> None:
    if flag_key(draft.image_id) in st.session_state:
        draft.flagged = bool(st.session_state[flag_key(draft.image_id)])


def _keep_comment(draft: CaseDraft) -> None:
    if comment_key(draft.image_id) in st.session_state:
        draft.comment = st.session_state[comment_key(draft.image_id)] or ""


def review_form(me: Account, detail: CaseDetail, draft: CaseDraft, *, read_first: bool, after_save) -> None:
    """The form. Its widgets are keyed by the case, so that the browser never carries a value from one case to the
    next; a case opened again shows its own unsaved draft. Saving runs as the button's callback, before the next
    rerun, which then shows the next case (``after_save``) at once."""
    st.subheader("Your reading")
    if not draft.claim.claimed:
        st.caption("Held by another reviewer: choose a second reading above to record yours.")
        return
    predicted = detail.prediction.predicted_class if detail.prediction else None
    labels = detail.labels
    for start in range(0, len(labels), 3):
        cols = st.columns(3)
        for offset, (col, label) in enumerate(zip(cols, labels[start:start + 3], strict=False)):
            n = start + offset + 1
            col.button(label, key=f"label_key_{n}", shortcut=str(n) if n <= 9 else None,
                       on_click=_choose, args=(draft, label, predicted), width="stretch",
                       type="primary" if draft.label == label else "secondary")
    st.caption(f"Label: **{plain(draft.label)}**" if draft.label else "Choose a label (number keys).")
    # a key absent from the session state (a new case, or one whose widgets were not on the last page) starts
    # from the case's own draft
    st.session_state.setdefault(flag_key(draft.image_id), draft.flagged)
    st.session_state.setdefault(comment_key(draft.image_id), draft.comment)
    st.checkbox("Flag for retraining", key=flag_key(draft.image_id), on_change=_keep_flag, args=(draft,),
                help="Ticked for you when your label differs from the model's prediction.")
    st.text_area("Comment", key=comment_key(draft.image_id), height=80, max_chars=2000, on_change=_keep_comment,
                 args=(draft,), help="Taken when you leave the box (Tab, Escape or a click) or press Ctrl+Enter. "
                                     "Inside the box the keys type text; leave it, then S saves.")
    st.button("Save and next", key="save_review", type="primary", shortcut="S", disabled=not draft.label,
              icon=":material/save:", on_click=guarded(_save), args=(me, detail, draft, read_first, after_save))


def _save(me: Account, detail: CaseDetail, draft: CaseDraft, read_first: bool, after_save) -> None:
    if not draft.label:
        return
    _keep_flag(draft)
    _keep_comment(draft)
    actions.save_review(
        me, image_id=detail.image.id, prediction_id=detail.prediction.id if detail.prediction else None,
        label=draft.label, flagged=draft.flagged, comment=draft.comment,
        mode="read_first" if read_first else "standard", overlay_shown=draft.overlay_seen,
        seconds_spent=draft.seconds_spent(time.monotonic()), second_reading=draft.second_reading)
    reading.saved(detail.image.id)
    st.session_state["case_notice"] = f"Saved case {detail.image.id}: {draft.label}."
    after_save()


def shortcuts_help(detail: CaseDetail) -> None:
    numbers = ", ".join(f"{n} {label}" for n, label in enumerate(detail.labels, start=1))
    st.sidebar.markdown("**Keys**  \n"
                        f"{numbers}  \n"
                        "S save and next · N next · P previous (without saving)  \n"
                        "O overlay · I invert · Z reset zoom  \n"
                        "In the comment box keys type text: Tab or Escape out, then S.")


def prefetch(flt: WorklistFilter, image_id: int, reviewer_id: int) -> int | None:
    """Warm the caches for the next case (its details, its image, and its overlay when one is on and its map is
    already stored), so that it is on screen at once after saving or pressing N; returns its id."""
    target = data.neighbour(flt, image_id, 1, reviewer_id)
    detail = data.case_detail(target, flt.model_version_id) if target is not None else None
    if detail is None:
        return target
    invert = st.session_state.get("invert", False)
    try:
        preset = st.session_state.get("window_preset") or AS_READ
        if preset == CUSTOM or preset not in data.viewing_image(detail.image.id).presets:
            preset = AS_READ
        grey_png(detail.image.id, preset, None, invert)
        if st.session_state.get("overlay_on") and detail.prediction is not None:
            _prefetch_overlay(detail, preset, invert)
    except (XRayReadError, NoVerifiedCopy):
        pass  # the next case will say so itself
    return target


def _prefetch_overlay(detail: CaseDetail, preset: str, invert: bool) -> None:
    from scoring.attribution import AttributionError, is_cached

    method = st.session_state.get("overlay_method")
    target = detail.prediction.predicted_class
    version_id = detail.prediction.model_version_id
    if method is None or not is_cached(data.engine(), detail.image.id, version_id, method, target):
        return  # maps are computed when a reviewer asks for one, not ahead
    try:
        overlay_png(detail.image.id, version_id, method, target,
                    st.session_state.get("overlay_opacity", 0.6), preset, None, invert)
    except AttributionError:
        pass
