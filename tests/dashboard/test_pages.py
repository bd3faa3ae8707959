"""Every page through Streamlit's AppTest: signed out (nothing of any case anywhere), as a reviewer and as an
admin; admin actions refused to a reviewer whatever the page shows."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from sqlalchemy import select

from dashboard import actions, data, worklist_parts
from dashboard.layout import plain
from db import model_versions
from db.engine import get_engine, read_session, write_session
from db.export import export_classes, flagged_csv
from db.models import Event, Review
from db.reviewers import add_reviewer, set_active
from db.reviews import add_review, flagged_cases
from db.signin import Identity
from tests.dashboard.conftest import account, viewer_data

PAGES = ["views/worklist.py", "views/case.py", "views/flagged.py", "views/models.py", "views/overview.py"]
EVIL = "<script>alert(1)</script>"


def page_texts_of(at, texts) -> str:
    assert not at.exception
    return texts(at)


def _signed_out(at, texts) -> None:
    assert not at.exception
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.dataframe and not at.metric and not at.get("plotly_chart") and not viewer_data(at)
    assert "Case" not in texts(at)


def test_signed_out_nothing_but_the_sign_in_form(filled, app, texts):
    _signed_out(app(None), texts)
    _signed_out(app(None, query={"image": str(filled.image_ids[0])}), texts)


def test_the_first_run_names_how_to_create_an_account(app, texts):
    from db import migrate

    migrate.upgrade(get_engine())
    at = app(None)
    assert "cxr-db add-reviewer" in texts(at)


def test_a_missing_schema_names_the_fix(app):
    at = app(None)
    assert not at.exception
    assert "cxr-db upgrade" in at.error[0].value


@pytest.mark.parametrize("role", ["reviewer", "admin"])
def test_every_page_runs_for_each_role(filled, role, app, texts):
    account = filled.admin_id if role == "admin" else filled.reviewer_id
    for page in PAGES:
        at = app(account, page=page, query={"image": str(filled.image_ids[0])} if page.endswith("case.py") else None)
        assert not at.exception, (page, at.exception)
        assert "Synthetic demo data" in texts(at)  # the synthetic model is marked on every page
    models = page_texts_of(app(account, page="views/models.py"), texts)
    assert ("Admins score challengers in the shadow, promote" in models) == (role == "reviewer")


def test_worklist_counts_and_opens_a_case(filled, app, texts):
    at = app(filled.reviewer_id)
    assert "1–20 of 20" in texts(at)  # 30 scored, 10 reviewed: unreviewed is the default
    at.query_params["status"] = "all"
    at.run()
    assert "1–30 of 30" in texts(at)
    at.button(key="start_reading").click().run()
    assert not at.exception



def test_the_worklist_says_who_gave_the_latest_review(filled, app):
    import json

    latest = filled.image_ids[0]  # reviewed by the fill; now read again
    with write_session(get_engine()) as session:
        lee = add_reviewer(session, "dr.lee", filled.password, display_name="Dr Lee").id
        add_review(session, image_id=latest, reviewer_id=lee, label="pneumonia", flagged_for_retraining=True)
    at = app(filled.reviewer_id, query={"status": "reviewed"})
    table = at.dataframe[0].value
    row = table[table["case"] == latest].iloc[0]
    assert (row["review"], row["read by"]) == ("pneumonia ⚑", "Dr Lee")
    assert set(table["read by"]) == {"Dr Lee", "synthetic0", "synthetic1"}  # no display name: the user name
    columns = json.loads(at.dataframe[0].proto.columns)
    assert {columns[name]["type_config"]["color"] for name in ("confidence", "uncertainty")} == {
        worklist_parts.NEUTRAL}  # a neutral bar, not the theme's alarm red


def test_an_empty_worklist_says_so_and_how_to_widen_it(filled, app, texts):
    at = app(filled.reviewer_id, query={"from": "1900-01-01", "to": "1900-01-02"})
    shown = texts(at)
    assert "No case matches these filters." in shown and "0–0" not in shown and not at.dataframe
    assert at.button(key="start_reading").disabled
    at.button(key="wl_clear_empty").click().run()
    assert "1–20 of 20" in texts(at) and "from" not in at.query_params
    assert at.date_input(key="wl_dates").value == ()


def test_an_empty_default_worklist_says_nothing_unreviewed_remains(filled, app, texts):
    with write_session(get_engine()) as session:
        for image_id in filled.image_ids[10:]:
            add_review(session, image_id=image_id, reviewer_id=filled.admin_id, label="normal")
    at = app(filled.reviewer_id)
    assert "Nothing unreviewed remains" in texts(at) and "No case matches" not in texts(at)
    at.button(key="wl_show_all").click().run()
    assert "1–30 of 30" in texts(at) and at.selectbox(key="wl_status").value == "all"


def test_a_version_that_scored_nothing_says_so(filled, app, texts):
    with write_session(get_engine()) as session:
        unscored = model_versions.register(session, sha256="e" * 64, path="/synthetic/v3.pt", architecture="resnet18",
                                           classes=["covid", "normal", "pneumonia"], input_size=64,
                                           preprocessing_hash="0" * 64, temperature=1.0, name="v3").id
    at = app(filled.admin_id, query={"v": str(unscored)})
    assert "This model version has scored no image yet" in texts(at) and "Nothing unreviewed" not in texts(at)

def test_the_folder_filter_stays_for_admins_only(filled, app, texts):
    query = {"folder": "/nowhere"}
    reviewer = app(filled.reviewer_id, query=query)  # a crafted link: ignored, so it tells nothing
    assert not [t for t in reviewer.text_input if t.key == "wl_folder"]
    assert "1–20 of 20" in texts(reviewer) and "nowhere" not in texts(reviewer)
    admin = app(filled.admin_id, query=query)
    assert admin.text_input(key="wl_folder").value == "/nowhere"
    assert "No case matches these filters." in texts(admin) and plain("folder /nowhere") in texts(admin)

@pytest.mark.parametrize(("who", "signed_in"), [("synthetic1", True), ("stranger@example.org", False)])
def test_single_sign_on_opens_the_account_of_that_name_only(filled, monkeypatch, app, texts, who, signed_in):
    from dashboard import auth

    monkeypatch.setattr(auth, "single_sign_on_configured", lambda: True)
    monkeypatch.setattr(auth, "identity", lambda: Identity(who, "https://idp.example", "user-1", True))
    at = app(None)
    assert not at.exception
    assert ("Signed in as" in texts(at)) == signed_in
    if not signed_in:
        assert not at.dataframe and not at.metric and "Case" not in texts(at)
        assert [b.label for b in at.button] == ["Sign out of single sign-on", "Sign in"]
        assert plain("No active CXR Review account has the user name stranger@example.org") in at.warning[0].value


def test_single_sign_on_without_a_verified_address_opens_nothing(filled, monkeypatch, app, texts):
    from dashboard import auth

    monkeypatch.setattr(auth, "single_sign_on_configured", lambda: True)
    monkeypatch.setattr(auth, "identity", lambda: Identity("synthetic1", "https://idp.example", "user-1", None))
    at = app(None)
    assert "Signed in as" not in texts(at)
    assert plain("The provider does not say that synthetic1 is verified") in at.warning[0].value


def test_signing_out_everywhere_ends_a_single_sign_on_session_too(filled, monkeypatch, app, texts):
    """The provider's cookie outlives the session: the browser must not be signed in again by it."""
    from dashboard import auth

    monkeypatch.setattr(auth, "single_sign_on_configured", lambda: True)
    monkeypatch.setattr(auth, "identity", lambda: Identity("synthetic1", "https://idp.example", "user-1", True))
    at = app(None)
    assert "Signed in as" in texts(at)
    actions.sign_out(account(at.session_state["account_id"]))  # "Sign out" pressed in another browser
    for _ in range(2):  # its next interactions
        at.run()
        assert "Signed in as" not in texts(at)
    assert [b.label for b in at.button] == ["Sign out of single sign-on", "Sign in"]


