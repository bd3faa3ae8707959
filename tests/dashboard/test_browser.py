"""The dashboard in a real browser (Debian chromium + Playwright), against a live `streamlit run` on a free
localhost port: a reviewer's whole round, and stored HTML that must show as text. Skipped without chromium or
Playwright, except under CI, where .ci/run installs both."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dashboard.local_server import CASE_HEADING, case_heading, serve, sign_in, wait_until_idle
from db import migrate, model_versions
from db.engine import create_database_engine, read_session, write_session
from db.models import CaseClaim, Prediction, Review, Reviewer
from db.reviewers import add_reviewer
from db.reviews import add_review

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "browser-test-password"
EVIL_NAME = "<img src=x onerror=alert(1)>.png"
EVIL_COMMENT = "<script>alert('comment')</script> looks fine"
TIMEOUT_MS = 60_000
PRIOR_DATES = ("2024-01-02", "2025-03-05")

pytestmark = pytest.mark.slow




def _two_studies_of_one_patient(dicom_dir: Path, folder: Path) -> list[Path]:
    """The real CR film as two studies of one patient (same PatientID, study dates a year apart)."""
    import pydicom
    from pydicom.uid import generate_uid

    source = next(p for p in sorted(dicom_dir.glob("*.dcm")) if not p.name.startswith("Fake"))
    paths = []
    for date in PRIOR_DATES:
        ds = pydicom.dcmread(source)
        ds.PatientID, ds.StudyDate = "BROWSER-TEST-PATIENT", date.replace("-", "")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid() for _ in range(3))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        paths.append(folder / f"study-{date}.dcm")
        ds.save_as(paths[-1])
    return paths


@pytest.fixture(scope="module")
def site(tmp_path_factory, cxr_dev, dicom_dir):
    """A scored database (a small random model over 22 cxr-dev films, one of them under a hostile name, one
    reviewed with a hostile comment, and two DICOM studies of one patient), three accounts, and the app serving
    it."""
    home = tmp_path_factory.mktemp("browser-home")
    url = f"sqlite:///{home / 'cxr.db'}"
    images = home / "incoming"
    images.mkdir()
    films = sorted(cxr_dev.glob("*/*.png"))[::16][:22]
    for n, film in enumerate(films):
        shutil.copy(film, images / (EVIL_NAME if n == 0 else film.name))
    studies = _two_studies_of_one_patient(dicom_dir, images)
    env = {**os.environ, "CXR_HOME": str(home), "CXR_DB_URL": url}
    checkpoint = _checkpoint(home / "model.pt")
    subprocess.run([sys.executable, "-m", "scoring", "--db", url, "--model", str(checkpoint),
                    "--settle-seconds", "0", str(images)], env=env, check=True, capture_output=True, timeout=300)
    engine = create_database_engine(url)
    migrate.require_current(engine)
    with write_session(engine) as session:
        version = model_versions.list_versions(session)[0]
        model_versions.promote(session, str(version.id))
        reviewer = add_reviewer(session, "reader", PASSWORD)
        add_reviewer(session, "second-reader", PASSWORD)
        add_reviewer(session, "chief", PASSWORD, role="admin")
        evil = session.query(Prediction).join(Prediction.image).filter_by(path=str(images / EVIL_NAME)).one()
        add_review(session, image_id=evil.image_id, reviewer_id=reviewer.id, label="normal",
                   prediction_id=evil.id, comment=EVIL_COMMENT)
        evil_image = evil.image_id
        newer_study = session.query(Prediction).join(Prediction.image).filter_by(path=str(studies[1])).one().image_id
    try:
        with serve(env) as base:
            yield dict(base=base, engine=engine, evil_image=evil_image, newer_study=newer_study, env=env)
    finally:
        engine.dispose()


def _checkpoint(path: Path) -> Path:
    import torch

    from scoring.model import Checkpoint, Preprocessing, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("resnet18", 3)
    return save_checkpoint(path, Checkpoint("resnet18", ["covid", "normal", "pneumonia"], Preprocessing(64),
                                            model.state_dict(), training={"name": "browser-test", "synthetic": True}))


def _sign_in(page, user: str) -> None:
    sign_in(page, user, PASSWORD)


def _image_in_url(page) -> int:
    from urllib.parse import parse_qs, urlparse

    return int(parse_qs(urlparse(page.url).query)["image"][0])


def test_a_reviewers_round(browser, site):
    page = browser.new_page(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(site["base"])
    _sign_in(page, "reader")

    # the worklist, narrowed to unreviewed (the default) low-confidence cases
    page.get_by_text("of 23").first.wait_for()  # 24 scored, one reviewed
    wait_until_idle(page)
    _worklist_fits_the_first_screen(page)
    page.get_by_role("button", name="More filters").click()
    maximum = page.get_by_role("slider").nth(1)
    maximum.focus()
    for _ in range(10):
        maximum.press("ArrowLeft")
    # every press counts (none is lost to a rerun) and the filter lives in the URL
    try:
        page.wait_for_function("new URLSearchParams(location.search).get('cmax') === '0.5'")
    except Exception as error:
        raise AssertionError(f"the URL is {page.url} while the slider says {maximum.input_value()}") from error
    page.get_by_text("confidence 0–0.5").wait_for()
    wait_until_idle(page)

    page.get_by_role("button", name="Start reading").click()
    heading = page.get_by_role("heading", name=CASE_HEADING)
    heading.wait_for()
    image_id = _image_in_url(page)
    wait_until_idle(page)
    heading.click()  # the keyboard shortcuts act once the page has the focus

    # overlays: off by default, O shows Grad-CAM; switching the method shows the other map
    page.keyboard.press("o")
    try:
        page.get_by_text("Grad-CAM (layer4) for class").first.wait_for()
    except Exception as error:
        state = page.evaluate("""() => [document.activeElement.tagName, document.activeElement.className,
            document.querySelector('[data-testid=stApp]').dataset.testScriptState,
            Array.from(document.querySelectorAll('button')).map(b => b.innerText + (b.disabled ? '(disabled)' : ''))
              .join('|')]""")
        raise AssertionError(f"no overlay after O: {state}; {page.url}") from error
    wait_until_idle(page)
    assert _wait_drawn(page, "v.dataset.overlay === 'drawn'")["overlay"]
    page.get_by_label("Map").click()  # below the reading form: typed, as its list may open off the screen
    page.keyboard.type("Occlusion")
    page.keyboard.press("Enter")
    page.get_by_text("Occlusion (").first.wait_for()
    wait_until_idle(page)
    assert _wait_drawn(page, "v.dataset.overlay === 'drawn'")["overlay"]

    # a disagreeing review: the flag is ticked for us; S saves and moves on
    with read_session(site["engine"]) as session:
        predicted = session.query(Prediction.predicted_class).filter_by(image_id=image_id).scalar()
    labels = ["covid", "normal", "pneumonia"]
    label = next(name for name in labels if name != predicted)
    wait_until_idle(page)
    heading.click()
    page.keyboard.press(str(labels.index(label) + 1))
    page.get_by_text(f"Label: {label}").wait_for()
    assert page.get_by_role("checkbox", name="Flag for retraining").is_checked()
    wait_until_idle(page)
    assert not _sidebar_open(page)
    page.keyboard.press("s")
    page.wait_for_function(f"!new URLSearchParams(location.search).has('image') || "
                           f"new URLSearchParams(location.search).get('image') !== '{image_id}'")
    page.get_by_role("heading", name=CASE_HEADING).wait_for()

    # Flagged, and its CSV (the case page folds the sidebar away, whatever its reruns: the worklist opens it again)
    wait_until_idle(page)
    assert not _sidebar_open(page)
    _back_to_the_worklist(page)
    page.wait_for_function(f"({SIDEBAR_RIGHT}) > 0")
    page.get_by_role("link", name="Flagged").click()
    page.get_by_text("whose latest review is flagged").wait_for()
    wait_until_idle(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    mine = [row for row in rows if row["case_id"] == str(image_id)]
    assert [(row["reviewer_label"], row["reviewer"], row["predicted_class"]) for row in mine] == [
        (label, "reader", predicted)]
    assert "path" not in rows[0]  # reviewers export no paths

    # signed out, the case's URL asks for sign-in and shows nothing of the case
    wait_until_idle(page)
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in").wait_for()
    page.goto(f"{site['base']}/case?image={image_id}")
    page.get_by_role("button", name="Sign in").wait_for()
    assert page.get_by_text(f"Case {image_id}").count() == 0
    assert page.locator(".cxr-viewer").count() == 0


def test_the_worklists_name_in_the_url_leads_to_it(browser, site):
    """/worklist (the worklist's own URL is the app's root): the sign-in, then the worklist with the filter asked
    for, never Streamlit's "Page not found"."""
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{site['base']}/worklist?status=flagged")
    page.get_by_role("button", name="Sign in").wait_for()
    assert page.get_by_text("Page not found").count() == 0
    _sign_in(page, "reader")
    page.wait_for_function("location.pathname === '/' && new URLSearchParams(location.search).get('status') === "
                           "'flagged'")
    page.get_by_role("heading", name="Worklist").wait_for()
    wait_until_idle(page)
    assert page.get_by_text("Page not found").count() == 0


