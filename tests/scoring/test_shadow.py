"""Challengers scored in the shadow of the active version (issue 20): every image the run decodes is decoded once,
each version's predictions are stored in the same batch transaction, the active version's are those it gives
alone, a challenger that cannot be loaded or fails on an image never stops the active version, a kill -9 loses
and duplicates nothing for any version, and the Overview counts what each challenger scored."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select

from db import migrate, model_versions, overview, results
from db.engine import create_database_engine, read_session, write_session
from db.models import Image, Prediction, ScoringFailure, ScoringRun
from scoring import cli, decoding, imaging, pipeline
from scoring.model import (
    Checkpoint,
    Preprocessing,
    build_model,
    calibrated_probabilities,
    checkpoint_sha256,
    load_checkpoint,
    save_checkpoint,
)

CLASSES = ["covid", "normal", "pneumonia"]
N_PNGS = 10
OUT_OF_SCOPE = "MR2_UNCR.dcm"


def make_checkpoint(path: Path, seed: int, size: int = 32, classes: list[str] = CLASSES) -> Path:
    torch.manual_seed(seed)
    model = build_model("resnet18", len(classes))
    return save_checkpoint(path, Checkpoint("resnet18", classes, Preprocessing(size), model.state_dict(),
                                            temperature=1.1, training={"name": f"challenger-{seed}-{size}"}))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Challengers of the tiny checkpoint: another seed; another seed at another input size (a second
    preprocessing); other classes."""
    folder = tmp_path_factory.mktemp("challengers")
    return {"challenger": make_checkpoint(folder / "challenger.pt", seed=1),
            "wide": make_checkpoint(folder / "wide.pt", seed=2, size=64),
            "other_classes": make_checkpoint(folder / "other.pt", seed=3, classes=["a", "b", "c"])}


