"""``cxr-train recalibrate``: the fit of a temperature and per-class offsets, and a recalibrated version of a model
trained on real films, fitted on reviews of real adult films (cxr-adult), registered with its training data."""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from db import model_versions
from db.engine import create_database_engine, read_session, write_session
from db.models import Image, Prediction, Review, Reviewer, ReviewTrainingUse
from db.reviews import add_review
from model_training import cli, data, recalibrate, registration, train
from model_training.calibration import balanced_nll, fit_temperature_and_offsets, softmax
from model_training.evaluation import compare_checkpoints
from scoring import cli as scoring_cli
from scoring.model import checkpoint_sha256, load_checkpoint, save_checkpoint
from tests.model_training.conftest import tiny_config

REVIEWED_PER_CLASS = 14


def labelled_sample(seed: int, n: int, temperature: float, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from ``softmax(logits / temperature + offsets)``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, size=(n, len(offsets)))
    cumulative = np.cumsum(softmax(logits, temperature, offsets), axis=1)
    return logits, (rng.random(n)[:, None] > cumulative).sum(axis=1)


def test_the_fit_gives_back_the_temperature_and_the_offsets_less_the_log_class_shares():
    offsets = np.array([0.8, -0.5, -0.3])
    logits, labels = labelled_sample(0, 100_000, 2.0, offsets)
    fit = fit_temperature_and_offsets(logits, labels)
    # class-balanced: the fit removes the labels' own class mix, log(share), and keeps the rest
    expected = offsets - np.log(np.bincount(labels) / len(labels))
    assert fit.temperature == pytest.approx(2.0, abs=0.05)
    assert fit.offsets == pytest.approx(expected - expected.mean(), abs=0.03)
    assert fit.fitted == (0, 1, 2) and sum(fit.cases) == len(labels) and not fit.at_bound
    best = balanced_nll(logits, labels, fit.temperature, fit.offsets)
    for temperature, shift in ((fit.temperature * 1.05, 0.0), (fit.temperature / 1.05, 0.0),
                               (fit.temperature, 0.05), (fit.temperature, -0.05)):
        assert best < balanced_nll(logits, labels, temperature, fit.offsets + np.array([shift, 0.0, 0.0]))


def test_a_class_left_out_of_the_fit_keeps_offset_zero_and_its_rows_are_not_used():
    logits, labels = labelled_sample(1, 100_000, 1.5, np.array([0.4, 0.0, -0.4]))
    fit = fit_temperature_and_offsets(logits, labels, classes=[0, 2])
    assert fit.offsets[1] == 0 and fit.offsets[0] == pytest.approx(-fit.offsets[2])
    assert fit.cases == (int((labels == 0).sum()), int((labels == 2).sum()))
    shares = np.log([(labels == 0).mean(), (labels == 2).mean()])
    assert fit.offsets[0] - fit.offsets[2] == pytest.approx(0.8 - (shares[0] - shares[1]), abs=0.05)
    assert fit.temperature == pytest.approx(1.5, abs=0.05)
    with pytest.raises(ValueError, match="at least two"):
        fit_temperature_and_offsets(logits, labels, classes=[1])


# --- a site: a model trained on cxr-dev, reviews of cxr-adult films --------------------------------------------

@dataclass
class Site:
    url: str
    v1: train.TrainResult  # the checkpoint and version that recalibrate starts from
    reviewed: list[data.LabelledImage]  # reviewed with their true label (a covid, a pneumonia, the normal)
    other: Path  # reviewed as "other": never used
    held_out: list[data.LabelledImage]  # covid and pneumonia films of other patients, never reviewed


@pytest.fixture(scope="module")
def site(tmp_path_factory, small_set, cxr_adult) -> Site:
    root = tmp_path_factory.mktemp("site")
    url = f"sqlite:///{root / 'cxr.db'}"
    v1 = parent_version(train.train(tiny_config(small_set, root / "run", url, epochs=2)), small_set, root / "v1", url)
    items = data.with_hashes(data.load_labelled(cxr_adult))
    patients = defaultdict(list)
    for item in items:
        patients[item.group].append(item)
    reviewed, held_out = [], []
    for group in sorted(patients, key=lambda g: patients[g][0].sha256):  # a fixed order of patients
        films = patients[group]
        label = films[0].label
        if label == "normal" or sum(i.label == label for i in reviewed) < REVIEWED_PER_CLASS:
            reviewed += films
        else:
            held_out += films
    other = next(i for i in held_out if i.label == "covid")
    held_out = [i for i in held_out if i.patient_id != other.patient_id]
    folder = root / "films"
    folder.mkdir()
    for item in [*reviewed, other]:
        shutil.copy2(item.path, folder)
    assert scoring_cli.main(["--db", url, "--model", str(v1.checkpoint), "--settle-seconds", "0", "--workers", "0",
                             str(folder)]) == 0
    truth = {Path(i.path).name: i.label for i in reviewed} | {Path(other.path).name: "other"}
    engine = create_database_engine(url)
    with write_session(engine) as session:
        reviewer = Reviewer(username="rad", password_hash="x")
        session.add(reviewer)
        session.flush()
        for image in session.scalars(select(Image)):
            add_review(session, image_id=image.id, reviewer_id=reviewer.id, label=truth[Path(image.path).name])
    engine.dispose()
    return Site(url, v1, reviewed, Path(other.path), held_out)