def test_an_unattended_screen_signs_out_and_hides_the_film_by_itself(browser, site, tmp_path):
    """With no click and no key, the idle watchdog replaces the case on screen by the sign-in (here after 3 s of
    idleness, set in Streamlit's global secrets file; the watchdog looks every 30 s)."""
    home = tmp_path / "home"
    (home / ".streamlit").mkdir(parents=True)
    (home / ".streamlit" / "secrets.toml").write_text("[cxr_review]\nidle_minutes = 0.05\n")
    with serve({**site["env"], "HOME": str(home)}) as base:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{base}/case?image={site['newer_study']}")
        _sign_in(page, "reader")
        page.get_by_text(case_heading(site["newer_study"])).wait_for()
        page.locator(".cxr-viewer").first.wait_for()
        page.get_by_text("You were signed out after 3 seconds without activity").wait_for(timeout=90_000)
        page.get_by_role("button", name="Sign in").wait_for()
        wait_until_idle(page)
        assert page.locator(".cxr-viewer").count() == 0
        # the sign-in screen has no sidebar, so no arrow to open one (the case page had collapsed it)
        assert not page.get_by_test_id("stExpandSidebarButton").is_visible()
    with read_session(site["engine"]) as session:  # the case it held is free for others at once
        assert not session.query(CaseClaim).filter_by(image_id=site["newer_study"]).count()


