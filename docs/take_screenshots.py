"""Screenshots of the dashboard for the README and the guides: `python docs/take_screenshots.py [--out DIR]`.

It runs `cxr-demo` into a fresh, temporary CXR_HOME (the synthetic demo cohort and its demo model: phantoms, so
no patient's film ends up in the repository), records a few readings by a second account so that Flagged, Models
and Overview have something to show, gives one phantom patient an earlier study (for the priors), starts the
dashboard on a free localhost port and photographs each page and the reading guide's steps (a case held by
another reader, read-first, a disagreeing label, the keys, the overlay, a prior) in headless Chromium at 1440x900.
Serving, signing in and waiting for the app are the browser test's own (`dashboard.local_server`). Needs Debian's
chromium and Python Playwright."""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from dashboard.local_server import CASE_HEADING, CHROMIUM, REPO, serve, sign_in, wait_until_idle
from db.engine import create_database_engine, read_session, write_session
from db.models import Prediction
from db.reviewers import add_reviewer
from db.reviews import add_review

VIEWPORT = {"width": 1440, "height": 900}
READER, READER_PASSWORD = "dr.lee", "screenshot-reader-password"
SETTLE_MS = 1500  # plotly draws after the run ends


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cxr-shots-") as home:
        env = {**os.environ, "CXR_HOME": home}
        env.pop("CXR_DB_URL", None)
        password = _run_demo(env)
        url = f"sqlite:///{Path(home) / 'cxr.db'}"
        _add_readings(url)
        follow_up = _add_prior_study(Path(home), env)
        with serve(env) as base:
            _photograph(base, password, args.out, follow_up, url)
    return 0


def _run_demo(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "model_training.demo"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=1800, check=True)
    found = re.search(r"user 'demo', password '([^']+)'", done.stdout)
    if not found:
        raise SystemExit(f"cxr-demo printed no demo password:\n{done.stdout[-2000:]}")
    return found.group(1)


def _add_readings(url: str) -> None:
    """A second reader's readings of 24 cases: most agree, some disagree and are flagged, a few with comments."""
    rng = random.Random(7)
    engine = create_database_engine(url)
    with write_session(engine) as session:
        reader = add_reviewer(session, READER, READER_PASSWORD, display_name="Dr Lee")
        predictions = session.query(Prediction).order_by(Prediction.id).limit(24).all()
        for prediction in predictions:
            classes = list(prediction.probabilities)
            disagree = rng.random() < 0.3
            label = rng.choice([c for c in classes if c != prediction.predicted_class]) if disagree \
                else prediction.predicted_class
            add_review(session, image_id=prediction.image_id, reviewer_id=reader.id, label=label,
                       prediction_id=prediction.id, flagged_for_retraining=disagree,
                       comment="Subtle opacity, right lower zone." if disagree and rng.random() < 0.5 else None,
                       overlay_shown=rng.random() < 0.5, seconds_spent=rng.uniform(8, 60))
    engine.dispose()


