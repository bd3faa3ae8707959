"""The scoring process's side of a batch: what crosses from a worker, how it is scored and how a writer thread
stores it (one statement per table, image-by-image fallback, database errors stop the run), on SQLite and
PostgreSQL. Batches are fed pre-decoded, as the benchmark's stand-in loader does, so no model or file is needed."""

from __future__ import annotations

import pickle
import threading
from types import SimpleNamespace

import pytest
import torch
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from db import model_versions, results
from db.engine import read_session, write_session
from db.models import Image, ImageFile, Prediction, ScoringFailure, ScoringRun
from db.results import FileStat
from scoring import pipeline
from scoring.decoding import DecodeDataset, DecodedBatch, collate_decoded
from scoring.model import load_checkpoint
from scoring.scorer import ModelThreads

CLASSES = ["covid", "normal", "pneumonia"]
VALUES = results.image_values({"format": "png", "rows": 8, "cols": 8})


class StubScorer:
    """Probabilities from the first pixel of each image: row i gets class (first pixel) mod 3."""

    def __init__(self):
        self.checkpoint = SimpleNamespace(classes=CLASSES)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        best = batch[:, 0, 0, 0].long() % len(CLASSES)
        return torch.nn.functional.one_hot(best, len(CLASSES)).float() * 0.7 + 0.1


@pytest.fixture
def scoring_pass(engine):
    with write_session(engine) as session:
        version = model_versions.register(session, sha256="a" * 64, path="/m.pt", architecture="resnet18",
                                          classes=CLASSES, input_size=8, preprocessing_hash="p" * 64,
                                          temperature=1.0)
        run_id = results.start_run(session, {}, version.id, pid=1).id
    return pipeline.ScoringPass(engine, StubScorer(), version.id, run_id, pipeline.ScoringOptions(),
                                pipeline.Counts())


def jobs(n: int, start: int = 0) -> list[pipeline.Job]:
    return [pipeline.Job(FileStat(f"/in/{i:04d}.png", 100 + i, i), f"{i:064x}") for i in range(start, start + n)]


def batch(indices: range, values: dict | None = None) -> DecodedBatch:
    """In-scope images whose first pixel is their index."""
    pixels = torch.zeros(len(indices), 1, 8, 8)
    pixels[:, 0, 0, 0] = torch.tensor(list(indices), dtype=torch.float32)
    return DecodedBatch(pixels, tuple((i, None, dict(values or VALUES), (True, "no_metadata"), False)
                                               for i in indices))


def table_counts(engine) -> dict[str, int]:
    with read_session(engine) as session:
        return {model.__tablename__: session.scalar(select(func.count()).select_from(model))
                for model in (Image, ImageFile, Prediction, ScoringFailure)}


def stored_run(engine, run_id: int) -> tuple[int, int, int]:
    with read_session(engine) as session:
        run = session.get(ScoringRun, run_id)
        return run.scored, run.failed, run.out_of_scope


def test_a_batch_crosses_as_one_tensor_and_plain_values():
    tensors = [torch.full((1, 8, 8), float(i)) for i in range(3)]
    samples = [((tensors[0],), (0, None, VALUES, (True, "ok"), False)),
               (None, (1, ("truncated", "/in/b: cut"), None, None, False)),
               (None, (2, None, VALUES, (False, "modality:MR"), False)),
               ((tensors[2],), (3, None, VALUES, (True, "ok"), False))]
    collated = collate_decoded(samples)
    assert collated.pixels.shape == (2, 1, 8, 8) and collated.pixels.is_contiguous()
    assert collated.pixels[1, 0, 0, 0] == 2.0 and collated.other_pixels == ()
    assert [item[0] for item in collated.items] == [0, 1, 2, 3]
    assert pickle.loads(pickle.dumps(collated.items)) == collated.items


def test_summarise_scores_a_whole_batch_and_refuses_non_finite_rows():
    probabilities = torch.tensor([[0.2, 0.7, 0.1], [float("nan"), 0.5, 0.5], [0.5, 0.25, 0.25]])
    first, invalid, third = pipeline.summarise(probabilities, CLASSES)
    assert invalid is None
    assert first.predicted_class == "normal" and first.confidence == pytest.approx(0.7)
    assert first.probabilities == {"covid": 0.2, "normal": 0.7, "pneumonia": 0.1}
    assert third.predicted_class == "covid" and 0 < third.entropy < first.entropy + 1