@pytest.mark.parametrize(("idle_minutes", "signed_in"), [(29, True), (31, False)])
def test_a_session_left_idle_is_signed_out(filled, app, texts, idle_minutes, signed_in):
    at = app(filled.reviewer_id)
    assert "Signed in as" in texts(at)
    at.session_state["active_at"] = time.monotonic() - idle_minutes * 60  # the default allows 30
    at.run()
    assert ("Signed in as" in texts(at)) == signed_in
    if not signed_in:
        assert not at.dataframe
        assert plain("You were signed out after 30 minutes without activity.") in at.warning[0].value


@pytest.mark.parametrize(("active_at", "now", "minutes", "expired"), [
    (None, 10_000.0, 30, False),  # not signed in by this session yet
    (0.0, 1800.0, 30, False), (0.0, 1800.5, 30, True),
    (0.0, 10**9, 0, False),  # 0: never
])
def test_idle_expiry(active_at, now, minutes, expired):
    from dashboard import auth

    assert auth.idle_expired(active_at, now, minutes) is expired


@pytest.mark.parametrize(("minutes", "said"), [(30, "30 minutes"), (1, "1 minute"), (2.5, "2.5 minutes"),
                                                (0.05, "3 seconds"), (1 / 60, "1 second"), (0.001, "1 second")])
