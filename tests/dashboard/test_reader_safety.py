"""Issue 18 through Streamlit's AppTest: what a reader enters belongs to one case, claims follow the reader,
sessions end everywhere at sign-out, hostile links and deactivated accounts meet plain messages, reviewers never
see file names, and the worklist's filters behave. The browser-only defects are in test_browser.py."""

from __future__ import annotations

import logging
import shutil
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from dashboard import actions, reading
from dashboard.layout import plain
from db.engine import get_engine, read_session, write_session
from db.models import CaseClaim, Event, Image, Prediction, Review
from db.reviewers import set_active, set_password
from tests.dashboard.conftest import account

PHI_NAME = "DOE_JOHN_DOB1970-01-01_ACC998877.png"
PHI_FOLDER = "DOE^JOHN_MRN1234567"


class Clock:
    """time.monotonic for the case clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    from dashboard import case_parts

    fake = Clock()
    monkeypatch.setattr(reading, "time", fake)
    monkeypatch.setattr(case_parts, "time", fake)
    return fake


def _case(at) -> int:
    value = at.query_params["image"]
    return int(value if isinstance(value, str) else value[-1])


def _open(app, account_id: int, image_id: int):
    return app(account_id, page="views/case.py", query={"image": str(image_id), "status": "all"})


def _claims() -> list[tuple[int, int]]:
    with read_session(get_engine()) as session:
        return sorted(tuple(row) for row in session.execute(select(CaseClaim.image_id, CaseClaim.reviewer_id)))


def _review_of(image_id: int) -> Review:
    with read_session(get_engine()) as session:
        return session.scalars(select(Review).where(Review.image_id == image_id)).one()


def test_next_then_previous_keeps_the_cases_clock_overlay_and_draft(filled, clock, fake_maps, app):
    first = filled.image_ids[-1]
    at = _open(app, filled.reviewer_id, first)
    at.button(key="overlay_button").click().run()  # the overlay is seen on this case ...
    at.button(key="overlay_button").click().run()  # ... and switched off again
    at.text_area(key=f"review_comment_{first}").input("left basal opacity").run()
    clock.now += 30
    at.button(key="next").click().run()
    second = _case(at)
    assert second != first
    assert at.text_area(key=f"review_comment_{second}").value == ""  # a new case starts clean
    clock.now += 70  # on the second case: not the first's time
    at.button(key="prev").click().run()
    assert _case(at) == first
    assert at.text_area(key=f"review_comment_{first}").value == "left basal opacity"  # its own draft
    clock.now += 10
    at.button(key="label_key_2").click().run()
    at.button(key="save_review").click().run()
    review = _review_of(first)
    assert (review.seconds_spent, review.overlay_shown, review.comment) == (40.0, True, "left basal opacity")


def test_a_case_left_without_saving_is_free_at_once_and_sign_out_frees_the_rest(filled, app):
    first = filled.image_ids[-1]
    at = _open(app, filled.reviewer_id, first)
    assert _claims() == [(first, filled.reviewer_id)]
    at.button(key="next").click().run()
    assert _claims() == [(_case(at), filled.reviewer_id)]  # skipping gave the first case back
    at.switch_page("views/worklist.py").run()
    assert _claims() == []  # so did going back to the worklist
    _open(app, filled.reviewer_id, first).sidebar.button(key="sign_out").click().run()
    assert _claims() == []


def test_a_deliberate_second_reading_is_recorded_as_one(filled, app, texts):
    image = filled.image_ids[-3]
    actions.claim(account(filled.admin_id), image)
    at = _open(app, filled.reviewer_id, image)
    at.button(key="second_reading_button").click().run()
    at.button(key="label_key_1").click().run()
    at.button(key="save_review").click().run()
    assert _review_of(image).second_reading
    at = _open(app, filled.admin_id, image)
    assert "second reading" in texts(at)


def test_signing_out_ends_every_session_of_the_account(filled, app, texts):
    other_tab = _open(app, filled.reviewer_id, filled.image_ids[-1])
    this_tab = app(filled.reviewer_id)
    this_tab.sidebar.button(key="sign_out").click().run()
    assert [b.label for b in this_tab.button] == ["Sign in"]
    other_tab.button(key="label_key_1").click().run()  # its next interaction
    assert [b.label for b in other_tab.button] == ["Sign in"]
    assert "signed out in another window" in other_tab.warning[0].value


def test_a_new_password_ends_the_accounts_sessions(filled, app):
    at = app(filled.reviewer_id)
    with write_session(get_engine()) as session:
        set_password(session, "synthetic1", "a completely new passphrase")
    at.run()
    assert [b.label for b in at.button] == ["Sign in"]


def test_a_deactivated_reader_pressing_save_is_signed_out_plainly(filled, app):
    image = filled.image_ids[-1]
    at = _open(app, filled.reviewer_id, image)
    at.button(key="label_key_1").click().run()
    with write_session(get_engine()) as session:
        set_active(session, "synthetic1", False)
    at.button(key="save_review").click().run()
    assert not at.exception
    assert "Your account was deactivated" in at.warning[0].value
    assert [b.label for b in at.button] == ["Sign in"]
    with read_session(get_engine()) as session:
        assert session.scalar(select(Review.id).where(Review.image_id == image)) is None


@pytest.mark.parametrize("query", [{"image": "99999999999999999999"}, {"image": "1", "v": "99999999999999999999"},
                                   {"image": "-5"}])
def test_a_crafted_case_link_gets_a_plain_message(filled, app, query):
    at = app(filled.reviewer_id, page="views/case.py", query=query)
    assert not at.exception
    assert any("not valid" in w.value for w in at.warning)


@pytest.mark.parametrize("query", [{"from": "0001-01-01", "to": "9999-12-31"}, {"page": "9" * 40},
                                   {"v": "99999999999999999999"}, {"cls": "x" * 300, "mod": "\x00"}])
def test_a_crafted_worklist_link_gets_a_plain_message(filled, app, texts, query):
    at = app(filled.reviewer_id, query=query)
    assert not at.exception
    assert "of 20" in texts(at)  # the list as without the crafted values


@pytest.fixture
def phi_named(filled, cxr_dev, tmp_path) -> int:
    """One image stored under a file name and folder that carry a patient's name, record number and birth date."""
    folder = tmp_path / PHI_FOLDER
    folder.mkdir()
    path = folder / PHI_NAME
    shutil.copy(sorted(cxr_dev.glob("*/*.png"))[0], path)
    image = filled.image_ids[-1]
    with write_session(get_engine()) as session:
        session.execute(update(Image).where(Image.id == image).values(path=str(path)))
    return image