def test_stored_html_shows_as_text(browser, site):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{site['base']}/case?image={site['evil_image']}")  # a bookmark: sign in, then the case
    _sign_in(page, "chief")
    page.get_by_role("heading", name=f"Case {site['evil_image']} ·").wait_for()
    page.get_by_text(EVIL_NAME).first.wait_for()
    page.get_by_text(EVIL_COMMENT).first.wait_for()
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("script", has_text="alert").count() == 0
    assert dialogs == []


COMMENT_ONE = "Right apical pneumothorax, call ward"
COMMENT_THREE = "Old rib fracture left, no acute finding"
LABELS = ["covid", "normal", "pneumonia"]


def _predicted(site, image_id: int) -> str:
    with read_session(site["engine"]) as session:
        return session.query(Prediction.predicted_class).filter_by(image_id=image_id).scalar()


def _next_case(page, after: int) -> int:
    """Waits until the next case is on screen (its own heading, not the last case's still being replaced)."""
    page.wait_for_function(f"new URLSearchParams(location.search).get('image') !== '{after}'")
    shown = _image_in_url(page)
    # the heading's place in the list is the case page's last line: the server then has this case's buttons (a key
    # pressed before that would come with the case before's, and be dropped)
    page.get_by_role("heading", name=case_heading(shown)).wait_for()
    wait_until_idle(page)
    return shown


