"""The promotion gate (model_training.gate, db.evidence, `cxr-train promote` / `challenge`) on SQLite and
PostgreSQL: a challenger is promoted only on prospective cases that show it better; its own training data never
counts as its evidence; a refusal exits 3 with the comparison; an override is audited; a first promotion and a
rollback are not gated."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from sqlalchemy import select, update

from db import model_versions
from db.engine import read_session, write_session
from db.evidence import prospective_cases, trained_content
from db.models import Event, Image, ModelVersion, Prediction, Review, Reviewer, ReviewTrainingUse, utcnow
from model_training import cli, gate

CLASSES = ["covid", "normal", "pneumonia"]
NOW = utcnow()


def _version(session, name: str, *, created: dt.datetime) -> ModelVersion:
    version = model_versions.register(session, sha256=name.ljust(64, "0"), path=f"/models/{name}.pt",
                                      architecture="resnet18", classes=CLASSES, input_size=32,
                                      preprocessing_hash="0" * 64, temperature=1.0, name=name)
    session.execute(update(ModelVersion).where(ModelVersion.id == version.id).values(created_at=created))
    return version


def _probabilities(label: str, right: bool, rng) -> dict[str, float]:
    """A prediction that puts most weight on the label (right) or on another class (wrong)."""
    target = label if right else CLASSES[(CLASSES.index(label) + 1) % 3]
    weights = rng.uniform(0.05, 0.15, 3)
    weights[CLASSES.index(target)] = rng.uniform(0.6, 0.9)
    return dict(zip(CLASSES, (weights / weights.sum()).tolist(), strict=True))


def _cases(session, champion, challenger, n: int, *, champion_right: float, challenger_right: float,
           reviewed: dt.datetime, seed: int = 0, labels=("covid", "pneumonia")) -> list[int]:
    """``n`` images with both versions' predictions and a review at ``reviewed``; returns the review ids."""
    rng = np.random.default_rng(seed)
    reviewer = session.scalar(select(Reviewer.id)) or _reviewer(session)
    review_ids = []
    for i in range(n):
        label = labels[i % len(labels)]
        image = Image(sha256=f"{seed:08x}{i:056x}", path=f"/site/{seed}/{i}.png", size_bytes=1, mtime=0.0,
                      format="png", patient_pseudonym=f"P-{seed}-{i // 2}", first_seen_at=NOW)
        session.add(image)
        session.flush()
        for version, share_right in ((champion, champion_right), (challenger, challenger_right)):
            p = _probabilities(label, rng.random() < share_right, rng)
            top = max(p, key=p.get)
            session.add(Prediction(image_id=image.id, model_version_id=version.id, probabilities=p,
                                   predicted_class=top, confidence=p[top], entropy=0.5))
        review = Review(image_id=image.id, reviewer_id=reviewer, label=label, created_at=reviewed)
        session.add(review)
        session.flush()
        review_ids.append(review.id)
    return review_ids


def _reviewer(session) -> int:
    reviewer = Reviewer(username="reader", password_hash="!", role="reviewer")
    session.add(reviewer)
    session.flush()
    return reviewer.id


@pytest.fixture
def versions(engine):
    """v1 active since two days, v2 a challenger trained a day ago."""
    with write_session(engine) as session:
        v1 = _version(session, "v1", created=NOW - dt.timedelta(days=3))
        model_versions.promote(session, str(v1.id))
        v2 = _version(session, "v2", created=NOW - dt.timedelta(days=1))
        model_versions.set_challenger(session, str(v2.id), True)
        return v1.id, v2.id


def _promote(db_url, version_id, *extra) -> int:
    return cli.main(["promote", str(version_id), "--db", db_url, "--resamples", "200", *extra])


def _active(engine) -> int:
    with read_session(engine) as session:
        return model_versions.active_version(session).id


def test_a_better_challenger_passes_the_gate(engine, db_url, versions, capsys):
    v1, v2 = versions
    with write_session(engine) as session:
        _cases(session, session.get(ModelVersion, v1), session.get(ModelVersion, v2), 80,
               champion_right=0.5, challenger_right=0.95, reviewed=NOW)
    assert _promote(db_url, v2) == 0
    assert _active(engine) == v2
    assert "balanced_accuracy" in capsys.readouterr().out
    with read_session(engine) as session:
        promoted = session.get(ModelVersion, v2)
        assert not promoted.is_challenger and promoted.first_active_at is not None
        assert session.scalars(select(Event.kind)).all()[-1] == "promote"