@pytest.fixture
def corpus(tmp_path, cxr_dev, pydicom_data) -> Path:
    root = tmp_path / "incoming"
    root.mkdir()
    for png in sorted(cxr_dev.glob("*/*.png"))[:N_PNGS]:
        shutil.copy2(png, root / png.name)
    shutil.copy2(pydicom_data(OUT_OF_SCOPE), root / OUT_OF_SCOPE)
    (root / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(autouse=True)
def model_threads_restored():
    """The runs below ask for one model thread (identical numbers run to run); later tests get theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def decodes(tmp_path, monkeypatch):
    """The files the scorer decodes, counted in its DataLoader workers too (forked, they inherit the patch):
    one line per read, appended to a file; returns a function giving Counter(path) and the min_sides used."""
    record = tmp_path / "decodes.txt"
    real = imaging.read_xray

    def counting(path, **kwargs):
        with open(record, "a") as handle:
            handle.write(f"{kwargs.get('min_side')}\t{os.fsdecode(path)}\n")
        return real(path, **kwargs)

    monkeypatch.setattr(imaging, "read_xray", counting)

    def read() -> tuple[Counter, set[str]]:
        lines = record.read_text().splitlines() if record.exists() else []
        record.unlink(missing_ok=True)
        return Counter(line.split("\t", 1)[1] for line in lines), {line.split("\t", 1)[0] for line in lines}

    return read


def register(db_url: str, active: Path, *challengers: Path) -> tuple[int, list[int]]:
    """The active version and its challengers registered, as `cxr-train promote` and `challenge` leave them."""
    engine = create_database_engine(db_url)
    migrate.upgrade(engine)
    with write_session(engine) as session:
        ids = [model_versions.register_checkpoint(session, path, load_checkpoint(path), checkpoint_sha256(path)).id
               for path in (active, *challengers)]
        model_versions.promote(session, str(ids[0]))
        for version_id in ids[1:]:
            model_versions.set_challenger(session, str(version_id), True)
    engine.dispose()
    return ids[0], ids[1:]


def score(capsys, db_url: str, folder: Path, *extra: str) -> tuple[int, dict]:
    code = cli.main(["--db", db_url, "--json", "--settle-seconds", "0", "--batch-size", "4", "--workers", "1",
                     "--threads", "1", *extra, str(folder)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["exit_code"] == code
    return code, summary


def predictions(db_url: str) -> dict[int, dict[str, dict]]:
    """Per model version: the probabilities it stored, by image content."""
    engine = create_database_engine(db_url)
    found: dict[int, dict[str, dict]] = {}
    with read_session(engine) as session:
        for version_id, sha, probabilities in session.execute(
                select(Prediction.model_version_id, Image.sha256, Prediction.probabilities).join(Image)):
            found.setdefault(version_id, {})[sha] = probabilities
    engine.dispose()
    return found


def test_each_image_is_decoded_once_and_scored_by_every_version(capsys, db_url, tiny_checkpoint, checkpoints,
                                                                corpus, decodes, tmp_path, caplog):
    active_id, [challenger_id] = register(db_url, tiny_checkpoint, checkpoints["challenger"])
    code, summary = score(capsys, db_url, corpus)

    assert (code, summary["scored"], summary["out_of_scope"], summary["failed"]) == (1, N_PNGS, 1, 1)
    assert summary["model_version_id"] == active_id
    [shadow] = summary["challengers"]
    assert shadow == {"model_version_id": challenger_id, "unavailable": None, "scored": N_PNGS, "skipped": 0,
                      "failed": 0, "failure_reasons": {}, "seconds": shadow["seconds"]}
    assert shadow["seconds"] > 0 and summary["phase_seconds"]["model"][str(active_id)] > 0
    assert set(summary["phase_seconds"]["model"]) == {str(active_id), str(challenger_id)}
    decoded, sides = decodes()
    assert sorted(Path(p).name for p in decoded) == sorted(p.name for p in corpus.iterdir())
    assert set(decoded.values()) == {1} and sides == {"64"}  # once each, at the active version's side
    stored = predictions(db_url)
    assert set(stored) == {active_id, challenger_id} and stored[active_id].keys() == stored[challenger_id].keys()
    assert len(stored[active_id]) == N_PNGS and stored[active_id] != stored[challenger_id]
    assert f"also scored by challenger(s) {challenger_id} in the shadow" in caplog.text
    assert str(corpus) not in caplog.text

    # The active version's numbers are those it gives alone, the challenger's those it would give as the model.
    alone, as_model = f"sqlite:///{tmp_path / 'alone.db'}", f"sqlite:///{tmp_path / 'as-model.db'}"
    score(capsys, alone, corpus, "--model", str(tiny_checkpoint))
    score(capsys, as_model, corpus, "--model", str(checkpoints["challenger"]))
    assert [*predictions(alone).values()] == [stored[active_id]]
    assert [*predictions(as_model).values()] == [stored[challenger_id]]
    decodes()

    code, rerun = score(capsys, db_url, corpus)
    assert (code, rerun["scored"], rerun["skipped"], rerun["challengers"][0]["scored"]) == (0, 0, N_PNGS, 0)
    assert decodes()[0] == Counter()
    engine = create_database_engine(db_url)
    with read_session(engine) as session:
        runs = {row.id: row for row in overview.recent_runs(session)}
        by_run = Counter(session.execute(select(Prediction.run_id, Prediction.model_version_id)).all())
    engine.dispose()
    assert by_run == {(summary["run_id"], active_id): N_PNGS, (summary["run_id"], challenger_id): N_PNGS}
    assert runs[summary["run_id"]].shadow_scored == {challenger_id: N_PNGS}
    assert runs[rerun["run_id"]].shadow_scored == {challenger_id: 0}


@pytest.mark.parametrize("active_size, challenger_sizes, side", [
    (32, [], 64),  # alone: twice its input side
    (32, [32, 16], 64),  # challengers never lower the active version's decode
    (32, [64], 64),
    (224, [512], 512),  # nor is a challenger fed an enlarged image
])
def test_the_decode_side_is_the_active_version_s_unless_a_challenger_needs_more(active_size, challenger_sizes, side):
    def checkpoint(size: int) -> Checkpoint:
        return Checkpoint("resnet18", CLASSES, Preprocessing(size), {})

    assert decoding.decode_side(checkpoint(active_size), [checkpoint(s) for s in challenger_sizes]) == side


def test_a_challenger_with_another_input_size_shares_the_decode(capsys, sqlite_url, tiny_checkpoint, checkpoints,
                                                                corpus, decodes, tmp_path):
    active_id, [wide_id] = register(sqlite_url, tiny_checkpoint, checkpoints["wide"])
    code, summary = score(capsys, sqlite_url, corpus)
    assert (code, summary["scored"], summary["challengers"][0]["scored"]) == (1, N_PNGS, N_PNGS)
    decoded, sides = decodes()
    assert len(decoded) == N_PNGS + 2 and set(decoded.values()) == {1} and sides == {"64"}

    stored = predictions(sqlite_url)
    alone = f"sqlite:///{tmp_path / 'alone.db'}"
    score(capsys, alone, corpus, "--model", str(tiny_checkpoint))
    assert [*predictions(alone).values()] == [stored[active_id]]
    # the challenger's input is its own preprocessing (64 px) of the shared decode
    wide = load_checkpoint(checkpoints["wide"])
    png = sorted(corpus.glob("*.png"))[1]
    image = imaging.read_xray(png, min_side=64)
    with torch.inference_mode():
        expected = calibrated_probabilities(wide.build()(wide.preprocessing(image.pixels, image.stored_shape)[None]),
                                            wide.temperature)[0]
    engine = create_database_engine(sqlite_url)
    with read_session(engine) as session:
        sha = session.scalar(select(Image.sha256).where(Image.path == str(png)))
    engine.dispose()
    assert [stored[wide_id][sha][c] for c in CLASSES] == pytest.approx(expected.tolist(), abs=1e-5)


def missing(path: Path, checkpoints: dict[str, Path]) -> None:
    path.unlink()


def garbage(path: Path, checkpoints: dict[str, Path]) -> None:
    path.write_bytes(b"not a checkpoint" * 100)


def replaced(path: Path, checkpoints: dict[str, Path]) -> None:
    shutil.copyfile(checkpoints["wide"], path)  # a valid checkpoint, not the one registered


@pytest.mark.parametrize("source, spoil, reason", [
    ("challenger", missing, "checkpoint_missing"),
    ("challenger", garbage, "checkpoint_invalid"),
    ("challenger", replaced, "checkpoint_changed"),
    ("other_classes", None, "classes_differ"),
])
def test_a_challenger_that_cannot_be_loaded_is_left_out(capsys, sqlite_url, tiny_checkpoint, checkpoints, corpus,
                                                        tmp_path, caplog, source, spoil, reason):
    (corpus / "empty.png").unlink()  # no file fails: the exit code is 0, as without the broken challenger
    broken = tmp_path / "broken.pt"
    shutil.copyfile(checkpoints[source], broken)
    active_id, [good_id, broken_id] = register(sqlite_url, tiny_checkpoint, checkpoints["wide"], broken)
    if spoil is not None:
        spoil(broken, checkpoints)
    code, summary = score(capsys, sqlite_url, corpus)

    assert (code, summary["scored"], summary["failed"]) == (0, N_PNGS, 0)
    assert [(c["model_version_id"], c["unavailable"], c["scored"]) for c in summary["challengers"]] == \
        [(good_id, None, N_PNGS), (broken_id, reason, 0)]
    assert set(predictions(sqlite_url)) == {active_id, good_id}
    warnings = [r.getMessage() for r in caplog.records if r.name == "cxr.score" and r.levelno == logging.WARNING]
    assert warnings == [f"1 challenger(s) left out of this run, the active version scores as usual: version "
                        f"{broken_id} ({reason})"]
    engine = create_database_engine(sqlite_url)
    with read_session(engine) as session:
        [run] = overview.recent_runs(session)
    engine.dispose()
    assert (run.shadow_scored, run.shadow_unavailable) == ({good_id: N_PNGS}, {broken_id: reason})


def challenger_gives_nan_once(real):
    calls = []

    def probabilities(self, batch):
        rows = real(self, batch)
        if self.checkpoint.training.get("name") != "challenger-1-32" or calls:
            return rows
        calls.append(len(batch))
        rows = rows.clone()  # an inference tensor cannot be changed in place
        rows[0] = float("nan")
        return rows
    return probabilities


def challenger_raises_on_batches_and_once_alone(real):
    alone = []

    def probabilities(self, batch):
        if self.checkpoint.training.get("name") == "challenger-1-32" and (len(batch) > 1 or not alone):
            if len(batch) == 1:
                alone.append(batch)
            raise RuntimeError("injected: out of memory")
        return real(self, batch)
    return probabilities


@pytest.mark.parametrize("fault, reason", [
    (challenger_gives_nan_once, "invalid_score"),
    (challenger_raises_on_batches_and_once_alone, "score_failed"),  # every batch one by one, one image failing
])
def test_a_challenger_s_failures_on_images_are_its_own(capsys, sqlite_url, tiny_checkpoint, checkpoints, corpus,
                                                       monkeypatch, fault, reason):
    """The image is fine (the active version scored it): no file failure is recorded, the exit code is the run's,
    and the challenger's count says what it missed."""
    (corpus / "empty.png").unlink()
    active_id, [challenger_id] = register(sqlite_url, tiny_checkpoint, checkpoints["challenger"])
    monkeypatch.setattr(pipeline.Scorer, "probabilities", fault(pipeline.Scorer.probabilities))
    code, summary = score(capsys, sqlite_url, corpus)
    assert (code, summary["scored"], summary["failed"]) == (0, N_PNGS, 0)
    [shadow] = summary["challengers"]
    assert (shadow["scored"], shadow["failed"], shadow["failure_reasons"]) == (N_PNGS - 1, 1, {reason: 1})
    stored = predictions(sqlite_url)
    assert (len(stored[active_id]), len(stored[challenger_id])) == (N_PNGS, N_PNGS - 1)
    engine = create_database_engine(sqlite_url)
    with read_session(engine) as session:
        assert session.scalar(select(func.count()).select_from(ScoringFailure)) == 0
    engine.dispose()


def test_a_challenger_s_row_the_database_refuses_costs_only_its_prediction(capsys, sqlite_url, tiny_checkpoint,
                                                                           checkpoints, corpus, monkeypatch):
    (corpus / "empty.png").unlink()
    active_id, [challenger_id] = register(sqlite_url, tiny_checkpoint, checkpoints["challenger"])
    real = results.add_predictions
    victim: list[int] = []

    def refuse_one_challenger_row(session, model_version_id, run_id, scores):
        if model_version_id == challenger_id:
            victim[:1] = victim or [scores[0][0]]
            if any(image_id == victim[0] for image_id, _ in scores):
                raise RuntimeError("injected: the driver refused this row")
        real(session, model_version_id, run_id, scores)

    monkeypatch.setattr(results, "add_predictions", refuse_one_challenger_row)
    code, summary = score(capsys, sqlite_url, corpus)
    assert (code, summary["scored"], summary["failed"]) == (0, N_PNGS, 0)
    assert summary["challengers"][0]["failure_reasons"] == {"write_failed": 1}
    stored = predictions(sqlite_url)
    assert (len(stored[active_id]), len(stored[challenger_id])) == (N_PNGS, N_PNGS - 1)


def test_challengers_are_not_scored_with_an_explicit_model(capsys, sqlite_url, tiny_checkpoint, checkpoints,
                                                           corpus):
    active_id, [challenger_id] = register(sqlite_url, tiny_checkpoint, checkpoints["challenger"])
    code, summary = score(capsys, sqlite_url, corpus, "--model", str(tiny_checkpoint))
    assert (summary["model_version_id"], summary["scored"], summary["challengers"]) == (active_id, N_PNGS, [])
    assert set(predictions(sqlite_url)) == {active_id}


def test_a_challenger_that_scored_an_image_already_is_spared_the_model_pass(capsys, sqlite_url, tiny_checkpoint,
                                                                            checkpoints, corpus):
    """A version that scored the folder as --model (or as the active version once) and then challenges another:
    the active version's new images are decoded once and the challenger's model is not run on them again."""
    (corpus / "empty.png").unlink()
    challenger = checkpoints["challenger"]
    score(capsys, sqlite_url, corpus, "--model", str(challenger))
    active_id, [challenger_id] = register(sqlite_url, tiny_checkpoint, challenger)
    before = predictions(sqlite_url)[challenger_id]
    code, summary = score(capsys, sqlite_url, corpus)
    assert (code, summary["scored"]) == (0, N_PNGS)
    [shadow] = summary["challengers"]
    assert (shadow["scored"], shadow["skipped"], shadow["seconds"]) == (0, N_PNGS, 0)
    assert predictions(sqlite_url)[challenger_id] == before


# --- kill -9 ------------------------------------------------------------------------------------------------

N_KILL_PNGS = 120


def count(db_path: Path, sql: str) -> int:
    with sqlite3.connect(db_path, timeout=30) as connection:
        return connection.execute(sql).fetchone()[0]


def every_batch_whole(db_path: Path, active_id: int, challenger_id: int) -> int:
    """Each image the active version scored has the challenger's prediction, from the same run, and the other
    way round (a batch commits both); returns how many images are scored."""
    with sqlite3.connect(db_path, timeout=30) as db:
        def scored(version_id: int) -> set[tuple[int, int]]:
            return set(db.execute("SELECT image_id, run_id FROM predictions WHERE model_version_id = ?",
                                  (version_id,)).fetchall())
        active, challenger = scored(active_id), scored(challenger_id)
        assert active == challenger
        assert db.execute("SELECT count(*) FROM (SELECT image_id, model_version_id FROM predictions "
                          "GROUP BY 1, 2 HAVING count(*) > 1)").fetchone()[0] == 0
        for run_id, run_scored in db.execute("SELECT id, scored FROM scoring_runs"):
            assert sum(run == run_id for _, run in active) == run_scored
    return len(active)


@pytest.mark.slow
def test_kill_minus_nine_then_rerun_completes_every_version(tmp_path, cxr_dev, tiny_checkpoint, checkpoints):
    corpus = tmp_path / "incoming"
    corpus.mkdir()
    for png in sorted(cxr_dev.glob("*/*.png"))[:N_KILL_PNGS]:
        shutil.copy2(png, corpus / png.name)
    db_path = tmp_path / "cxr.db"
    db_url = f"sqlite:///{db_path}"
    active_id, [challenger_id] = register(db_url, tiny_checkpoint, checkpoints["challenger"])
    command = [sys.executable, "-m", "scoring", "--db", db_url, "--settle-seconds", "0", "--batch-size", "8",
               "--workers", "1", "--json", str(corpus)]

    for round_, threshold in enumerate((0, 40)):  # new predictions (both versions'): at once, a few batches in
        already = count(db_path, "SELECT count(*) FROM predictions")
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if (count(db_path, "SELECT count(*) FROM scoring_runs") > round_
                    and count(db_path, "SELECT count(*) FROM predictions") >= already + threshold):
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed; raise the corpus size"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        every_batch_whole(db_path, active_id, challenger_id)
    killed_with = every_batch_whole(db_path, active_id, challenger_id)
    assert 0 < killed_with < N_KILL_PNGS

    final = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout.splitlines()[-1])
    assert (summary["scored"], summary["skipped"]) == (N_KILL_PNGS - killed_with, killed_with)
    assert summary["challengers"][0]["scored"] == N_KILL_PNGS - killed_with
    assert every_batch_whole(db_path, active_id, challenger_id) == N_KILL_PNGS
    engine = create_database_engine(db_url)
    with read_session(engine) as session:
        statuses = list(session.scalars(select(ScoringRun.status).order_by(ScoringRun.id)))
    engine.dispose()
    assert statuses == ["interrupted", "interrupted", "finished"]