def _comment_then_save(page, comment, text: str, *, leave_with: str) -> int:
    """Types a comment, leaves the box with a key, presses S; returns the next case."""
    shown = _image_in_url(page)
    wait_until_idle(page)
    comment.click()
    page.keyboard.type(text)
    page.keyboard.press(leave_with)
    wait_until_idle(page)
    page.keyboard.press("s")
    return _next_case(page, shown)


def _boxes_overlap(a: dict, b: dict) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


def test_a_round_with_keyboard_and_mouse_keeps_each_comment_on_its_case(browser, site):
    """Three cases read with keys and the mouse mixed, comments on the first and third only: the database and the
    flagged CSV hold exactly what was entered, on the right cases."""
    page = browser.new_page(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(site["base"])
    _sign_in(page, "second-reader")
    page.get_by_role("button", name="Start reading").click()
    page.get_by_role("heading", name=CASE_HEADING).wait_for()
    wait_until_idle(page)
    comment = page.get_by_role("textbox", name="Comment")

    # case 1: a label by key, a comment, Tab out of the box and S (the sequence that carried the comment onwards)
    first = _image_in_url(page)
    label_one = next(name for name in LABELS if name != _predicted(site, first))  # flagged: it disagrees
    page.get_by_role("heading", name=CASE_HEADING).click()
    page.keyboard.press(str(LABELS.index(label_one) + 1))
    page.get_by_text(f"Label: {label_one}").wait_for()
    second = _comment_then_save(page, comment, COMMENT_ONE, leave_with="Tab")
    notice = page.get_by_text(f"Saved case {first}: {label_one}.")
    notice.wait_for()
    controls = {name: page.locator(f".st-key-{key} button") for name, key in (("Previous", "prev"), ("Next", "next"))}
    controls["Worklist"] = page.get_by_test_id("stPageLink-NavLink").filter(has_text="Worklist")
    for name, control in controls.items():
        assert not _boxes_overlap(notice.bounding_box(), control.bounding_box()), name

    # case 2: its comment box is empty; a window preset chosen with the mouse in the viewer, then 2 chooses
    # "normal"
    assert comment.input_value() == ""
    window = page.locator(".cxr-preset")
    window.select_option(index=1)
    preset_name = window.input_value()
    wait_until_idle(page)
    page.keyboard.press("2")
    page.get_by_text("Label: normal").wait_for()
    assert window.input_value() == preset_name  # the key chose a label; it did not choose in the Window box
    wait_until_idle(page)
    page.keyboard.press("s")
    third = _next_case(page, second)

    # case 3: the label with the mouse, a comment left with Escape, then S
    assert comment.input_value() == ""
    label_three = next(name for name in LABELS if name != _predicted(site, third))
    page.locator(f".st-key-label_key_{LABELS.index(label_three) + 1} button").click()
    page.get_by_text(f"Label: {label_three}").wait_for()
    fourth = _comment_then_save(page, comment, COMMENT_THREE, leave_with="Escape")
    assert comment.input_value() == ""

    # cases 4 and 5: a fast reader presses 2 and S at once, before the page shows the label (S was lost half the
    # times while the button waited for the label's rerun to enable it)
    fast = [fourth]
    for _ in range(2):
        page.get_by_role("heading", name=CASE_HEADING).click()
        page.keyboard.press("2")
        page.keyboard.press("s")
        fast.append(_next_case(page, fast[-1]))

    with read_session(site["engine"]) as session:
        stored = {r.image_id: (r.label, r.comment, r.flagged_for_retraining) for r in session.query(Review)
                  .join(Review.reviewer).filter(Reviewer.username == "second-reader")}
    assert stored == {first: (label_one, COMMENT_ONE, True),
                      second: ("normal", None, _predicted(site, second) != "normal"),
                      third: (label_three, COMMENT_THREE, True),
                      **{case: ("normal", None, _predicted(site, case) != "normal") for case in fast[:2]}}
    assert fast[2] not in stored

    # the flagged CSV: the two comments on their own cases, nowhere else; the table has no download of its own
    _back_to_the_worklist(page)
    page.get_by_role("link", name="Flagged").click()
    table = page.locator("[data-testid=stDataFrame]")
    table.wait_for()
    wait_until_idle(page)
    table.hover()
    page.wait_for_timeout(500)
    assert page.get_by_role("button", name=re.compile("download", re.I)).count() == 1  # ours, not the toolbar's
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    comments = {row["case_id"]: row["comment"] for row in rows if row["reviewer"] == "second-reader"}
    assert comments[str(first)] == COMMENT_ONE and comments[str(third)] == COMMENT_THREE
    assert comments.get(str(second), "") == ""
    assert [row["case_id"] for row in rows if row["comment"] in (COMMENT_ONE, COMMENT_THREE)] == [
        str(first), str(third)]


SIDEBAR_RIGHT = "document.querySelector('[data-testid=stSidebar]').getBoundingClientRect().right"


def _sidebar_open(page) -> bool:
    """Folded away, the sidebar sits left of the screen (its attributes do not say so)."""
    return page.evaluate(f"() => {SIDEBAR_RIGHT}") > 0


def _back_to_the_worklist(page) -> None:
    """The case page's own link (its sidebar is folded away)."""
    page.get_by_test_id("stPageLink-NavLink").filter(has_text="Worklist").click()
    page.get_by_role("button", name="Start reading").wait_for()


def _worklist_fits_the_first_screen(page) -> None:
    """The table starts in the top third of a 1440x900 screen and shows at least 20 rows without scrolling."""
    table = page.locator("[data-testid=stDataFrame]")
    table.wait_for()
    box = table.bounding_box()
    # the grid draws on a canvas; its accessible table holds the rows it has drawn in its visible area
    rows = "document.querySelectorAll('[data-testid=stDataFrame] [role=row]').length"
    try:
        page.wait_for_function(f"{rows} >= 21", timeout=10_000)  # the header row and 20 cases
    except Exception as error:
        raise AssertionError(f"{page.evaluate(rows)} rows drawn") from error
    assert box["y"] <= 900 / 3 and box["y"] + box["height"] <= 900, box


def _viewer(page) -> dict:
    """The viewer's state as drawn: the film's box (CSS px of the page), the panes, the corner texts."""
    return page.locator(".cxr-viewer").evaluate("""v => ({film: JSON.parse(v.dataset.film || 'null'),
        panes: Number(v.dataset.panes || 0), wl: v.querySelector('.cxr-wl').textContent,
        hint: v.querySelector('.cxr-hint').textContent, preset: v.querySelector('.cxr-preset').value,
        titles: Array.from(v.querySelectorAll('.cxr-title')).map(t => t.textContent),
        overlay: v.classList.contains('has-overlay')})""")


def _centre_grey(page) -> int:
    return page.locator(".cxr-canvas").evaluate("""c => { const g = c.getContext('2d');
        return g.getImageData(Math.floor(c.width / 2), Math.floor(c.height / 2), 1, 1).data[0]; }""")


def _inside(box: dict, viewport: dict) -> bool:
    return (box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= viewport["width"] + 0.5
            and box["y"] + box["height"] <= viewport["height"] + 0.5)


def _wait_drawn(page, check: str) -> dict:
    page.wait_for_function(f"(() => {{ const v = Array.from(document.querySelectorAll('*')).map(e => e.shadowRoot "
                           f"&& e.shadowRoot.querySelector('.cxr-viewer')).find(Boolean); "
                           f"return v && v.dataset.film && ({check}); }})()")
    return _viewer(page)


def test_the_reading_room_at_1440x900(browser, site):
    viewport = {"width": 1440, "height": 900}
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(TIMEOUT_MS)
    case = site["newer_study"]
    page.goto(f"{site['base']}/case?image={case}")
    _sign_in(page, "second-reader")
    page.get_by_role("heading", name=f"Case {case} ·").wait_for()
    wait_until_idle(page)
    shown = _wait_drawn(page, "true")

    # the whole film, as large as the screen allows; the labels and Save beside it, all without scrolling
    assert _inside(shown["film"], viewport) and shown["film"]["height"] >= 760, shown["film"]
    for control in [f".st-key-label_key_{n} button" for n in (1, 2, 3, 4, 5)] + [".st-key-save_review button"]:
        assert _inside(page.locator(control).bounding_box(), viewport), control

    # window/level by a drag changes the window values in the corner and the pixels drawn; pressing the film also
    # takes the keys back from the comment box
    comment = page.get_by_role("textbox", name="Comment")
    comment.click()
    page.keyboard.type("Film: ")
    film = shown["film"]
    x, y = film["x"] + film["width"] / 2, film["y"] + film["height"] / 2
    before, grey_before = shown["wl"], _centre_grey(page)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y + 60, steps=6)
    page.mouse.up()
    dragged = _wait_drawn(page, f"v.querySelector('.cxr-wl').textContent !== {before!r}")
    assert re.match(r"W [\d.]+ +L [\d.]+\ncustom", dragged["wl"]), dragged["wl"]
    assert _centre_grey(page) != grey_before
    # presets on keys; the plain wheel leaves the zoom alone (it scrolls the page), Ctrl+wheel zooms
    page.keyboard.press("f")
    assert _wait_drawn(page, "v.querySelector('.cxr-preset').value === 'full range'")["wl"].startswith("W ")
    assert comment.input_value() == "Film: "
    page.mouse.move(x, y)
    page.mouse.wheel(0, -300)
    assert "zoom 100%" in _viewer(page)["hint"]
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    assert "zoom 100%" not in _wait_drawn(page, "!v.querySelector('.cxr-hint').textContent.includes('zoom 100%')")[
        "hint"]
    page.keyboard.press("z")

    # the overlay blends on the same full-size film; B blinks it, X puts it side by side
    page.keyboard.press("o")
    blended = _wait_drawn(page, "v.classList.contains('has-overlay')")
    assert blended["panes"] == 1 and blended["film"]["height"] >= 650, blended
    page.keyboard.press("b")
    assert "hidden" in _wait_drawn(page, "v.querySelector('.cxr-hint').textContent.includes('hidden')")["hint"]
    page.keyboard.press("x")
    assert _wait_drawn(page, "v.dataset.panes === '2'")["panes"] == 2
    page.keyboard.press("x")
    page.keyboard.press("b")

    # the same patient's prior study, listed with its date, and beside the film on V
    prior = page.get_by_role("button", name=re.compile(f"^{PRIOR_DATES[0]} · case \\d+"))
    prior.wait_for()
    page.keyboard.press("v")
    beside = _wait_drawn(page, f"Array.from(v.querySelectorAll('.cxr-title')).some(t => "
                                f"t.textContent.includes('{PRIOR_DATES[0]}'))")
    assert beside["panes"] == 2 and any(PRIOR_DATES[1] in t for t in beside["titles"]), beside

    # 1920x1080: the film grows with the screen
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.keyboard.press("v")
    wait_until_idle(page)
    large = _wait_drawn(page, "v.dataset.panes === '1'")
    assert _inside(large["film"], {"width": 1920, "height": 1080}) and large["film"]["height"] >= 900, large