def test_batches_are_stored_with_their_predictions_locations_and_failures(engine, scoring_pass):
    todo = jobs(10)
    todo[3].same_content.append(FileStat("/in/copy-of-3.png", 103, 3))
    mixed = batch(range(4, 10))
    mixed = mixed._replace(items=mixed.items[:4] + ((8, ("truncated", "/in/0008.png: cut"), None, None, False),
                                                    (9, None, VALUES, (False, "modality:MR"), False)),
                           pixels=mixed.pixels[:4])
    scoring_pass.run_batches(todo, [batch(range(4)), mixed])

    assert table_counts(engine) == {"images": 9, "image_files": 10, "predictions": 8, "scoring_failures": 1}
    assert stored_run(engine, scoring_pass.run_id) == (8, 1, 1)
    assert scoring_pass.counts == pipeline.Counts(scored=8, skipped=1, failed=1, out_of_scope=1)
    with read_session(engine) as session:
        predicted = dict(session.execute(select(Image.path, Prediction.predicted_class)
                                         .join(Prediction, Prediction.image_id == Image.id)).all())
        copy = session.scalar(select(ImageFile.image_id).where(ImageFile.path == "/in/copy-of-3.png"))
        original = session.scalar(select(Image.id).where(Image.sha256 == todo[3].sha256))
    assert predicted["/in/0005.png"] == CLASSES[5 % 3] and copy == original


def test_one_row_the_database_refuses_becomes_that_image_s_write_failure(engine, scoring_pass):
    refused = dict(VALUES, rows=2**70)  # beyond any integer column on both databases
    bad = batch(range(4))
    bad = bad._replace(items=bad.items[:2] + ((2, None, refused, (True, "ok"), False),) + bad.items[3:])
    scoring_pass.run_batches(jobs(4), [bad])

    assert table_counts(engine) == {"images": 3, "image_files": 3, "predictions": 3, "scoring_failures": 1}
    with read_session(engine) as session:
        failure = session.scalar(select(ScoringFailure))
    assert (failure.path, failure.reason) == ("/in/0002.png", pipeline.WRITE_FAILED)
    assert stored_run(engine, scoring_pass.run_id) == (3, 1, 0)


def test_a_database_error_stops_the_run_and_keeps_only_committed_batches(engine, scoring_pass, monkeypatch):
    real = results.store_results
    calls = []

    def unreachable_on_second_batch(session, *args):
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise OperationalError("INSERT", {}, Exception("injected: disk I/O error"))
        real(session, *args)

    monkeypatch.setattr(results, "store_results", unreachable_on_second_batch)
    with pytest.raises(OperationalError):
        scoring_pass.run_batches(jobs(12), [batch(range(0, 4)), batch(range(4, 8)), batch(range(8, 12))])

    assert calls == ["cxr-batch-writer"] * 2  # the third batch is never stored after the error
    assert table_counts(engine)["predictions"] == 4
    assert stored_run(engine, scoring_pass.run_id) == (4, 0, 0)
    assert scoring_pass.counts.scored == 4  # nothing is counted before it is committed


def test_the_batch_writer_stores_in_order_and_raises_in_the_caller():
    stored: list[int] = []
    with pipeline.BatchWriter(stored.append, depth=1) as writer:
        for i in range(20):
            writer.put(i)
    assert stored == list(range(20))

    def fail_on_three(item: int) -> None:
        if item == 3:
            raise ValueError(f"cannot store {item}")
        stored.append(item)

    stored.clear()
    with pytest.raises(ValueError, match="cannot store 3"), pipeline.BatchWriter(fail_on_three, depth=1) as writer:
        for i in range(6):
            writer.put(i)
    assert stored == [0, 1, 2]


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def observe(threads: ModelThreads, decoding: float, batches: int, images: int = 32) -> None:
    for _ in range(batches):
        threads.observe(decoding, images)


def test_a_model_faster_than_decoding_gets_one_thread_until_the_pass_ends(two_threads):
    with ModelThreads(enabled=True, workers=2) as threads:
        threads.model_seconds_per_image = 0.0007  # 1,400 images/s alone on one thread
        observe(threads, decoding=0.0, batches=ModelThreads.WARM_UP)  # the workers' first batch: ignored
        observe(threads, decoding=32 * 0.005, batches=ModelThreads.WINDOW - 1)  # 5 ms per image per worker
        assert torch.get_num_threads() == 2  # not decided before the window is full
        observe(threads, decoding=32 * 0.005, batches=1)
        assert torch.get_num_threads() == 1
        observe(threads, decoding=32 * 10.0, batches=20)  # decided once
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("model_seconds_per_image", [0.028, 0.0021])
def test_a_model_that_sets_the_pace_keeps_its_threads(two_threads, model_seconds_per_image):
    """Two workers decode an image in 2.5 ms between them; the second model needs 2.1 ms on one thread, more than
    80 % of that."""
    with ModelThreads(enabled=True, workers=2) as threads:
        threads.model_seconds_per_image = model_seconds_per_image
        observe(threads, decoding=32 * 0.005, batches=ModelThreads.WARM_UP + ModelThreads.WINDOW + 5)
        assert torch.get_num_threads() == 2