def test_a_worse_challenger_is_refused_with_exit_3_and_the_comparison(engine, db_url, versions, capsys, caplog):
    v1, v2 = versions
    with write_session(engine) as session:
        _cases(session, session.get(ModelVersion, v1), session.get(ModelVersion, v2), 80,
               champion_right=0.9, challenger_right=0.6, reviewed=NOW)
    assert _promote(db_url, v2) == 3
    assert _active(engine) == v1
    printed = capsys.readouterr().out
    assert "prospective cases: 80 (covid 40, normal 0, pneumonia 40)" in printed and "balanced_accuracy" in printed
    assert "not promoted: its balanced accuracy is not shown better" in caplog.text


def test_too_few_cases_are_no_evidence_and_say_how_many_are_needed(engine, db_url, versions, caplog):
    v1, v2 = versions
    with write_session(engine) as session:
        _cases(session, session.get(ModelVersion, v1), session.get(ModelVersion, v2), 12,
               champion_right=0.5, challenger_right=1.0, reviewed=NOW)
    assert _promote(db_url, v2) == 3
    assert "12 prospective reviewed case(s)" in caplog.text and f"at least {gate.MIN_CASES}" in caplog.text


def test_the_challengers_training_data_and_earlier_readings_never_count(engine, versions):
    v1, v2 = versions
    with write_session(engine) as session:
        champion, challenger = session.get(ModelVersion, v1), session.get(ModelVersion, v2)
        counted = _cases(session, champion, challenger, 40, champion_right=0.5, challenger_right=0.5, reviewed=NOW)
        # readings older than the challenger: it may have learnt from them
        _cases(session, champion, challenger, 10, champion_right=0.5, challenger_right=1.0, seed=1,
               reviewed=NOW - dt.timedelta(days=2))
        # a review that went into its training, its image read again since
        used = _cases(session, champion, challenger, 5, champion_right=0.5, challenger_right=1.0, seed=2,
                      reviewed=NOW - dt.timedelta(days=2))
        for review_id in used:
            session.add(ReviewTrainingUse(review_id=review_id, model_version_id=v2))
            image_id = session.get(Review, review_id).image_id
            session.add(Review(image_id=image_id, reviewer_id=session.get(Review, review_id).reviewer_id,
                               label=session.get(Review, review_id).label, created_at=NOW))
        # images it was trained on, read after it
        trained = _cases(session, champion, challenger, 5, champion_right=0.5, challenger_right=1.0, seed=3,
                         reviewed=NOW)
        model_versions.record_training_images(
            session, v2, [session.get(Image, session.get(Review, r).image_id).sha256 for r in trained])
    with read_session(engine) as session:
        cases = prospective_cases(session, session.get(ModelVersion, v1), session.get(ModelVersion, v2))
    assert sorted(case.review_id for case in cases) == counted


def _image_of(session, review_id: int) -> Image:
    return session.get(Image, session.get(Review, review_id).image_id)


def test_a_follow_up_film_of_a_patient_either_version_trained_on_never_counts(engine, versions):
    v1, v2 = versions
    with write_session(engine) as session:
        champion, challenger = session.get(ModelVersion, v1), session.get(ModelVersion, v2)
        # ten films read after the challenger, two per patient (P-4-0 .. P-4-4)
        reviews = _cases(session, champion, challenger, 10, champion_right=0.5, challenger_right=0.5, seed=4,
                         reviewed=NOW)
        images = [_image_of(session, r) for r in reviews]
        # the challenger trained on the first film of P-4-0 and P-4-1, the champion on that of P-4-2: films of
        # other content, read before the challenger existed (never evidence themselves)
        for version, patient in ((v2, "P-4-0"), (v2, "P-4-1"), (v1, "P-4-2")):
            earlier = Image(sha256=patient.ljust(64, "e"), path=f"/site/{patient}-earlier.dcm", size_bytes=1,
                            mtime=0.0, format="dicom", patient_pseudonym=patient, first_seen_at=NOW)
            session.add(earlier)
            session.flush()
            model_versions.record_training_images(session, version, [earlier.sha256])
        # films without a patient id cannot be matched by patient: they count, each as its own patient
        for image in images[8:]:
            image.patient_pseudonym = None
        counted = reviews[6:]
    with read_session(engine) as session:
        cases = prospective_cases(session, session.get(ModelVersion, v1), session.get(ModelVersion, v2))
        comparison = gate.compare(session, session.get(ModelVersion, v1), session.get(ModelVersion, v2),
                                  resamples=10)
    assert sorted(case.review_id for case in cases) == counted
    assert [case.patient for case in cases] == ["P-4-3", "P-4-3", None, None]
    assert (comparison.cases, comparison.patients, comparison.without_patient_id) == (4, 3, 2)
    assert "3 patients (2 case(s) without a patient id, each its own patient)" in gate.comparison_text(comparison)


