"""Reviews: agreement with the model, the latest review per image, and the flagged cases (db.reviews)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from db import model_versions, results
from db.engine import read_session, write_session
from db.models import Prediction, Review, Reviewer
from db.results import FileStat
from db.reviews import add_review, flagged_cases, latest_reviews


@pytest.fixture
def scored(engine) -> dict[str, int]:
    """Two scored images (the model says 'normal'), an unscored one, and a reviewer."""
    with write_session(engine) as session:
        version = model_versions.register(session, sha256="a" * 64, path="/m.pt", architecture="resnet18",
                                          classes=["covid", "normal"], input_size=32, preprocessing_hash="p" * 64,
                                          temperature=1.0, name="v1")
        run_id = results.start_run(session, {}, version.id, pid=1).id
        ids: dict[str, int] = {"version": version.id}
        for n in range(3):
            ids[f"image{n}"] = results.upsert_image(
                session, sha256=str(n) * 64, stat=FileStat(f"/in/{n}.png", 1, 1),
                meta={"format": "png", "study_date": "20240201"}, in_scope=True, scope_reason="ok")
        for n in range(2):
            results.add_prediction(session, image_id=ids[f"image{n}"], model_version_id=version.id, run_id=run_id,
                                   probabilities={"covid": 0.1, "normal": 0.9}, predicted_class="normal",
                                   confidence=0.9, entropy=0.4)
        prediction_ids = dict(session.execute(select(Prediction.image_id, Prediction.id)).all())
        ids.update({f"prediction{n}": prediction_ids[ids[f"image{n}"]] for n in range(2)})
        reviewer = Reviewer(username="rad1", password_hash="x")
        session.add(reviewer)
        session.flush()
        ids["reviewer"] = reviewer.id
    return ids


def review(engine, ids, image: int, label: str, *, with_prediction: bool = True, **kwargs) -> Review:
    with write_session(engine) as session:
        return add_review(session, image_id=ids[f"image{image}"], reviewer_id=ids["reviewer"], label=label,
                          prediction_id=ids[f"prediction{image}"] if with_prediction else None, **kwargs)


def test_agreement_is_derived_from_the_prediction_reviewed(engine, scored):
    assert review(engine, scored, 0, "normal").agrees_with_model is True
    assert review(engine, scored, 0, "covid").agrees_with_model is False
    assert review(engine, scored, 2, "covid", with_prediction=False,
                  comment="").agrees_with_model is None  # no prediction: no agreement either way
    with read_session(engine) as session:
        assert session.scalars(select(Review.comment)).all() == [None, None, None]  # empty comments are None


def test_a_review_of_a_missing_prediction_is_refused(engine, scored):
    with pytest.raises(ValueError, match="prediction 999 does not exist"), write_session(engine) as session:
        add_review(session, image_id=scored["image0"], reviewer_id=scored["reviewer"], label="normal",
                   prediction_id=999)


def test_the_latest_review_of_each_image_supersedes_earlier_ones(engine, scored):
    review(engine, scored, 0, "normal")
    latest_of_0 = review(engine, scored, 0, "covid")
    only_of_1 = review(engine, scored, 1, "normal")
    with read_session(engine) as session:
        latest = latest_reviews()
        ids = session.scalars(select(latest.c.review_id).order_by(latest.c.review_id)).all()
    assert ids == [latest_of_0.id, only_of_1.id]


def test_flagged_cases_are_those_whose_latest_review_is_flagged(engine, scored):
    review(engine, scored, 0, "covid", flagged_for_retraining=True, comment="=1+1")
    review(engine, scored, 1, "covid", flagged_for_retraining=True)
    review(engine, scored, 1, "normal")  # superseded: no longer flagged
    review(engine, scored, 2, "covid", with_prediction=False, flagged_for_retraining=True)
    with read_session(engine) as session:
        cases = flagged_cases(session)
        later = flagged_cases(session, since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert [c.case_id for c in cases] == [scored["image0"], scored["image2"]] and later == []
    first, unscored = cases
    assert (first.reviewer_label, first.reviewer, first.comment, first.path) == ("covid", "rad1", "=1+1", "/in/0.png")
    assert (first.predicted_class, first.model_version, first.study_date) == ("normal", f"{scored['version']}:v1",
                                                                              dt.date(2024, 2, 1))
    assert first.probabilities == {"covid": 0.1, "normal": 0.9} and first.image_sha256 == "0" * 64
    assert (unscored.predicted_class, unscored.model_version, unscored.probabilities) == (None, None, {})