def test_the_idle_notice_names_its_span_plainly(minutes, said):
    from dashboard import auth

    assert auth.idle_span(minutes) == said


def test_a_reviewer_cannot_promote_or_manage_accounts_even_directly(filled, app):
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        app(filled.reviewer_id, page="views/accounts.py")  # not in a reviewer's navigation at all
    reviewer = account(filled.reviewer_id)
    for attempt in (lambda: actions.promote(reviewer, filled.version_id),
                    lambda: actions.create_account(reviewer, "mallory", filled.password, "admin", None),
                    lambda: actions.set_active(reviewer, "synthetic0", False),
                    lambda: actions.reset_password(reviewer, "synthetic0", filled.password),
                    lambda: actions.unlock(reviewer, "synthetic0"),
                    lambda: actions.export_flagged(reviewer, include_paths=True)):
        with pytest.raises(PermissionError):
            attempt()


def test_admin_manages_accounts_and_every_change_is_audited(filled, app, texts):
    at = app(filled.admin_id, page="views/accounts.py")
    at.text_input[0].input("newrad")
    at.text_input[2].input("a-long-password")
    next(b for b in at.button if b.label == "Create account").click().run()
    assert "Created newrad" in texts(at)
    actions.reset_password(account(filled.admin_id), "newrad", "another-password")
    actions.set_active(account(filled.admin_id), "newrad", False)
    with write_session(get_engine()) as session:
        newer = model_versions.register(session, sha256="f" * 64, path="/synthetic/v2.pt", architecture="resnet18",
                                        classes=["covid", "normal", "pneumonia"], input_size=64,
                                        preprocessing_hash="0" * 64, temperature=1.0, name="v2",
                                        is_synthetic=True).id  # over the synthetic active one: gated
    data.versions.clear()  # registered by training elsewhere; the page's cache lives 30 s
    models = app(filled.admin_id, page="views/models.py")
    models.button(key="promote_button").click().run()
    assert "The gate refuses: 0 prospective reviewed case" in texts(models)  # never scored in the shadow
    models.text_area(key="override_reason").input("validated offline on 400 films")  # sent with the form
    next(b for b in models.button if b.label == "Promote anyway").click().run()
    assert not models.exception
    assert "v2 is now active" in texts(models)
    with read_session(get_engine()) as session:
        kinds = session.scalars(select(Event.kind).order_by(Event.id)).all()
    assert kinds == ["account_created", "password_reset", "account_deactivated", "promote", "promote_override"]
    with read_session(get_engine()) as session:
        assert model_versions.active_version(session).id == newer
    at = app(filled.admin_id, page="views/accounts.py")
    assert not at.exception
    assert "newrad" in texts(at)