def test_the_content_a_version_must_not_be_fitted_on_includes_its_patients_other_films(engine, versions):
    v1, v2 = versions
    with write_session(engine) as session:
        champion, challenger = session.get(ModelVersion, v1), session.get(ModelVersion, v2)
        reviews = _cases(session, champion, challenger, 6, champion_right=0.5, challenger_right=0.5, seed=5,
                         reviewed=NOW)
        images = [_image_of(session, r) for r in reviews]  # patients P-5-0, P-5-0, P-5-1, P-5-1, P-5-2, P-5-2
        images[2].patient_pseudonym = images[3].patient_pseudonym = None  # P-5-1's films as PNGs: no patient id
        model_versions.record_training_images(session, v2, [images[0].sha256, images[2].sha256, "f" * 64])
        shas = [image.sha256 for image in images]
    with read_session(engine) as session:
        assert trained_content(session, v2) == {shas[0], shas[1], shas[2], "f" * 64}
        assert trained_content(session, v1) == set()


def _normal_films(session, champion, challenger, films: int, *, patients: int) -> None:
    """``films`` normal films of ``patients`` patients, read now: the challenger right on every one, the champion
    wrong on every one."""
    reviewer = session.scalar(select(Reviewer.id))
    for i in range(films):
        image = Image(sha256=f"{9:08x}{i:056x}", path=f"/site/normal/{i}.dcm", size_bytes=1, mtime=0.0,
                      format="dicom", patient_pseudonym=f"N-{i % patients}", first_seen_at=NOW)
        session.add(image)
        session.flush()
        for version, p in ((champion, {"covid": 0.8, "normal": 0.1, "pneumonia": 0.1}),
                           (challenger, {"covid": 0.1, "normal": 0.8, "pneumonia": 0.1})):
            top = max(p, key=p.get)
            session.add(Prediction(image_id=image.id, model_version_id=version.id, probabilities=p,
                                   predicted_class=top, confidence=p[top], entropy=0.5))
        session.add(Review(image_id=image.id, reviewer_id=reviewer, label="normal", created_at=NOW))


@pytest.mark.parametrize(("films", "patients"), [(1, 1), (4, 4), (9, 9), (12, 2)])
def test_a_class_of_too_few_patients_cannot_carry_a_worse_challenger_through(engine, versions, films, patients):
    v1, v2 = versions
    with write_session(engine) as session:
        champion, challenger = session.get(ModelVersion, v1), session.get(ModelVersion, v2)
        # worse on covid and pneumonia (40 patients of each), better on the few normal films
        _cases(session, champion, challenger, 80, champion_right=0.9, challenger_right=0.75, reviewed=NOW)
        _normal_films(session, champion, challenger, films, patients=patients)
    with read_session(engine) as session:
        decision = gate.decide(session, session.get(ModelVersion, v2), resamples=300)
    comparison = decision.comparison
    assert not decision.allowed
    assert comparison.judged == ("covid", "pneumonia") and comparison.left_out == {"normal": patients}
    assert f"(normal {patients} patient(s) left out: fewer than {gate.MIN_PER_CLASS} patients" in decision.reason
    assert "left out of balanced accuracy and macro-AUROC: normal" in gate.comparison_text(comparison)
    recall = comparison.difference["recall_normal"]
    assert recall.estimate == 1.0 and recall.low is None  # one film's +1 is not a precise figure
    assert "(too few patients for an interval)" in {row["metric"]: row for row in gate.comparison_rows(comparison)}[
        "recall_normal"]["challenger − active (95 % CI)"]