def test_threads_the_user_chose_are_never_changed(two_threads, tiny_checkpoint):
    with ModelThreads(enabled=False, workers=2) as threads:
        threads.measure(pipeline.Scorer(load_checkpoint(tiny_checkpoint), torch.device("cpu")))
        assert threads.model_seconds_per_image is None
        threads.model_seconds_per_image = 0.0001
        observe(threads, decoding=1.0, batches=10)
        assert torch.get_num_threads() == 2


def test_a_small_model_is_timed_alone_on_one_thread(two_threads, tiny_checkpoint, monkeypatch):
    # what counts as small is the monkeypatched bound, not this machine's speed: a loaded machine must not fail it
    monkeypatch.setattr(ModelThreads, "SMALL_BATCH_S", 60.0)
    scorer = pipeline.Scorer(load_checkpoint(tiny_checkpoint), torch.device("cpu"))
    threads_while_timed = []
    run_model = scorer.probabilities
    monkeypatch.setattr(scorer, "probabilities",
                        lambda batch: threads_while_timed.append(torch.get_num_threads()) or run_model(batch))
    with ModelThreads(enabled=True, workers=2) as threads:
        threads.measure(scorer)
        assert threads_while_timed == [1, 1]  # one image, then a batch, both on one thread
        assert 0 < threads.model_seconds_per_image < 60.0 / ModelThreads.BATCH
        assert torch.get_num_threads() == 2 and threads.enabled


def test_the_active_model_and_its_challengers_are_timed_as_one(two_threads, tiny_checkpoint, monkeypatch):
    """They run one after the other on every batch: decoding sets the pace only if it outlasts them all."""
    scorers = [pipeline.Scorer(load_checkpoint(tiny_checkpoint), torch.device("cpu")) for _ in range(3)]
    per_image = dict(zip(map(id, scorers), [0.001, 0.0006, 0.0004], strict=True))  # in a batch, on one thread
    timed = []

    def seconds_per_image(scorer, sample, images):
        timed.append((torch.get_num_threads(), images))
        return per_image[id(scorer)] * (3 if images == 1 else 1)

    monkeypatch.setattr(ModelThreads, "_seconds_per_image", staticmethod(seconds_per_image))
    monkeypatch.setattr(ModelThreads, "SMALL_BATCH_S", 0.1)  # together 32 x 2 ms = 64 ms a batch: small
    with ModelThreads(enabled=True, workers=2) as threads:
        threads.measure(*scorers)
    assert timed == [(1, 1), (1, ModelThreads.BATCH)] * 3 and torch.get_num_threads() == 2
    assert threads.model_seconds_per_image == pytest.approx(0.002) and threads.enabled

    monkeypatch.setattr(ModelThreads, "SMALL_BATCH_S", 0.05)  # each alone is small (32 ms at most), not together
    with ModelThreads(enabled=True, workers=2) as threads:
        threads.measure(*scorers)
    assert threads.model_seconds_per_image is None and not threads.enabled


def test_a_model_that_is_not_small_keeps_its_threads_without_watching_the_decoders(two_threads, tiny_checkpoint,
                                                                                     monkeypatch):
    monkeypatch.setattr(ModelThreads, "SMALL_BATCH_S", 1e-9)
    with ModelThreads(enabled=True, workers=2) as threads:
        threads.measure(pipeline.Scorer(load_checkpoint(tiny_checkpoint), torch.device("cpu")))
        assert threads.model_seconds_per_image is None and not threads.enabled
        observe(threads, decoding=100.0, batches=10)
        assert torch.get_num_threads() == 2


def test_a_collated_batch_carries_its_decoding_seconds(tmp_path):
    dataset = DecodeDataset([], [lambda pixels, shape: torch.zeros(1)], read_timeout=5)
    dataset.paths = [str(tmp_path / "missing.png")] * 3
    first = collate_decoded([dataset[i] for i in range(3)])
    sample = dataset[0]
    second = collate_decoded([sample])
    again = collate_decoded([sample])  # nothing decoded since the last batch
    assert first.decode_seconds > 0 and second.decode_seconds > 0 and again.decode_seconds == 0
    assert [item[1][0] for item in first.items] == ["not_found"] * 3