def parent_version(run: train.TrainResult, small_set: Path, out: Path, url: str) -> train.TrainResult:
    """The run's weights with temperature 1, registered as train registers a version. The tiny run's own temperature
    is at the fit's bound (0.05: its six validation films per class are separable), and at 0.05 the parent's
    float64 probabilities round p_covid / (p_covid + p_pneumonia) to 1 for many adult films: ties that its logits
    do not have, which would make the parent's measured pairwise AUROC differ from its ranking."""
    checkpoint = load_checkpoint(run.checkpoint)
    checkpoint.temperature = 1.0
    checkpoint.training["name"] = "v1"
    path = save_checkpoint(out / "model.pt", checkpoint)
    version_id = registration.register(url, path, checkpoint, data.with_hashes(data.load_labelled(small_set)))
    return train.TrainResult(path, version_id, run.metrics)


@pytest.fixture(scope="module")
def recalibrated(site, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recalibrated") / "v1-site"
    assert cli.main(["recalibrate", "--from", str(site.v1.model_version_id), "--out", str(out), "--db", site.url,
                     "--workers", "0"]) == 0
    return out


def test_every_pairwise_ranking_is_the_parents_exactly_while_the_decision_changes(site, recalibrated, small_set):
    v1, v2 = site.v1.checkpoint, recalibrated / "model.pt"
    adult = compare_checkpoints(v1, v2, site.held_out, device="cpu", workers=0, n_resamples=20)
    assert adult["model"]["n"] == len(site.held_out) > 100
    pair = "auroc_covid_vs_pneumonia"
    assert adult["compare"]["intervals"][pair]["estimate"] == adult["model"]["intervals"][pair]["estimate"]
    assert adult["difference"][pair]["estimate"] == 0
    assert adult["compare"]["balanced_accuracy"] != adult["model"]["balanced_accuracy"]
    dev = compare_checkpoints(v1, v2, data.load_labelled(small_set), device="cpu", workers=0, n_resamples=20)
    pairs = [key for key in dev["model"]["intervals"] if "_vs_" in key]
    assert len(pairs) == 3
    for key in pairs:
        assert dev["compare"]["intervals"][key]["estimate"] == dev["model"]["intervals"][key]["estimate"], key


def test_the_new_version_has_the_weights_a_fitted_calibration_and_a_card(site, recalibrated):
    parent, child = load_checkpoint(site.v1.checkpoint), load_checkpoint(recalibrated / "model.pt")
    assert all(torch.equal(parent.state_dict[k], child.state_dict[k]) for k in parent.state_dict)
    assert child.preprocessing.hash == parent.preprocessing.hash and child.classes == parent.classes
    assert child.temperature != parent.temperature and any(b != 0 for b in child.logit_offsets)
    assert child.logit_offsets[child.classes.index("normal")] == 0  # one reviewed normal: not fitted
    card = json.loads((recalibrated / "model_card.json").read_text())
    fitted = card["metrics"]["recalibration"]
    assert fitted["cases_per_class"] == {c: n for c, n in Counter(i.label for i in site.reviewed).items()
                                         if c != "normal"}
    assert min(fitted["cases_per_class"].values()) >= REVIEWED_PER_CLASS
    assert fitted["classes_not_fitted"] == {"normal": 1} and fitted["parent"]["sha256"] == checkpoint_sha256(
        site.v1.checkpoint)
    text = (recalibrated / "model_card.md").read_text()
    assert "## Recalibration" in text and "class-balanced" in text


def test_the_new_version_is_registered_with_the_parents_training_data_and_the_fitted_cases(site, recalibrated,
                                                                                           small_set):
    engine = create_database_engine(site.url)
    with read_session(engine) as session:
        child = model_versions.find_by_sha(session, checkpoint_sha256(recalibrated / "model.pt"))
        assert child is not None and not child.is_active and child.id != site.v1.model_version_id
        parent_images = model_versions.training_image_shas(session, site.v1.model_version_id)
        child_images = model_versions.training_image_shas(session, child.id)
        used = set(session.scalars(select(Review.id).join(ReviewTrainingUse)
                                   .where(ReviewTrainingUse.model_version_id == child.id)))
        labels = {session.get(Review, review_id).label for review_id in used}
    fitted = {item.sha256 for item in site.reviewed if item.label != "normal"}
    assert parent_images == {item.sha256 for item in data.with_hashes(data.load_labelled(small_set))}
    assert child_images == parent_images | fitted
    assert len(used) == len(fitted) and labels == {"covid", "pneumonia"}


def test_a_retrained_version_records_its_reviewed_cases_as_training_data(site, tmp_path, small_set):
    result = train.train(tiny_config(small_set, tmp_path / "v2", site.url, epochs=1, include_reviews=True,
                                     from_active=False))
    with read_session(create_database_engine(site.url)) as session:
        recorded = model_versions.training_image_shas(session, result.model_version_id)
    dataset = {item.sha256 for item in data.with_hashes(data.load_labelled(small_set))}
    assert recorded == dataset | {item.sha256 for item in site.reviewed}  # not the film reviewed "other"
    assert data.with_hashes([data.LabelledImage(str(site.other), "covid")])[0].sha256 not in recorded


def test_too_few_reviewed_cases_is_one_line_and_exit_2(site, tmp_path, caplog):
    most = max(Counter(i.label for i in site.reviewed).values())
    code = cli.main(["recalibrate", "--from", str(site.v1.checkpoint), "--out", str(tmp_path / "x"), "--db",
                     site.url, "--workers", "0", "--min-cases", str(most + 1)])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "reviewed cases in each of two classes" in errors[0]
    assert not (tmp_path / "x" / "model.pt").exists()


def test_a_version_whose_file_changed_is_refused(site, tmp_path, caplog):
    copy = tmp_path / "v1.pt"
    shutil.copy2(site.v1.checkpoint, copy)
    with write_session(create_database_engine(site.url)) as session:
        version = model_versions.register_checkpoint(session, copy, load_checkpoint(copy), "e" * 64)
        ref = str(version.id)
    assert cli.main(["recalibrate", "--from", ref, "--out", str(tmp_path / "x"), "--db", site.url]) == 2
    assert "no longer holds the registered checkpoint" in caplog.text



def test_the_scorer_applies_the_recalibrated_offsets(site, recalibrated, tmp_path):
    """cxr-score with the recalibrated version stores softmax(logits / T + offsets), not the parent's numbers."""
    folder = tmp_path / "films"
    folder.mkdir()
    films = site.held_out[:6]
    for item in films:
        shutil.copy2(item.path, folder)
    child = load_checkpoint(recalibrated / "model.pt")
    assert scoring_cli.main(["--db", site.url, "--model", str(recalibrated / "model.pt"), "--settle-seconds", "0",
                             "--workers", "0", str(folder)]) == 0
    with read_session(create_database_engine(site.url)) as session:
        version = model_versions.find_by_sha(session, checkpoint_sha256(recalibrated / "model.pt"))
        stored = {image.sha256: prediction.probabilities for image, prediction in session.execute(
            select(Image, Prediction).join(Prediction).where(Prediction.model_version_id == version.id))}
    logits, _ = recalibrate.case_logits(child, films, recalibrate.RecalibrateConfig("x", "y", workers=0,
                                                                                    device="cpu"))
    expected = child.probabilities(torch.from_numpy(logits)).numpy()
    parents = softmax(logits, load_checkpoint(site.v1.checkpoint).temperature)
    assert len(stored) == len(films)
    for item, want, parent in zip(films, expected, parents, strict=True):
        got = np.array([stored[item.sha256][c] for c in child.classes])
        assert got == pytest.approx(want, abs=1e-3)
        assert not np.allclose(got, parent, atol=1e-3)


def test_a_recalibrated_version_is_recalibrated_from_its_weights_origin(site, recalibrated, tmp_path):
    """Its own fitted cases are fitted again (a recalibration replaces the calibration whole); only what the weights
    learnt from stays out."""
    with read_session(create_database_engine(site.url)) as session:
        child = model_versions.find_by_sha(session, checkpoint_sha256(recalibrated / "model.pt")).id
    out = tmp_path / "again"
    assert cli.main(["recalibrate", "--from", str(child), "--out", str(out), "--db", site.url, "--workers", "0"]) == 0
    first = json.loads((recalibrated / "model_card.json").read_text())["metrics"]["recalibration"]
    again = json.loads((out / "model_card.json").read_text())["metrics"]["recalibration"]
    assert again["cases_per_class"] == first["cases_per_class"]
    assert again["parent"]["model_version_id"] == child
    assert again["weights_from"] == first["weights_from"] == {
        "sha256": checkpoint_sha256(site.v1.checkpoint), "model_version_id": site.v1.model_version_id, "name": "v1"}
    assert load_checkpoint(out / "model.pt").logit_offsets == pytest.approx(
        load_checkpoint(recalibrated / "model.pt").logit_offsets, abs=1e-6)  # the same cases, the same fit
