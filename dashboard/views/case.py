"""Case viewer, laid out as a reading room: the film as tall as the screen (windowed in the browser, see
``dashboard/viewer.js``), the reading panel beside it with the model's output, the labels and Save within the
first screen, then the same patient's prior studies and the history. Keyboard first; the worklist's filter stays
in the URL, so previous/next follow it. What the reader enters belongs to this case alone
(``dashboard.case_session``)."""

import streamlit as st

from dashboard import data, layout, reading, urlstate
from dashboard.case_parts import (
    NEXT_CASE,
    case_caption,
    claim_banner,
    history,
    image_panel,
    keys_help,
    metadata,
    model_output,
    overlay_panel,
    prefetch,
    prior_list,
    review_form,
    shown_prior,
)

layout.reading_room()
MAX_WAIT_DAYS = layout.max_wait_days()

me = layout.account()
query = layout.query()
image_id = urlstate.image_from_query(query)
flt = urlstate.filter_from_query(query, data.default_version_id() or 0, MAX_WAIT_DAYS, allow_folder=me.is_admin,
                                 any_version=me.is_admin)
detail = data.case_detail(image_id, flt.model_version_id) if image_id is not None else None
if detail is None:
    reading.leave_case(me)
    layout.url_problems(query)
    st.warning("No such case. Open one from the worklist.")
    st.page_link(layout.page("worklist"), label="Back to the worklist", query_params=urlstate.filter_to_query(flt)
                 if data.default_version_id() else None)
    st.stop()

draft = reading.open_case(me, image_id)


def go(step: int) -> None:
    preloaded = st.session_state.get(NEXT_CASE)
    if step == 1 and preloaded and preloaded[:2] == (image_id, flt):
        target = preloaded[2]
    else:
        target = data.neighbour(flt, image_id, step, me.id)
    if target is None:
        last = "That was the last case of this list." if step > 0 else "This is the first case of this list."
        st.session_state["case_notice"] = f"{st.session_state.get('case_notice', '')} {last}".strip()
        return
    st.query_params[urlstate.IMAGE] = str(target)


head = st.columns([5, 1.1, 1.1, 1.5, 0.8], vertical_alignment="center")
heading = head[0].empty()  # its place in the list is counted after the image is on screen
heading.markdown(f"#### Case {image_id} · …")
case_caption(head[0], detail, me, st.session_state.pop("case_notice", None))
head[1].button("Previous", key="prev", on_click=go, args=(-1,), shortcut="P", icon=":material/arrow_back:")
head[2].button("Next", key="next", on_click=go, args=(1,), shortcut="N", icon=":material/arrow_forward:")
back = {k: v for k, v in query.items() if k != urlstate.IMAGE}
head[3].page_link(layout.page("worklist"), label="Worklist", icon=":material/list:", query_params=back)
with head[4]:
    keys_help(detail)
layout.url_problems(query)
claim_banner(me, draft)

# The film first: the browser starts drawing it while the panel is still being built.
read_first = st.session_state.get("read_first_mode", False)
hidden = read_first and not draft.label
priors = data.prior_studies(image_id, flt.model_version_id)
film, panel = st.columns([2.75, 1], gap="small")
with film:
    draft.overlay_seen = image_panel(detail, hidden=hidden, prior=shown_prior(detail, priors)) or draft.overlay_seen
with panel:
    st.toggle("Read first", key="read_first_mode",
              help="Hide the model's output and the overlays until you have chosen a label.")
    model_output(me, detail, hidden=hidden)
    review_form(me, detail, draft, read_first=read_first, after_save=lambda: go(1))
    overlay_panel(detail, hidden=hidden)
    prior_list(detail, priors)
    history(detail)
    metadata(detail)
# The next case before this one's place in the list: a reader who labels as soon as the film is drawn cuts this run
# short, and a next case left unprepared made the Save after that label wait for it.
prefetch(flt, image_id, me.id)
position, total = data.position(flt, image_id) if data.default_version_id() else (None, 0)
where = f"{position} of {total}" if position else f"not in the current list ({total} cases)"
heading.markdown(f"#### Case {image_id} · {where}")