@pytest.mark.parametrize(("role", "sees_names"), [("reviewer", False), ("admin", True)])
def test_file_names_and_the_folder_filter_are_for_admins_only(filled, phi_named, app, texts, role, sees_names):
    who = filled.admin_id if role == "admin" else filled.reviewer_id
    worklist = app(who)
    case = app(who, page="views/case.py", query={"image": str(phi_named)})
    shown = texts(worklist) + texts(case)
    assert ("DOE" in shown) == sees_names
    assert ("file" in worklist.dataframe[0].value.columns) == sees_names
    assert any(t.label.startswith("Folder") for t in worklist.text_input) == sees_names


def test_clear_filters_wins_over_a_date_sent_in_the_same_click(filled, app):
    import datetime as dt

    at = app(filled.reviewer_id, query={"status": "all", "cmax": "0.8"})
    today = dt.date.today()
    at.date_input(key="wl_dates").set_value((today - dt.timedelta(days=3), today))
    next(b for b in at.button if b.label == "Clear filters").click().run()
    assert not at.exception
    assert "from" not in at.query_params and "to" not in at.query_params and "cmax" not in at.query_params
    assert at.date_input(key="wl_dates").value == ()


def test_the_class_filter_logs_no_session_state_warning(filled, app, monkeypatch):
    from streamlit.elements.lib import policies

    # The warning is only logged under a running server and once per process: make both hold here.
    monkeypatch.setattr(policies, "runtime", SimpleNamespace(exists=lambda: True))
    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger(policies.__name__).addHandler(handler)
    try:
        at = app(filled.reviewer_id, query={"status": "all"})
        at.multiselect(key="wl_classes").select("covid").run()
        assert at.query_params["cls"] in ("covid", ["covid"])
        next(b for b in at.button if b.label == "Clear filters").click().run()  # the URL moves the widget
    finally:
        logging.getLogger(policies.__name__).removeHandler(handler)
    assert not at.exception
    assert "cls" not in at.query_params and at.multiselect(key="wl_classes").value == []
    assert [r.getMessage() for r in records] == []