def _add_prior_study(home: Path, env: dict[str, str]) -> int:
    """A demo patient's earlier study (a scored DICOM phantom again, a year older, new UIDs), scored; returns the
    later study's case number. The cohort's own follow-ups are PNGs, which carry no patient."""
    import pydicom
    from pydicom.uid import generate_uid
    from sqlalchemy import select

    from db.models import Image, Prediction

    engine = create_database_engine(f"sqlite:///{home / 'cxr.db'}")
    with write_session(engine) as session:
        case, path = session.execute(
            select(Image.id, Image.path).join(Prediction, Prediction.image_id == Image.id)
            .where(Image.format == "dicom", Image.patient_pseudonym.is_not(None), Image.study_date.is_not(None))
            .order_by(Image.id).limit(1)).one()
    engine.dispose()
    ds = pydicom.dcmread(path)
    ds.StudyDate = f"{int(ds.StudyDate[:4]) - 1}{ds.StudyDate[4:]}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid() for _ in range(3))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder = home / "earlier-studies"
    folder.mkdir()
    ds.save_as(folder / "earlier.dcm")
    done = subprocess.run([sys.executable, "-m", "scoring", str(folder), "--settle-seconds", "0"], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"scoring the earlier study failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return case


def _photograph(base: str, password: str, out: Path, follow_up: int, url: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = _new_page(browser)
        page.goto(base)
        page.get_by_role("button", name="Sign in").wait_for()
        _shot(page, out / "sign-in.png")
        sign_in(page, "demo", password)
        page.get_by_role("button", name="Start reading").wait_for()
        _shot(page, out / "worklist.png")
        page.get_by_role("button", name="More filters").click()
        page.get_by_text("Model version").first.wait_for()
        _shot(page, out / "worklist-filters.png")
        page.keyboard.press("Escape")
        wait_until_idle(page)

        page.get_by_role("button", name="Start reading").click()
        heading = page.get_by_role("heading", name=CASE_HEADING)
        heading.wait_for()
        _shot(page, out / "case.png")
        case = _case_in_url(page)
        _photograph_reading(browser, page, base, out, case, url)
        page.get_by_role("button", name="Keys").click()
        page.get_by_text("S save and next").wait_for()
        _shot(page, out / "keys.png")
        page.keyboard.press("Escape")
        wait_until_idle(page)
        heading.click()  # the keys act once the page has the focus
        page.keyboard.press("o")
        page.get_by_text("A map shows what drove the score").first.wait_for()
        _shot(page, out / "case-overlay.png")
        page.keyboard.press("o")
        wait_until_idle(page)

        # a follow-up study with its prior beside it, opened from a link in a new window (sign-in keeps the URL)
        linked = _new_page(browser)
        linked.goto(f"{base}/case?image={follow_up}")
        sign_in(linked, "demo", password)
        linked.get_by_role("heading", name=CASE_HEADING).wait_for()
        wait_until_idle(linked, SETTLE_MS)
        linked.get_by_role("heading", name=CASE_HEADING).click()
        linked.keyboard.press("v")
        linked.get_by_text("prior · case").first.wait_for()
        _shot(linked, out / "case-prior.png")
        linked.close()
        page.get_by_test_id("stPageLink-NavLink").filter(has_text="Worklist").click()  # the sidebar is folded away
        page.get_by_role("button", name="Start reading").wait_for()

        for name, title in (("Flagged", "Flagged for retraining"), ("Models", "Models"), ("Overview", "Overview"),
                            ("Accounts", "Accounts")):
            page.get_by_role("link", name=name).click()  # a new page load would sign us out
            page.get_by_role("heading", name=title, exact=True).wait_for()
            _shot(page, out / f"{name.lower()}.png")

        # a reviewer who follows a link to Accounts (signing in keeps the URL)
        _shot_as_reader(browser, f"{base}/accounts", "Accounts are managed by admins", out / "accounts-reviewer.png")
        browser.close()
    print(f"screenshots in {out}")


def _photograph_reading(browser, page, base: str, out: Path, case: int, url: str) -> None:
    """The reading steps of the guide on ``case``, open in ``page``: another reader finds it held; a label that
    differs from the model's ticks the flag; read-first hides the model's output."""
    _shot_as_reader(browser, f"{base}/case?image={case}", "Read it anyway (second reading)", out / "held.png")

    heading = page.get_by_role("heading", name=CASE_HEADING)
    read_first = page.get_by_text("Read first", exact=True)
    read_first.click()
    page.get_by_text("Read-first mode: the model's output appears").wait_for()
    _shot(page, out / "read-first.png")
    read_first.click()
    page.get_by_text("Read-first mode: the model's output appears").wait_for(state="detached")
    wait_until_idle(page)

    labels, predicted = _labels_and_prediction(url, case)
    heading.click()
    page.keyboard.press(str(labels.index(next(label for label in labels if label != predicted)) + 1))
    page.get_by_text("Label: ").first.wait_for()
    _shot(page, out / "labelled.png")


def _labels_and_prediction(url: str, case: int) -> tuple[tuple[str, ...], str]:
    """The labels in the order of the case page's number keys, and the active version's predicted class."""
    from db.cases import case_detail
    from db.model_versions import active_version

    engine = create_database_engine(url)
    with read_session(engine) as session:
        detail = case_detail(session, case, active_version(session).id)
    engine.dispose()
    return detail.labels, detail.prediction.predicted_class


def _shot_as_reader(browser, url: str, shown: str, path: Path) -> None:
    """``url`` opened in a window of its own by the second reader (signing in keeps the URL), once ``shown`` is."""
    page = _new_page(browser)
    page.goto(url)
    sign_in(page, READER, READER_PASSWORD)
    page.get_by_text(shown).wait_for()
    _shot(page, path)
    page.close()


def _new_page(browser):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(90_000)
    return page


def _case_in_url(page) -> int:
    from urllib.parse import parse_qs, urlparse

    return int(parse_qs(urlparse(page.url).query)["image"][0])


def _shot(page, path: Path) -> None:
    wait_until_idle(page, SETTLE_MS)
    page.screenshot(path=path)


if __name__ == "__main__":
    sys.exit(main())