def test_fewer_than_two_classes_with_enough_patients_hold_the_challenger(engine, versions):
    v1, v2 = versions
    with write_session(engine) as session:
        champion, challenger = session.get(ModelVersion, v1), session.get(ModelVersion, v2)
        _cases(session, champion, challenger, 30, champion_right=0.5, challenger_right=1.0, reviewed=NOW,
               labels=("covid",))
        _normal_films(session, champion, challenger, 20, patients=9)
    with read_session(engine) as session:
        decision = gate.decide(session, session.get(ModelVersion, v2), resamples=50)
    assert not decision.allowed and decision.comparison.difference == {}
    assert "fewer than 10 patients of every class but one (patients: covid 15, normal 9, pneumonia 0)" in \
        decision.reason


def test_an_override_promotes_and_is_audited(engine, db_url, versions):
    v1, v2 = versions
    assert _promote(db_url, v2, "--override-reason", "vendor update, validated offline on 400 films") == 0
    assert _active(engine) == v2
    with read_session(engine) as session:
        override = session.scalars(select(Event).where(Event.kind == "promote_override")).one()
    assert override.details["reason"] == "vendor update, validated offline on 400 films"
    assert "0 prospective reviewed case(s)" in override.details["gate_reason"]


def test_a_rollback_and_a_first_promotion_are_not_gated(engine, db_url, versions):
    v1, v2 = versions
    assert _promote(db_url, v2, "--override-reason", "trial") == 0
    assert _promote(db_url, v1) == 0  # back to the version that was active before: no evidence needed
    assert _active(engine) == v1
    with write_session(engine) as session:
        session.execute(update(ModelVersion).values(is_active=False))
        fresh = _version(session, "v3", created=NOW)
    assert _promote(db_url, fresh.id) == 0  # nothing active: the first promotion


def test_a_real_model_replaces_the_synthetic_demo_model_ungated_but_not_the_other_way(engine, db_url, versions):
    v1, v2 = versions
    with write_session(engine) as session:
        session.execute(update(ModelVersion).where(ModelVersion.id == v1).values(is_synthetic=True))
        demo_v2 = _version(session, "demo-v2", created=NOW)
        demo_v2.is_synthetic = True
    assert _promote(db_url, demo_v2.id) == 3  # one demo model after another: gated as always
    assert _promote(db_url, v2) == 0  # the first model trained on films: nothing to compare it with
    assert _active(engine) == v2
    with write_session(engine) as session:
        demo_v3 = _version(session, "demo-v3", created=NOW)
        demo_v3.is_synthetic = True
    assert _promote(db_url, demo_v3.id) == 3  # a demo model never replaces a real one without evidence


def test_a_challenger_is_marked_by_cxr_train_challenge_and_audited(engine, db_url, versions):
    v1, v2 = versions
    assert cli.main(["challenge", str(v2), "--stop", "--db", db_url]) == 0
    assert cli.main(["challenge", str(v1), "--db", db_url]) == 2  # the active version cannot challenge itself
    with read_session(engine) as session:
        assert model_versions.challengers(session) == []
        assert session.scalars(select(Event.kind)).all() == ["challenge"]


def test_more_cases_needed_grows_as_the_difference_shrinks():
    from model_training.metrics import Interval

    def comparison(estimate, low, high):
        return gate.Comparison(1, 2, ("a", "b"), 100, {"a": 50, "b": 50}, 60,
                               difference={"balanced_accuracy": Interval(estimate, low, high, 0.95, 1000)})

    assert comparison(0.10, 0.02, 0.18).more_cases_needed == 0
    assert comparison(0.04, -0.04, 0.12).more_cases_needed == 300  # 100 x (0.08 / 0.04)^2 - 100
    assert comparison(0.02, -0.06, 0.10).more_cases_needed == 1500
    assert comparison(-0.03, -0.11, 0.05).more_cases_needed is None  # not ahead: more cases will not help