def test_the_synthetic_notice_shows_once_on_the_case_page(filled, app):
    at = _open(app, filled.reviewer_id, filled.image_ids[-1])
    assert sum("Synthetic demo data" in w.value for w in at.warning) == 1  # the sidebar's, on every page


def test_the_flagged_csv_is_built_only_when_asked_and_audited(filled, app):
    with write_session(get_engine()) as session:
        session.add(Review(image_id=filled.image_ids[-1], reviewer_id=filled.reviewer_id, label="other",
                           flagged_for_retraining=True, comment="=HYPERLINK(\"http://x\")"))
    at = app(filled.reviewer_id, page="views/flagged.py")
    assert not at.exception
    assert not at.get("download_button")  # no file built at render time, so none at a /media URL
    with read_session(get_engine()) as session:
        assert session.scalars(select(Event.kind)).all() == []
    at.button(key="download_flagged").click().run()
    delivered = [c for c in at.get("bidi_component") if "cxr_deliver" in str(c.proto)]
    assert len(delivered) == 1 and "'=HYPERLINK" in str(delivered[0].proto)  # neutralised
    with read_session(get_engine()) as session:
        assert session.scalars(select(Event.kind)).all() == ["export_flagged"]
    at.run()
    assert not [c for c in at.get("bidi_component") if "cxr_deliver" in str(c.proto)]  # delivered once


def test_an_admin_lifts_the_sign_in_delays_of_an_account(filled, app, monkeypatch):
    import datetime as dt

    from dashboard import auth
    from db import signin

    instant = dt.datetime.now(dt.UTC)
    monkeypatch.setattr(signin, "utcnow", lambda: instant)
    monkeypatch.setattr(auth, "client_address", lambda: "203.0.113.9")
    at = app(None)
    for _ in range(6):
        at.text_input[0].input("synthetic1")
        at.text_input[1].input("wrong password")
        at.button[0].click().run()
    admin = app(filled.admin_id, page="views/accounts.py")
    admin.selectbox(key="account_choice").select("synthetic1").run()
    admin.button(key="unlock").click().run()
    assert not admin.exception
    at.text_input[0].input("synthetic1")
    at.text_input[1].input(filled.password)
    at.button[0].click().run()
    assert "Signed in as" in " ".join(c.value for c in at.sidebar.caption)
    with read_session(get_engine()) as session:
        assert "account_unlocked" in session.scalars(select(Event.kind)).all()


@pytest.fixture
def challenger(filled) -> int:
    """A challenger scored in the shadow of the active version on every image, with a tell-tale confidence."""
    from db import model_versions
    from db.models import Prediction

    with write_session(get_engine()) as session:
        version = model_versions.register(session, sha256="c" * 64, path="/synthetic/challenger.pt",
                                          architecture="resnet18", classes=["covid", "normal", "pneumonia"],
                                          input_size=64, preprocessing_hash="0" * 64, temperature=1.0,
                                          name="shadowtwo")
        model_versions.set_challenger(session, str(version.id), True)
        for image_id in filled.image_ids:
            session.add(Prediction(image_id=image_id, model_version_id=version.id, predicted_class="pneumonia",
                                   probabilities={"covid": 0.111, "normal": 0.112, "pneumonia": 0.777},
                                   confidence=0.777, entropy=0.5))
        return version.id


