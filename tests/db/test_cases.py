"""One case (db.cases), agreement with reviewers (db.agreement) and the overview's figures (db.overview)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from db import agreement, cases, overview, results, synthetic
from db.engine import read_session, write_session
from db.models import Image, Prediction, Review, Reviewer, ScoringFailure
from db.results import FileStat
from db.reviews import add_review


def test_a_case_has_every_versions_prediction_and_its_history(engine):
    with write_session(engine) as session:
        fill = synthetic.fill(session, images=5, reviews=2, seed=1)
        other = synthetic.fill(session, images=1, reviews=0, seed=2, active=False)
        image = fill.image_ids[0]
        session.add(Prediction(image_id=image, model_version_id=other.model_version_id, probabilities={"covid": 1.0},
                               predicted_class="covid", confidence=1.0, entropy=0.0))
        add_review(session, image_id=image, reviewer_id=fill.reviewer_ids[1], label="other", comment="second look",
                   mode="read_first", overlay_shown=True, seconds_spent=12.5)
    with read_session(engine) as session:
        detail = cases.case_detail(session, image, fill.model_version_id)
        assert cases.case_detail(session, 10_000, None) is None
    assert detail.prediction.model_version_id == fill.model_version_id
    assert [p.model_version_id for p in detail.other_predictions] == [other.model_version_id]
    assert detail.labels == ("covid", "normal", "pneumonia", "other", "ungradable")
    assert [(r.label, r.mode, r.overlay_shown, r.seconds_spent) for r in detail.reviews][-1] == (
        "other", "read_first", True, 12.5)
    assert detail.is_synthetic
    shown = detail.image.shown_metadata()
    assert "Format" in shown and not any("pseudonym" in key.lower() or "uid" in key.lower() for key in shown)


def test_demo_images_are_marked_synthetic(isolated_home):
    assert cases.is_demo_image("/anywhere/x.dcm", cases.DEMO_MANUFACTURER)
    assert cases.is_demo_image(str(isolated_home / "demo" / "images" / "x.png"), None)
    assert not cases.is_demo_image("/data/xray/x.png", "ACME")


def test_demo_manufacturer_is_what_the_demo_cohort_writes():
    from model_training.demo_cohort import MANUFACTURER

    assert cases.DEMO_MANUFACTURER == MANUFACTURER


def test_agreement_counts_the_latest_review_of_each_case(engine):
    with write_session(engine) as session:
        fill = synthetic.fill(session, images=30, reviews=20, seed=4)
    with read_session(engine) as session:
        result = agreement.version_agreement(session, fill.model_version_id)
        latest = {}
        for r in session.scalars(select(Review).order_by(Review.created_at, Review.id)):
            latest[r.image_id] = r
        predicted = dict(session.execute(select(Prediction.image_id, Prediction.predicted_class)).all())
        daily = agreement.agreement_by_day(session, fill.model_version_id, days=30)
    assert result.reviewed == len(latest) == 20
    assert result.agreed == sum(r.label == predicted[i] for i, r in latest.items())
    for name in result.classes:
        calls = [i for i, r in latest.items() if predicted[i] == name and r.label in result.classes]
        if calls:
            hits = sum(latest[i].label == name for i in calls)
            assert next(c for c in result.per_class if c.name == name).precision == hits / len(calls)
    assert sum(d.reviewed for d in daily) == 20 and all(isinstance(d.day, dt.date) for d in daily)


def test_overview_counts_and_series(engine):
    with write_session(engine) as session:
        fill = synthetic.fill(session, images=40, reviews=10, seed=5)
        run = results.start_run(session, {}, fill.model_version_id, pid=1)
        results.add_failure(session, run.id, FileStat("/broken.dcm", 1, 1), "corrupt", "bad")
    with read_session(engine) as session:
        counts = overview.counts(session, fill.model_version_id)
        volume = overview.daily_volume(session, fill.model_version_id)
        mix = overview.class_mix(session, fill.model_version_id)
        bins = overview.confidence_histogram(session, fill.model_version_id)
        runs = overview.recent_runs(session)
        confidences = session.scalars(select(Prediction.confidence)).all()
        assert session.scalar(select(ScoringFailure.path)) == "/broken.dcm"
    assert (counts.scored, counts.awaiting_review, counts.reviewed, counts.failed_files) == (40, 30, 10, 1)
    assert sum(d.count for d in volume) == sum(mix.values()) == sum(b.count for b in bins) == 40
    for b in bins:
        assert b.count == sum(1 for c in confidences if b.low <= c < b.low + 1 / overview.CONFIDENCE_BINS
                              or (b.low == 0.95 and c == 1.0)) or b.predicted_class
    assert len(runs) == 2


def test_a_runs_failures_are_counted_by_reason_and_listed_in_order(engine):
    with write_session(engine) as session:
        fill = synthetic.fill(session, images=2, reviews=0, seed=4)
        clean = results.start_run(session, {}, fill.model_version_id, pid=1)
        first = results.start_run(session, {}, fill.model_version_id, pid=2)
        first.started_at = clean.started_at + dt.timedelta(minutes=1)
        second = results.start_run(session, {}, fill.model_version_id, pid=3)
        second.started_at = clean.started_at + dt.timedelta(minutes=2)
        for name, reason in (("a.dcm", "truncated"), ("b.png", "corrupt"), ("c.dcm", "truncated")):
            results.add_failure(session, second.id, FileStat(f"/in/{name}", 1, 1), reason,
                                f"/in/{name}: what is wrong with {name}")
        results.add_failure(session, first.id, FileStat("/in/d.dcm", 1, 1), "timeout", "no file name first")
    with read_session(engine) as session:
        runs = overview.runs_with_failures(session)
        failures = overview.failures_by_reason(session, second.id)
        cut = overview.failures_by_reason(session, second.id, shown=2)
        earlier = overview.failures_by_reason(session, first.id)
    assert [(r.run_id, r.failures) for r in runs] == [(second.id, 3), (first.id, 1)]  # the clean run is not there
    assert failures.by_reason == {"truncated": 2, "corrupt": 1} and list(failures.by_reason) == ["truncated", "corrupt"]
    assert [(f.reason, f.path, f.detail) for f in failures.files] == [
        ("truncated", "/in/a.dcm", "what is wrong with a.dcm"), ("corrupt", "/in/b.png", "what is wrong with b.png"),
        ("truncated", "/in/c.dcm", "what is wrong with c.dcm")]
    assert [f.path for f in cut.files] == ["/in/a.dcm", "/in/b.png"] and cut.by_reason == failures.by_reason
    assert earlier.files[0].detail == "no file name first"


@pytest.mark.parametrize(("paths", "folder", "names"), [
    (["/data/incoming/2026/a.dcm", "/data/incoming/2026/b.png"], "/data/incoming/2026", ["a.dcm", "b.png"]),
    (["/data/incoming/x/a.dcm", "/data/incoming/y/b.dcm"], "/data/incoming", ["x/a.dcm", "y/b.dcm"]),
    (["/data/in/a.dcm", "/data/incoming/b.dcm"], "/data", ["in/a.dcm", "incoming/b.dcm"]),  # folders, not prefixes
    (["/data/a.dcm", "/other/b.dcm"], "", ["/data/a.dcm", "/other/b.dcm"]),  # only the root in common
    (["/a.dcm"], "", ["/a.dcm"]),
    (["relative/a.dcm"], "", ["relative/a.dcm"]),
    ([], "", []),
])
def test_failed_files_are_named_from_the_folder_they_share(paths, folder, names):
    failures = overview.RunFailures(1, {}, [overview.FailedFile("corrupt", path, "what is wrong") for path in paths])
    assert failures.folder == folder
    assert [failures.name_in_folder(f) for f in failures.files] == names


def test_prior_studies_are_the_same_patients_other_images_newest_first(engine):
    with write_session(engine) as session:
        fill = synthetic.fill(session, images=5, reviews=0, seed=3)
        current, older, newest, undated, stranger = (session.get(Image, i) for i in fill.image_ids)
        for image, date in ((current, dt.date(2025, 3, 5)), (older, dt.date(2023, 1, 2)),
                            (newest, dt.date(2025, 3, 6)), (undated, None)):
            image.patient_pseudonym, image.study_date = "P-same", date
        stranger.patient_pseudonym = "P-other"
        add_review(session, image_id=older.id, reviewer_id=fill.reviewer_ids[0], label="normal")
        add_review(session, image_id=older.id, reviewer_id=fill.reviewer_ids[1], label="covid")
        ids = current.id, older.id, newest.id, undated.id, stranger.id
        reviewers = {r.id: r.display_name or r.username for r in session.scalars(select(Reviewer))}
    with read_session(engine) as session:
        priors = cases.prior_studies(session, ids[0], fill.model_version_id)
        alone = cases.prior_studies(session, ids[4], fill.model_version_id)
        other_version = cases.prior_studies(session, ids[0], fill.model_version_id + 1)
    assert [p.image_id for p in priors] == [ids[2], ids[1], ids[3]]  # dated newest first, undated last
    assert [p.study_date for p in priors] == [dt.date(2025, 3, 6), dt.date(2023, 1, 2), None]
    assert (priors[1].latest_label, priors[1].latest_reader) == ("covid", reviewers[fill.reviewer_ids[1]])
    assert priors[0].latest_label is None and priors[0].predicted_class is not None
    assert alone == []  # another patient's images are never priors
    assert all(p.predicted_class is None for p in other_version)  # the asked version's output only
    assert not any(hasattr(p, name) for p in priors for name in ("path", "patient_pseudonym", "file_name"))