def _try_password(at, username: str, password: str) -> None:
    at.text_input[0].input(username)
    at.text_input[1].input(password)
    at.button[0].click().run()


def test_failed_sign_ins_slow_the_guessing_client_not_the_owner(filled, monkeypatch, app, texts):
    from dashboard import auth
    from db import signin

    instant = dt.datetime.now(dt.UTC)
    monkeypatch.setattr(signin, "utcnow", lambda: instant)  # every attempt at one moment: no delay runs out
    monkeypatch.setattr(auth, "client_address", lambda: "203.0.113.9")
    at = app(None)
    for _ in range(6):
        _try_password(at, "synthetic0", "wrong password")
    assert "Unknown user name or wrong password" in at.error[0].value
    _try_password(at, "synthetic0", filled.password)
    assert "Too many failed attempts. Try again in" in at.error[0].value  # even with the right password
    with read_session(get_engine()) as session:
        rows = session.execute(select(Event.kind, Event.client)).all()
    assert rows == [("sign_in_failed", "203.0.113.9")] * 6 + [("sign_in_refused", "203.0.113.9")]

    monkeypatch.setattr(auth, "client_address", lambda: "198.51.100.7")  # the admin, at their own desk
    owner = app(None)
    _try_password(owner, "synthetic0", filled.password)
    assert "Signed in as" in texts(owner)


def test_a_deactivated_account_is_signed_out_at_its_next_rerun(filled, app, texts):
    at = app(None)
    _try_password(at, "synthetic0", filled.password)
    assert "Signed in as" in texts(at)
    with write_session(get_engine()) as session:
        set_active(session, "synthetic0", False)
    at.run()
    _signed_out(at, texts)
    assert "Your account was deactivated" in at.warning[0].value


def test_case_viewer_overlay_review_and_next(filled, fake_maps, app, texts):
    calls = fake_maps
    first = filled.image_ids[-1]  # unreviewed
    at = app(filled.reviewer_id, page="views/case.py", query={"image": str(first), "status": "all"})
    assert not at.exception
    assert not calls  # the overlay is off by default
    assert viewer_data(at)["overlay"] is None
    at.button(key="save_review").click().run()  # S before any label: it stays, and says why
    assert at.query_params["image"] in (str(first), [str(first)])
    assert plain("Choose a label first (the number keys), then save.") in texts(at)
    at.button(key="overlay_button").click().run()
    assert calls and calls[0][0] == first  # then the next case's, preloaded
    overlay = viewer_data(at)["overlay"]
    assert overlay["png"].startswith("data:image/png;base64,") and overlay["title"] == f"Grad-CAM · {calls[0][2]}"
    shown = texts(at)
    assert "A map shows what drove the score, not where the disease is." in shown
    caption = plain(f"Grad-CAM (layer4) for class '{calls[0][2]}', model version")
    assert caption in shown and shown.count(plain("Grad-CAM")) == 1  # method, settings, class, version: once
    at.button(key="label_key_4").click().run()  # "other": differs from any prediction
    assert at.checkbox(key=f"review_flag_{first}_other").value is True
    at.text_area(key=f"review_comment_{first}").input(EVIL).run()
    at.button(key="save_review").click().run()
    assert not at.exception
    assert at.query_params["image"] != [str(first)]
    with read_session(get_engine()) as session:
        review = session.scalars(select(Review).where(Review.image_id == first)).one()
    assert (review.label, review.flagged_for_retraining, review.comment, review.mode, review.overlay_shown) == (
        "other", True, EVIL, "standard", True)
    assert review.seconds_spent is not None and review.seconds_spent >= 0

    at = app(filled.reviewer_id, page="views/case.py", query={"image": str(first)})
    assert EVIL in [t.value for t in at.text]  # the comment as plain text
    assert not any("<script>" in m.value for m in at.markdown)