@pytest.mark.parametrize("page", ["views/worklist.py", "views/case.py"])
def test_a_challengers_output_never_reaches_a_reader(filled, challenger, app, texts, page):
    query = {"v": str(challenger), "status": "all"} | ({"image": str(filled.image_ids[0])} if "case" in page else {})
    reader = app(filled.reviewer_id, page=page, query=query)  # even through a crafted link
    assert not reader.exception
    shown = texts(reader) + " ".join(str(p.value) for p in reader.get("progress"))
    assert "0.777" not in shown and "shadowtwo" not in shown
    admin = app(filled.admin_id, page=page, query=query)
    shown = texts(admin) + " ".join(str(p.value) for p in admin.get("progress"))
    assert "0.777" in shown or "shadowtwo" in shown  # admins may look at it


def _save_first(original):
    """The widget states in the order Streamlit gives a label and a Save that reached it as one request: the
    earlier trigger (the label's) behind the later one (Save's), so that Save's callback runs first."""
    def states(tree):
        states = original(tree)
        widgets = sorted(states.widgets, key=lambda w: not w.id.endswith("-save_review"))
        del states.widgets[:]
        states.widgets.extend(widgets)
        return states
    return states


@pytest.mark.parametrize("save_first", [False, True], ids=["label_first", "save_first"])
def test_a_label_and_save_in_one_request_save_that_label(filled, app, monkeypatch, save_first):
    from streamlit.testing.v1.element_tree import ElementTree

    image = filled.image_ids[-1]
    at = _open(app, filled.reviewer_id, image)
    if save_first:
        monkeypatch.setattr(ElementTree, "get_widget_states", _save_first(ElementTree.get_widget_states))
    label = at.button(key="label_key_2").label
    at.button(key="label_key_2").click()
    at.button(key="save_review").click()
    at.run()
    assert not at.exception
    assert _case(at) != image  # saved, and on to the next case
    with read_session(get_engine()) as session:
        predicted = session.scalar(select(Prediction.predicted_class).where(Prediction.image_id == image))
    review = _review_of(image)
    assert (review.label, review.flagged_for_retraining) == (label, label != predicted)


def test_a_key_that_arrives_for_the_case_before_is_applied_to_no_case(filled, app, texts):
    """The label and Save buttons keep their keys from case to case: a press that reaches the server after it has
    opened the next case comes with the callback of the case before. It must not label or save that case."""
    before, now_open = filled.image_ids[-1], filled.image_ids[-2]
    at = _open(app, filled.reviewer_id, before)
    at.session_state[reading.KEY].open(now_open, 0.0)  # the server has moved on; the buttons are before's
    at.button(key="label_key_2").click()
    at.button(key="save_review").click()
    at.run()
    assert not at.exception
    assert plain("A key arrived while the case was changing and was not applied to any case: press it again.") in (
        texts(at))
    with read_session(get_engine()) as session:
        assert session.scalars(select(Review).where(Review.image_id.in_([before, now_open]))).all() == []
    assert "Choose a label (number keys)." in texts(at)  # nor chosen on the case shown again


def test_a_second_reading_pressed_for_the_case_before_claims_nothing(filled, app, texts):
    held, now_open = filled.image_ids[-3], filled.image_ids[-2]
    actions.claim(account(filled.admin_id), held)
    at = _open(app, filled.reviewer_id, held)
    at.session_state[reading.KEY].open(now_open, 0.0)  # the server has moved on; the button is held's
    at.button(key="second_reading_button").click().run()
    assert not at.exception
    assert plain("A key arrived while the case was changing and was not applied to any case: press it again.") in (
        texts(at))
    assert (held, filled.reviewer_id) not in _claims()  # still the admin's alone
    assert [b for b in at.button if b.key == "second_reading_button"]
