"""The case viewer's parts, each a small function over the plain dataclasses of ``db.cases``. Stored text
(comments, file names, header explanations) only ever reaches the page as plain text."""

from __future__ import annotations

import time

import streamlit as st

from dashboard import actions, data, reading, viewer
from dashboard.case_session import CaseDraft
from dashboard.layout import guarded, plain
from db.cases import CaseDetail, PriorStudy
from db.signin import Account
from db.worklist import WorklistFilter
from scoring.imaging import XRayReadError
from scoring.imaging.verified import NoVerifiedCopy

NEXT_CASE = "next_case"  # (case, filter, the case after it), set by prefetch
VIEWER_KEYS = ("Drag: window/level · right drag: pan · Ctrl+wheel: zoom · double click: reset  \n"
               "D as read · A auto · F full range · H header windows · I invert · M magnifier · Z reset · + − zoom  \n"
               "O overlay · B blink it · [ ] its opacity · X side by side · V the prior beside it")


# --- the header and claims -----------------------------------------------------------------------------

def case_caption(container, detail: CaseDetail, me: Account, notice: str | None) -> None:
    """Under the case number: the last action's notice, the study's attributes, and the file name for admins only
    (file names can carry patient names and record numbers; reviewers see the case number)."""
    image = detail.image
    parts = [notice, "synthetic demo data, not patients" if detail.is_synthetic else None,
             image.modality, image.view_position,
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

_viewer = st.components.v2.component("cxr_case_viewer", js=viewer.script())
# the same script, mounted without a view: it decodes the next case's film ahead, while the reader reads this one
_film_prefetch = st.components.v2.component("cxr_film_prefetch", js=viewer.script())


def _toggle(key: str) -> None:
    st.session_state[key] = not st.session_state.get(key, False)


@st.cache_data(ttl=600, max_entries=32, show_spinner=False)
def film_payload(image_id: int, title: str) -> dict:
    return viewer.film(data.viewing_image(image_id)).payload(case=image_id, title=title)


@st.cache_resource(ttl=1800, max_entries=32, show_spinner=False)
def attribution(image_id: int, version_id: int, method: str, target: str):
    from scoring.attribution import load_or_compute

    return load_or_compute(data.engine(), image_id, version_id, method, target)


@st.cache_data(ttl=600, max_entries=32, show_spinner=False)
def overlay_payload(image_id: int, version_id: int, method: str, target: str, title: str) -> dict:
    amap = attribution(image_id, version_id, method, target)
    heat = viewer.normalised_attribution(amap.values, amap.value_max)
    png = viewer.heat_png(heat, data.viewing_image(image_id).values.shape)
    return dict(png=viewer.data_url(png), title=title, stops=viewer.colour_scale_stops())


def image_panel(detail: CaseDetail, *, hidden: bool, prior: PriorStudy | None = None) -> bool:
    """The film, filling the screen's height (windowed in the browser), with the overlay blended in when it is on
    and allowed, and a prior study beside it when one is asked for; returns whether an overlay was shown."""
    try:
        current = film_payload(detail.image.id, _film_title(detail.image.id, detail.image.study_date, "this study"))
    except NoVerifiedCopy as exc:
        st.error(f"This case's film cannot be shown: {exc}. It was changed, moved or deleted after it was scored; "
                 "scoring the folder that now holds it records its new place.", icon=":material/image_not_supported:")
        return False
    except XRayReadError as exc:
        st.error(f"The image cannot be read now ({exc.reason}).")
        return False
    films = [current]
    if prior is not None:
        try:
            films.append(film_payload(prior.image_id, _film_title(prior.image_id, prior.study_date, "prior")))
        except (NoVerifiedCopy, XRayReadError) as exc:
            st.warning(f"The prior study (case {prior.image_id}) cannot be shown: {exc}.")
    overlay_on = st.session_state.get("overlay_on", False) and not hidden and detail.prediction is not None
    overlay = _overlay(detail) if overlay_on else None
    _viewer(data=dict(films=films, overlay=overlay), key="case_viewer")
    return overlay is not None


def _film_title(image_id: int, study_date, what: str) -> str:
    return f"{what} · case {image_id}" + (f" · {study_date.isoformat()}" if study_date else " · no study date")


def overlay_controls(detail: CaseDetail) -> None:
    """Which map the overlay shows (its opacity, blink and split are the viewer's own: no round trip)."""
    from scoring.attribution import METHOD_INFO, METHODS

    classes = list(detail.prediction.classes)
    cols = st.columns(2)
    cols[0].selectbox("Map", METHODS, key="overlay_method", format_func=lambda m: METHOD_INFO[m].label)
    cols[1].selectbox("For class", classes, index=classes.index(detail.prediction.predicted_class),
                      key=f"overlay_class_{detail.image.id}")


def _overlay_choice(detail: CaseDetail) -> tuple[str, str]:
    """The map the reader chose (the widgets sit in the reading panel, drawn after the viewer)."""
    from scoring.attribution import METHODS

    method = st.session_state.get("overlay_method") or METHODS[0]
    target = st.session_state.get(f"overlay_class_{detail.image.id}") or detail.prediction.predicted_class
    return method, target


def _overlay_title(method: str, target: str) -> str:
    from scoring.attribution import METHOD_INFO

    return f"{METHOD_INFO[method].label} · {target}"


def _overlay(detail: CaseDetail) -> dict | None:
    from scoring.attribution import METHOD_INFO, AttributionError

    prediction = detail.prediction
    method, target = _overlay_choice(detail)
    try:
        # Streamlit shows a spinner only after half a second: a stored map appears without one.
        with st.spinner(f"Computing {METHOD_INFO[method].label} for {target}…"):
            return overlay_payload(detail.image.id, prediction.model_version_id, method, target,
                                   _overlay_title(method, target))
    except (AttributionError, XRayReadError, NoVerifiedCopy) as exc:
        st.error(f"No attribution map: {exc}")
        return None


def overlay_caption(detail: CaseDetail) -> None:
    from scoring.attribution import METHOD_INFO, WHAT_A_MAP_SHOWS
    from scoring.attribution.engine import method_with_settings

    method, target = _overlay_choice(detail)
    amap = attribution(detail.image.id, detail.prediction.model_version_id, method, target)
    settings = ", ".join(f"{k}={v}" for k, v in sorted(amap.params.items()))
    info = METHOD_INFO[method]
    st.caption(f"{plain(method_with_settings(method, amap.params))} for class '{plain(target)}', model version "
               f"{plain(detail.prediction.version_label)}.", help=f"All settings: {plain(settings or 'defaults')}")
    st.caption(f"**{WHAT_A_MAP_SHOWS}** Colour: positive attribution to '{plain(target)}' as a share of this map's "
               f"strongest; below {viewer.OVERLAY_FLOOR:.0%} not drawn, fading in up to "
               f"{viewer.OVERLAY_FLOOR + viewer.OVERLAY_FADE:.0%}. Sanity check of the method: {info.sanity}.")
    if not amap.sanity_ok or info.sanity == "failed":
        st.warning("This method failed the model-randomisation check: do not read meaning into this map.")


# --- the model's output, history, metadata -------------------------------------------------------------

def model_output(me: Account, detail: CaseDetail, *, hidden: bool) -> None:
    st.markdown("##### Model")
    if hidden:
        st.info("Read-first mode: the model's output appears once you have chosen a label.",
                icon=":material/visibility_off:")
        return
    p = detail.prediction
    if p is None:
        st.info("No prediction of this model version for this image.")
        return
    st.markdown(f"**{p.predicted_class}** · confidence {p.confidence:.2f} · uncertainty {p.entropy:.2f}",
                help="Confidence: the calibrated probability of the predicted class. Uncertainty: the normalised "
                     "entropy of all classes' probabilities (0 sure, 1 no preference).")
    st.caption(f"Model version {plain(p.version_label)}" + (" (active)" if p.is_active else "")
               + (" · synthetic" if p.is_synthetic else "") + f" · scored {p.scored_at:%Y-%m-%d %H:%M} UTC")
    shares = {name: p.probabilities.get(name, 0.0) for name in p.classes}
    st.markdown("  \n".join(f"`{_bar(value)}` {plain(name)} {value:.3f}" for name, value in shares.items()))
    if detail.other_predictions and me.is_admin:  # readers see the active version's output only
        st.caption("Other model versions that scored this image (admins only)")
        st.dataframe([{"version": o.version_label + (" (challenger, hidden from readers)" if o.is_challenger else ""),
                       "predicted": o.predicted_class, "confidence": round(o.confidence, 3),
                       "scored": o.scored_at.strftime("%Y-%m-%d")} for o in detail.other_predictions],
                     hide_index=True)


def _bar(value: float, cells: int = 12) -> str:
    """A probability as a neutral text bar (eighths of a cell), so the classes compare at a glance."""
    eighths = round(min(1.0, max(0.0, value)) * cells * 8)
    full, rest = divmod(eighths, 8)
    return ("█" * full + (" ▏▎▍▌▋▊▉"[rest] if rest else "")).ljust(cells, "·")


def history(detail: CaseDetail) -> None:
    st.markdown("##### Review history")
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


def label_key(n: int) -> str:
    return f"label_key_{n}"  # the n-th label's button (the number key n)


def flag_key(draft: CaseDraft) -> str:
    """The flag box belongs to the case and to the label chosen: a Save pressed right after a label carries the box
    as the browser last showed it (unticked, before the label's rerun ticked it) under the previous label's key, so
    it cannot undo the flag that follows the new label. (Keyed by the case alone, 2 then S at once stored
    disagreements unflagged.)"""
    return f"review_flag_{draft.image_id}_{draft.label or ''}"


def _choose(draft: CaseDraft, label: str, predicted: str | None) -> None:
    if not reading.on_screen(draft):
        return
    draft.choose(label, predicted)
    st.session_state[flag_key(draft)] = draft.flagged


def _keep_flag(draft: CaseDraft) -> None:
    if flag_key(draft) in st.session_state:
        draft.flagged = bool(st.session_state[flag_key(draft)])


def _keep_comment(draft: CaseDraft) -> None:
    if comment_key(draft.image_id) in st.session_state:
        draft.comment = st.session_state[comment_key(draft.image_id)] or ""


def review_form(me: Account, detail: CaseDetail, draft: CaseDraft, *, read_first: bool, after_save) -> None:
    """The form. Its widgets are keyed by the case, so that the browser never carries a value from one case to the
    next; a case opened again shows its own unsaved draft. Saving runs as the button's callback, before the next
    rerun, which then shows the next case (``after_save``) at once."""
    st.markdown("##### Your reading")
    if not draft.claim.claimed:
        st.caption("Held by another reviewer: choose a second reading above to record yours.")
        return
    predicted = detail.prediction.predicted_class if detail.prediction else None
    labels = detail.labels
    for start in range(0, len(labels), 3):
        cols = st.columns(3)
        for offset, (col, label) in enumerate(zip(cols, labels[start:start + 3], strict=False)):
            n = start + offset + 1
            col.button(label, key=label_key(n), shortcut=str(n) if n <= 9 else None,
                       on_click=_choose, args=(draft, label, predicted), width="stretch",
                       type="primary" if draft.label == label else "secondary")
    st.caption(f"Label: **{plain(draft.label)}**" if draft.label else "Choose a label (number keys).")
    # a key absent from the session state (a new case, or one whose widgets were not on the last page) starts
    # from the case's own draft
    st.session_state.setdefault(flag_key(draft), draft.flagged)
    st.session_state.setdefault(comment_key(draft.image_id), draft.comment)
    st.checkbox("Flag for retraining", key=flag_key(draft), on_change=_keep_flag, args=(draft,),
                help="Ticked for you when your label differs from the model's prediction.")
    st.text_area("Comment", key=comment_key(draft.image_id), height=68, max_chars=2000, on_change=_keep_comment,
                 args=(draft,), help="Taken when you leave the box (Tab, Escape or a click) or press Ctrl+Enter. "
                                     "Inside the box the keys type text; leave it, then S saves.")
    # Never disabled: a reader who presses a number and S at once sends S while the page still shows the button
    # of the rerun before the label, and a disabled button drops its shortcut (half such saves were lost). The
    # label's callback runs first, so the save finds it; S without any label only says so.
    st.button("Save and next", key="save_review", type="primary" if draft.label else "secondary", shortcut="S",
              icon=":material/save:", on_click=guarded(_save), args=(me, detail, draft, read_first, after_save))


def _save(me: Account, detail: CaseDetail, draft: CaseDraft, read_first: bool, after_save) -> None:
    if not reading.on_screen(draft):
        return
    pressed = _label_pressed_with_save(detail)
    if pressed is not None and pressed != draft.label:
        _choose(draft, pressed, detail.prediction.predicted_class if detail.prediction else None)
    if not draft.label:
        st.session_state["case_notice"] = "Choose a label first (the number keys), then save."
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


def _label_pressed_with_save(detail: CaseDetail) -> str | None:
    """The label whose key reached the server in the same request as S. A number and S pressed at once while the
    server is busy arrive as one request, and Streamlit then runs the earlier trigger's callback (the label's) after
    the later one's (Save's): without this, such a Save found no label and stayed on the case."""
    for n, label in enumerate(detail.labels, start=1):
        if st.session_state.get(label_key(n)):
            return label
    return None


def keys_help(detail: CaseDetail) -> None:
    numbers = " · ".join(f"{n} {plain(label)}" for n, label in enumerate(detail.labels, start=1))
    with st.popover("Keys", icon=":material/keyboard:"):
        st.markdown(f"**Reading**  \n{numbers}  \nS save and next · N next · P previous (without saving)  \n"
                    "In the comment box keys type text: Tab or Escape out, then S.")
        st.markdown(f"**Viewer**  \n{VIEWER_KEYS}")


# --- the overlay and the priors ------------------------------------------------------------------------

def overlay_panel(detail: CaseDetail, *, hidden: bool) -> None:
    on = st.session_state.get("overlay_on", False) and not hidden and detail.prediction is not None
    st.button("Hide the overlay" if on else "Show where the model looked", key="overlay_button", shortcut="O",
              on_click=_toggle, args=("overlay_on",), disabled=hidden or detail.prediction is None,
              icon=":material/layers:", width="stretch")
    if on:
        overlay_controls(detail)
        overlay_caption(detail)
    elif hidden:
        st.caption("Read-first mode: overlays stay hidden until you have chosen a label.")


def _compare_key(image_id: int) -> str:
    return f"compare_prior_{image_id}"


def _compare(image_id: int, prior_id: int) -> None:
    key = _compare_key(image_id)
    st.session_state[key] = None if st.session_state.get(key) == prior_id else prior_id


def shown_prior(detail: CaseDetail, priors: list[PriorStudy]) -> PriorStudy | None:
    """The prior study the reader put beside this film, if any."""
    shown = st.session_state.get(_compare_key(detail.image.id))
    return next((p for p in priors if p.image_id == shown), None)


def prior_list(detail: CaseDetail, priors: list[PriorStudy]) -> None:
    """The same patient's other studies, newest first, each a button that puts it beside this film (V: the
    newest)."""
    if not priors:
        return
    shown = st.session_state.get(_compare_key(detail.image.id))
    st.markdown(f"##### Prior studies ({len(priors)})")
    for n, prior in enumerate(priors):
        st.button(_prior_text(prior), key=f"prior_{prior.image_id}", width="stretch",
                  type="primary" if prior.image_id == shown else "secondary",
                  shortcut="V" if n == 0 else None, on_click=_compare, args=(detail.image.id, prior.image_id),
                  help="Show beside this film at the same window (again to hide).")


def _prior_text(prior: PriorStudy) -> str:
    when = prior.study_date.isoformat() if prior.study_date else f"seen {prior.first_seen_at:%Y-%m-%d}"
    model = f"{prior.predicted_class} {prior.confidence:.2f}" if prior.predicted_class else "not scored"
    read = f"read {prior.latest_label} by {prior.latest_reader}" if prior.latest_label else "not read"
    parts = [when, f"case {prior.image_id}", prior.view_position, f"model {model}", read]
    return plain(" · ".join(part for part in parts if part))


def prefetch(flt: WorklistFilter, image_id: int, reviewer_id: int) -> int | None:
    """Warm the caches for the next case (its details, its film, and its overlay when one is on and its map is
    already stored), and have the browser decode its film, so that it is drawn at once after saving or pressing
    N; returns its id. The next case is looked up once per case and filter: the page reruns at every label,
    flag or comment, and that query is the slowest part of a rerun on a large worklist (about 100 ms at 100,000
    predictions), which delayed a Save pressed right after a label."""
    known = st.session_state.get(NEXT_CASE)
    target = known[2] if known and known[:2] == (image_id, flt) else data.neighbour(flt, image_id, 1, reviewer_id)
    st.session_state[NEXT_CASE] = (image_id, flt, target)
    detail = data.case_detail(target, flt.model_version_id) if target is not None else None
    if detail is None:
        return target
    data.prior_studies(detail.image.id, flt.model_version_id)
    try:
        film = film_payload(detail.image.id, _film_title(detail.image.id, detail.image.study_date, "this study"))
        _film_prefetch(data=dict(prefetch=film), key="film_prefetch", height=0)
        if st.session_state.get("overlay_on") and detail.prediction is not None:
            _prefetch_overlay(detail)
    except (XRayReadError, NoVerifiedCopy):
        pass  # the next case will say so itself
    return target


def _prefetch_overlay(detail: CaseDetail) -> None:
    from scoring.attribution import AttributionError, is_cached

    method = st.session_state.get("overlay_method")
    target = detail.prediction.predicted_class
    version_id = detail.prediction.model_version_id
    if method is None or not is_cached(data.engine(), detail.image.id, version_id, method, target):
        return  # maps are computed when a reviewer asks for one, not ahead
    try:
        overlay_payload(detail.image.id, version_id, method, target, _overlay_title(method, target))
    except AttributionError:
        pass