def test_read_first_hides_the_model_until_a_label_is_chosen(filled, fake_maps, app, texts):
    image = filled.image_ids[-2]
    at = app(filled.reviewer_id, page="views/case.py", query={"image": str(image)})
    at.session_state["overlay_on"] = True  # even with the overlay left on from an earlier case
    at.toggle(key="read_first_mode").set_value(True).run()
    assert "confidence" not in texts(at) and "appears once you have chosen a label" in texts(at)
    assert at.button(key="overlay_button").disabled and viewer_data(at)["overlay"] is None
    at.button(key="label_key_2").click().run()
    assert "confidence" in texts(at) and viewer_data(at)["overlay"] is not None
    at.button(key="save_review").click().run()
    with read_session(get_engine()) as session:
        assert session.scalar(select(Review.mode).where(Review.image_id == image)) == "read_first"


def test_a_case_held_by_another_reviewer_needs_a_second_reading(filled, app):
    image = filled.image_ids[-3]
    actions.claim(account(filled.admin_id), image)
    at = app(filled.reviewer_id, page="views/case.py", query={"image": str(image)})
    assert any("synthetic0 opened this case" in w.value.replace("\\", "") for w in at.warning)
    assert not [b for b in at.button if b.key == "save_review"]
    at.button(key="second_reading_button").click().run()
    assert [b for b in at.button if b.key == "save_review"]


def test_overview_lists_a_runs_failed_files_to_admins_only(filled, app, texts):
    from db import results
    from db.results import FileStat

    with write_session(get_engine()) as session:
        older = results.start_run(session, {}, filled.version_id, pid=1)
        results.add_failure(session, older.id, FileStat("/in/old.dcm", 1, 1), "timeout", "/in/old.dcm: too slow")
        latest = results.start_run(session, {}, filled.version_id, pid=2)
        latest.started_at = older.started_at + dt.timedelta(hours=24)
        results.add_failure(session, latest.id, FileStat(f"/in/{EVIL}.dcm", 1, 1), "truncated",
                            f"/in/{EVIL}.dcm: file ends early, at byte 2129")
        results.add_failure(session, latest.id, FileStat("/in/other.png", 1, 1), "corrupt",
                            "/in/other.png: bad CRC in IDAT chunk at byte 33")
    admin = app(filled.admin_id, page="views/overview.py")
    assert not admin.exception
    failed = admin.dataframe[-1].value
    assert list(failed.columns) == ["reason", "file", "what is wrong"]
    assert failed.values.tolist() == [["truncated", f"{EVIL}.dcm", "file ends early, at byte 2129"],  # the latest run
                                      ["corrupt", "other.png", "bad CRC in IDAT chunk at byte 33"]]
    assert "corrupt: 1 · truncated: 1 · files listed from /in/" in texts(admin)  # named from the folder they share
    assert f"cxr-db failures --run {latest.id}" in texts(admin)
    admin.selectbox(key="failed_run").select(older.id).run()
    assert admin.dataframe[-1].value.values.tolist() == [["timeout", "old.dcm", "too slow"]]

    reviewer = app(filled.reviewer_id, page="views/overview.py")
    assert not reviewer.exception and not reviewer.selectbox
    assert "old.dcm" not in texts(reviewer) and EVIL not in texts(reviewer)  # file paths may name patients
    assert "An admin sees the files a run could not score" in texts(reviewer)


def test_flagged_page_and_its_csv_are_the_exports(filled, app):
    with write_session(get_engine()) as session:
        add_review(session, image_id=filled.image_ids[-1], reviewer_id=filled.reviewer_id, label="other",
                   flagged_for_retraining=True, comment=EVIL)
    at = app(filled.reviewer_id, page="views/flagged.py")
    assert not at.exception
    assert "path" not in at.dataframe[0].value.columns  # paths only for admins
    with read_session(get_engine()) as session:
        expected = flagged_csv(flagged_cases(session), classes=export_classes(session))
    assert actions.export_flagged(account(filled.reviewer_id), include_paths=False) == expected
    admin = app(filled.admin_id, page="views/flagged.py")
    assert "path" in admin.dataframe[0].value.columns
