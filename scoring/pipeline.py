"""The scoring pipeline: triage files against the database, decode new ones in DataLoader workers, run the
model on batches, and commit each batch (predictions, images, file locations and failures) atomically, on a
writer thread while the next batch is scored.

A batch crosses from a worker as one tensor plus plain values, and is written with one statement per table:
the scoring process's own cost per image stays far below the model's (``benchmarks/bench_score.py`` prints it).

Triage never decodes: a path whose size and mtime are unchanged is looked up by path; any other file is
hashed and looked up by content. Only content this model version has not handled yet is decoded.

Challengers (model versions an admin marked, :func:`db.model_versions.challengers`) are scored in the shadow of
the active version: every image the run decodes is decoded once, preprocessed once per distinct preprocessing
among the run's models, and each challenger's predictions are committed in the same transaction as the active
version's (readers never see them). What is decoded is decided by the active version alone (see
:class:`Triage`), so a challenger costs one model pass per image and no decoding.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, NamedTuple

import torch
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session
from torch.utils.data import DataLoader

from db import results
from db.engine import read_session, write_session
from db.hashing import file_sha256
from db.results import FileStat, KnownFile
from scoring import imaging
from scoring.decoding import (
    DecodeDataset,
    DecodedBatch,
    DecodedItem,
    codec_threads,
    collate_decoded,
    decode_side,
    input_preprocessings,
    start_worker_reader,
)
from scoring.model import Checkpoint, normalised_entropy
from scoring.scorer import ModelThreads, Scorer

log = logging.getLogger("cxr.score")

TRIAGE_CHUNK = 2000
HASH_THREADS = 4

# Failure reasons of the scorer itself, beside the reader's (scoring.imaging.REASONS).
INVALID_SCORE = "invalid_score"  # the model gave NaN or infinite probabilities
SCORE_FAILED = "score_failed"  # the model raised on this image
WRITE_FAILED = "write_failed"  # storing the image's result raised (a constraint, a value the driver refused)
ACTIVE = 0  # the active version's key among model versions' ids (which start at 1)
# A challenger's image that needs no model pass: decoded for the active version, already scored by the challenger.
ALREADY_SCORED = "already_scored"

# Errors that say nothing about an image (a full disk, a read-only or unreachable database, a lost connection):
# recording them as the images' failures would skip good files until they change, so they stop the run instead.
DATABASE_ERRORS = (OperationalError, InterfaceError, OSError, MemoryError)


@dataclass
class Counts:
    scanned: int = 0  # files looked at: scored + skipped + out_of_scope + failed + known_failures
    scored: int = 0  # scored by the model in this run
    skipped: int = 0  # content already scored by this model version (at this or another path)
    out_of_scope: int = 0  # not a frontal chest radiograph (recorded with its reason, not scored)
    failed: int = 0  # could not be read or scored in this run (recorded with reason)
    known_failures: int = 0  # failed in an earlier run and unchanged since: not retried
    deferred: int = 0  # modified moments ago, probably still being written: left for the next run
    # Notes on files counted above, not categories of their own (the runs table has no columns for them):
    future_mtime: int = 0  # dated later than this machine's clock: scored or deferred by their change time
    invalid_study_date: int = 0  # images stored without a study date: their StudyDate is not a valid DICOM date

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def run_columns(self) -> dict[str, int]:
        """The counts the runs table keeps."""
        return {name: value for name, value in asdict(self).items() if name not in NOTES}

    def plus(self, other: Counts) -> Counts:
        return Counts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


NOTES = ("future_mtime", "invalid_study_date")


@dataclass
class ScoringOptions:
    batch_size: int = 32
    workers: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "auto"
    read_timeout: float = imaging.DEFAULT_TIMEOUT_S
    retry_failed: bool = False
    log_every: int = 500
    progress_bar: bool = False
    reduced_decode: bool = True  # decode at 2x the model's input side, not at full size (imaging.read_xray min_side)
    adapt_threads: bool = False  # one model thread when decoding is the slower stage (see ModelThreads)


@dataclass
class Job:
    """One file whose content must be decoded (and, if in scope, scored)."""

    stat: FileStat
    sha256: str
    same_content: list[FileStat] = field(default_factory=list)  # other new paths holding identical bytes
    scored_by: frozenset[int] = frozenset()  # the run's challengers that already scored this content

    @property
    def stats(self) -> tuple[FileStat, ...]:
        return (self.stat, *self.same_content)


# --- triage ---------------------------------------------------------------------------------------------

def _hash_or_error(stat: FileStat) -> tuple[FileStat, str | None, tuple[str, str] | None]:
    try:
        return stat, file_sha256(stat.path), None
    except FileNotFoundError:
        return stat, None, (imaging.NOT_FOUND, f"{stat.path}: file vanished or is a dangling link")
    except PermissionError:
        return stat, None, (imaging.UNREADABLE, f"{stat.path}: permission denied")
    except IsADirectoryError:
        return stat, None, (imaging.NOT_A_FILE, f"{stat.path}: is a directory")
    except OSError as exc:
        return stat, None, (imaging.UNREADABLE, f"{stat.path}: {exc.strerror or exc}")


class Triage:
    """Sorts discovered files into skipped / out of scope / known failures / to decode, recording what it can.

    Only the active version (``model_version_id``) decides what is decoded: content it has not scored. The
    challengers score what the run decodes, and never cause a decode of their own: content the active version
    scored before a challenger was marked (or on a night its checkpoint could not be loaded) is not decoded
    again for it, so shadow scoring never costs more than one model pass per new image and challenger, and a
    challenger's predictions cover the images the active version scored while it was a challenger. A kill
    leaves no such gap: a batch commits every version's predictions at once.
    """

    def __init__(self, engine: Engine, model_version_id: int, run_id: int, options: ScoringOptions,
                 counts: Counts, challenger_ids: Sequence[int] = ()):
        self.engine, self.model_version_id, self.run_id = engine, model_version_id, run_id
        self.options, self.counts = options, counts
        self.challenger_ids = tuple(challenger_ids)
        self.jobs: list[Job] = []
        self._job_by_sha: dict[str, Job] = {}

    def run(self, files: list[FileStat]) -> list[Job]:
        with ThreadPoolExecutor(HASH_THREADS) as hashers:
            for start in range(0, len(files), TRIAGE_CHUNK):
                self._triage_chunk(files[start:start + TRIAGE_CHUNK], hashers)
        if self.challenger_ids and self.jobs:
            # Content the active version lacks that a challenger already has (it was the active version once,
            # or scored it with --model): that challenger's model pass is spared, and its count says so.
            with read_session(self.engine) as session:
                done = results.predicted_versions(session, [job.sha256 for job in self.jobs], self.challenger_ids)
            for job in self.jobs:
                job.scored_by = frozenset(done.get(job.sha256, ()))
        return self.jobs

    def _triage_chunk(self, chunk: list[FileStat], hashers: ThreadPoolExecutor) -> None:
        with read_session(self.engine) as session:
            known = results.known_files(session, chunk, self.model_version_id)
        unknown: list[FileStat] = []
        for stat in chunk:
            entry = known.get(stat.path)
            if entry is None or (entry.failed and self.options.retry_failed):
                unknown.append(stat)
                continue
            self.counts.scanned += 1
            if entry.failed:
                self.counts.known_failures += 1
            elif entry.settled:
                self._count_settled(entry)
            else:
                self._queue(stat, entry.sha256)
        hashed = list(hashers.map(_hash_or_error, unknown))
        with read_session(self.engine) as session:
            by_sha = results.images_by_sha(session, [sha for _, sha, _ in hashed if sha], self.model_version_id)
        with write_session(self.engine) as session:
            for stat, sha, error in hashed:
                self.counts.scanned += 1
                if error is not None:
                    results.add_failure(session, self.run_id, stat, *error)
                    self.counts.failed += 1
                elif sha in by_sha and by_sha[sha].settled:
                    results.record_file(session, stat, by_sha[sha].image_id)
                    self._count_settled(by_sha[sha])
                else:
                    self._queue(stat, sha)
            results.update_run(session, self.run_id, **self.counts.run_columns())

    def _count_settled(self, entry: KnownFile) -> None:
        if entry.scored:
            self.counts.skipped += 1
        else:
            self.counts.out_of_scope += 1

    def _queue(self, stat: FileStat, sha: str) -> None:
        if sha in self._job_by_sha:
            self._job_by_sha[sha].same_content.append(stat)
            return
        job = Job(stat, sha)
        self._job_by_sha[sha] = job
        self.jobs.append(job)


# --- decoding: scoring.decoding, in DataLoader workers ---------------------------------------------------

def make_loader(jobs: list[Job], checkpoint: Checkpoint, options: ScoringOptions,
                challengers: Sequence[Checkpoint] = ()) -> DataLoader:
    """Batches of ``jobs``, each file decoded once, with a tensor per :func:`input_preprocessings`."""
    on_cuda = options.device.type == "cuda"
    return DataLoader(
        DecodeDataset([job.stat.path for job in jobs], input_preprocessings(checkpoint, challengers),
                      options.read_timeout,
                      decode_side(checkpoint, challengers) if options.reduced_decode else None),
        batch_size=options.batch_size,
        num_workers=options.workers,
        collate_fn=collate_decoded,
        pin_memory=on_cuda,
        prefetch_factor=4 if options.workers > 0 else None,
        worker_init_fn=functools.partial(start_worker_reader, codec_threads(options.workers), os.getpid()),
    )


# --- the run --------------------------------------------------------------------------------------------

@dataclass
class ShadowCounts:
    """What a challenger did in a run; counted once committed, like the run's counts."""

    scored: int = 0  # images it scored, stored beside the active version's predictions
    skipped: int = 0  # images decoded for the active version that it had scored already (ALREADY_SCORED)
    failed: Counter[str] = field(default_factory=Counter)  # images the active version scored and it could not
    seconds: float = 0.0  # its model's time

    def as_dict(self) -> dict[str, Any]:
        return {"scored": self.scored, "skipped": self.skipped, "failed": sum(self.failed.values()),
                "failure_reasons": dict(sorted(self.failed.items())), "seconds": round(self.seconds, 3)}


@dataclass
class Challenger:
    """A model version scored in the shadow of the active one, on the images the run decodes."""

    model_version_id: int
    scorer: Scorer
    counts: ShadowCounts = field(default_factory=ShadowCounts)


@dataclass(frozen=True)
class BatchResults:
    """What one batch adds to the database."""

    images: list[results.ImageResult]
    failures: list[results.FileFailure]
    bad_dates: frozenset[str] = frozenset()  # sha256 of the images whose StudyDate was refused
    # (challenger's model version id, reason) for each stored image that challenger adds no prediction to
    shadow_missed: tuple[tuple[int, str], ...] = ()

    def counts(self) -> Counts:
        scored = [image for image in self.images if image.score is not None]
        return Counts(scored=len(scored), skipped=sum(len(image.stats) - 1 for image in scored),
                      out_of_scope=sum(len(image.stats) for image in self.images if image.score is None),
                      failed=len(self.failures),
                      invalid_study_date=sum(image.sha256 in self.bad_dates for image in self.images))


# A challenger's scores of a batch's in-scope images and whether its model raised on each; None: no model pass.
ShadowScores = tuple[list[results.Score | None], list[bool]] | None


class ScoredBatch(NamedTuple):
    """A decoded batch after the models: what :meth:`ScoringPass.store_scored` turns into rows. Plain values and
    CPU tensors, so that it crosses from a Ray actor (scoring.ray_engine) as it is."""

    items: tuple[DecodedItem, ...]
    probabilities: torch.Tensor  # the active version's, a row per in-scope image
    raised: list[bool]  # whether its model raised on that image (its row is then NaN)
    shadows: tuple[ShadowScores, ...]  # per challenger, in the run's order
    seconds: dict[int, float]  # model seconds per challenger's model version id, the active version's under ACTIVE


class BatchScorer:
    """The models of a run on decoded batches: the active version, then each challenger on the same tensors
    (or on the tensor of its own preprocessing)."""

    def __init__(self, scorer: Scorer, challengers: Sequence[tuple[int, Scorer]] = ()):
        self.scorer = scorer
        self.challengers = list(challengers)
        self._inputs: list[int] = []  # which of a batch's tensors each challenger takes (0: the active version's)
        if self.challengers:
            preprocessings = input_preprocessings(scorer.checkpoint, self.challenger_checkpoints())
            self._inputs = [preprocessings.index(s.checkpoint.preprocessing) for _, s in self.challengers]

    def challenger_checkpoints(self) -> list[Checkpoint]:
        return [scorer.checkpoint for _, scorer in self.challengers]

    def scorers(self) -> list[Scorer]:
        return [self.scorer, *(scorer for _, scorer in self.challengers)]

    def score(self, batch: DecodedBatch, scored_by: Sequence[frozenset[int]]) -> ScoredBatch:
        """``scored_by``: per item, the challengers that have scored its content already."""
        seconds: dict[int, float] = {}
        started = time.perf_counter()
        probabilities, raised = self._score(batch.pixels, self.scorer)
        seconds[ACTIVE] = time.perf_counter() - started
        shadows = []
        for (version_id, scorer), pixels in zip(self.challengers, self._inputs, strict=True):
            if batch.pixels is None or all(version_id in done for done in scored_by):
                shadows.append(None)
                continue
            started = time.perf_counter()
            shadow, shadow_raised = self._score(batch.pixels if pixels == 0 else batch.other_pixels[pixels - 1],
                                                scorer)
            seconds[version_id] = time.perf_counter() - started
            shadows.append((summarise(shadow, scorer.checkpoint.classes), shadow_raised))
        return ScoredBatch(batch.items, probabilities, raised, tuple(shadows), seconds)

    def _score(self, pixels: torch.Tensor | None, scorer: Scorer) -> tuple[torch.Tensor, list[bool]]:
        """Probabilities per in-scope image, and whether the model raised on it (its row is then NaN)."""
        classes = len(scorer.checkpoint.classes)
        if pixels is None:
            return torch.empty(0, classes), []
        try:
            return scorer.probabilities(pixels), [False] * len(pixels)
        except RuntimeError as exc:  # e.g. out of memory on the GPU: one image at a time, failing alone
            log.warning("the model failed on a batch of %d images (%s); scoring them one by one", len(pixels),
                        type(exc).__name__)
        rows, raised = [], []
        for image in pixels:
            try:
                rows.append(scorer.probabilities(image[None])[0])
                raised.append(False)
            except RuntimeError:
                rows.append(torch.full((classes,), float("nan")))
                raised.append(True)
        return torch.stack(rows), raised


class ScoringPass:
    """Decodes and scores the triaged jobs (with the active version, then each challenger on the same tensors); a
    writer thread commits one transaction per batch meanwhile."""

    def __init__(self, engine: Engine, scorer: Scorer, model_version_id: int, run_id: int,
                 options: ScoringOptions, counts: Counts, challengers: Sequence[Challenger] = ()):
        self.engine, self.scorer = engine, scorer
        self.model_version_id, self.run_id = model_version_id, run_id
        self.options, self.counts = options, counts
        self.challengers = list(challengers)
        self.model_seconds = 0.0  # the active version's model time
        self.batch_scorer = BatchScorer(scorer, [(c.model_version_id, c.scorer) for c in self.challengers])
        self._by_version = {c.model_version_id: c for c in self.challengers}

    def run(self, jobs: list[Job]) -> None:
        if jobs:
            self.run_batches(jobs, make_loader(jobs, self.scorer.checkpoint, self.options,
                                               self.batch_scorer.challenger_checkpoints()))

    def run_batches(self, jobs: list[Job], batches: Iterable[DecodedBatch]) -> None:
        """Scores ``batches`` (from :func:`make_loader`; benchmarks feed pre-decoded ones) here and stores them.
        Returns once every batch is committed."""
        with ModelThreads(self.options.adapt_threads, self.options.workers) as threads:
            threads.measure(*self.batch_scorer.scorers())

            def scored() -> Iterator[ScoredBatch]:
                for batch in batches:
                    threads.observe(batch.decode_seconds, len(batch.items))
                    yield self.batch_scorer.score(batch, [jobs[item[0]].scored_by for item in batch.items])

            self.store_scored(jobs, scored())

    def store_scored(self, jobs: list[Job], batches: Iterable[ScoredBatch]) -> None:
        """Stores scored batches (scored here, or by a Ray actor), each in one transaction on the writer thread.
        Returns once every batch is committed."""
        done = 0
        with progress_bar(len(jobs), self.options.progress_bar) as advance, BatchWriter(self._store) as writer:
            for batch in batches:
                self.model_seconds += batch.seconds.get(ACTIVE, 0.0)
                for challenger in self.challengers:
                    challenger.counts.seconds += batch.seconds.get(challenger.model_version_id, 0.0)
                writer.put(self._results(jobs, batch.items, batch.probabilities, batch.raised, batch.shadows))
                done += len(batch.items)
                advance(len(batch.items))
                if not self.options.progress_bar and (done // self.options.log_every
                                                      != (done - len(batch.items)) // self.options.log_every):
                    log.info("decoded %d/%d new files: %s", done, len(jobs), _counts_text(self.counts))

    def _results(self, jobs: list[Job], items: tuple[DecodedItem, ...], probabilities: torch.Tensor,
                 raised: list[bool], shadows: Sequence[ShadowScores] = ()) -> BatchResults:
        scores = list(zip(summarise(probabilities, self.scorer.checkpoint.classes), raised, strict=True))
        images: list[results.ImageResult] = []
        failures: list[results.FileFailure] = []
        bad_dates: set[str] = set()
        missed: list[tuple[int, str]] = []
        row = 0  # the image's row in the batch's tensors
        for index, error, values, scope, bad_date in items:
            job = jobs[index]
            score, shadow_scores = None, ()
            if error is None and scope[0]:
                score, model_raised = scores[row]
                if model_raised:
                    error = (SCORE_FAILED, f"{job.stat.path}: the model failed on this image")
                elif score is None:
                    error = (INVALID_SCORE, f"{job.stat.path}: the model gave non-finite probabilities for this "
                                            "image")
                else:
                    shadow_scores = self._shadow_scores(job, row, shadows, missed)
                row += 1
            if error is not None:
                failures.extend(results.FileFailure(stat, *error) for stat in job.stats)
            else:
                images.append(results.ImageResult(job.sha256, job.stats, values, *scope, score=score,
                                                  shadow_scores=shadow_scores))
                if bad_date:
                    bad_dates.add(job.sha256)
        return BatchResults(images, failures, frozenset(bad_dates), tuple(missed))

    def _shadow_scores(self, job: Job, row: int, shadows: Sequence[ShadowScores],
                       missed: list[tuple[int, str]]) -> tuple[tuple[int, results.Score], ...]:
        """The challengers' scores of an image the active version scored; what one could not give goes to
        ``missed`` (its failures are counted for it, never recorded as the file's: the image is fine)."""
        found = []
        for challenger, shadow in zip(self.challengers, shadows, strict=True):
            version_id = challenger.model_version_id
            if version_id in job.scored_by:
                missed.append((version_id, ALREADY_SCORED))
                continue
            score, model_raised = shadow[0][row], shadow[1][row]
            if model_raised:
                missed.append((version_id, SCORE_FAILED))
            elif score is None:
                missed.append((version_id, INVALID_SCORE))
            else:
                found.append((version_id, score))
        return tuple(found)

    def _store(self, batch: BatchResults) -> None:
        """One transaction per batch, every version's predictions in it. Its writes go in one savepoint; if any of
        them fails, the batch is written again image by image, each in its own savepoint, so one bad row becomes
        that image's recorded failure and never costs the rest of the batch (nor stops the run: the same file
        would stop every rerun). The run's counts change only once the batch is committed."""
        with write_session(self.engine) as session:
            try:
                with session.begin_nested():
                    results.store_results(session, self.model_version_id, self.run_id, batch.images,
                                          batch.failures)
            except DATABASE_ERRORS:
                raise  # the database or the machine, not this batch's images: the run stops, nothing half-written
            except Exception as exc:
                log.warning("storing a batch of %d files failed (%s); storing them one by one",
                            len(batch.images) + len(batch.failures), type(exc).__name__)
                batch = self._store_one_by_one(session, batch)
            added = batch.counts()
            results.update_run(session, self.run_id, **self.counts.plus(added).run_columns())
        self.counts.add(added)
        self._count_shadows(batch)

    def _count_shadows(self, batch: BatchResults) -> None:
        for image in batch.images:
            for version_id, _ in image.shadow_scores:
                self._by_version[version_id].counts.scored += 1
        for version_id, reason in batch.shadow_missed:
            counts = self._by_version[version_id].counts
            if reason == ALREADY_SCORED:
                counts.skipped += 1
            else:
                counts.failed[reason] += 1

    def _store_one_by_one(self, session: Session, batch: BatchResults) -> BatchResults:
        images: list[results.ImageResult] = []
        failures: list[results.FileFailure] = []
        missed = list(batch.shadow_missed)
        for image in batch.images:
            refused = self._store_alone(session, [image], [], quiet=bool(image.shadow_scores))
            if refused is not None and image.shadow_scores:
                # a challenger's row must not cost the image the active version's: stored again without them
                alone = replace(image, shadow_scores=())
                if self._store_alone(session, [alone], []) is None:
                    log.warning("could not store the challengers' predictions of one image (%s); %s for them",
                                refused, WRITE_FAILED)
                    missed.extend((version_id, WRITE_FAILED) for version_id, _ in image.shadow_scores)
                    image, refused = alone, None
            if refused is None:
                images.append(image)
            else:
                failures.extend(self._record_write_failed(session, image.stats, refused))
        for failure in batch.failures:
            refused = self._store_alone(session, [], [failure])
            if refused is None:
                failures.append(failure)
            else:
                failures.extend(self._record_write_failed(session, (failure.stat,), refused))
        return BatchResults(images, failures, batch.bad_dates, tuple(missed))

    def _store_alone(self, session: Session, images: list[results.ImageResult],
                     failures: list[results.FileFailure], quiet: bool = False) -> str | None:
        """Stores one file's results in a savepoint; the exception's type name if that failed."""
        try:
            with session.begin_nested():
                results.store_results(session, self.model_version_id, self.run_id, images, failures)
            return None
        except DATABASE_ERRORS:
            raise
        except Exception as exc:
            # The type only: the exception's text may quote the row's values, which come from file headers.
            if not quiet:
                log.warning("could not store the result of one file (%s); recorded as %s", type(exc).__name__,
                            WRITE_FAILED)
            return type(exc).__name__

    def _record_write_failed(self, session: Session, stats: tuple[FileStat, ...],
                             exception: str) -> list[results.FileFailure]:
        failed = [results.FileFailure(stat, WRITE_FAILED, f"{stat.path}: storing the result failed ({exception})")
                  for stat in stats]
        with session.begin_nested():
            results.add_failures(session, self.run_id, failed)
        return failed


class BatchWriter:
    """Stores batches in order on one thread of its own, while the caller scores the next batch.

    The queue is bounded, so a slow database holds back scoring instead of piling up results in memory. An
    exception in the thread (a database error) is raised in the caller at its next :meth:`put` or on leaving
    the ``with`` block; batches after it are dropped, never stored out of order. Leaving the block waits for
    every queued batch, so a batch is never reported done before it is committed.
    """

    _STOP = object()

    def __init__(self, store: Callable[[Any], None], depth: int = 2):
        self._store = store
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="cxr-batch-writer", daemon=True)

    def __enter__(self) -> BatchWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._queue.put(self._STOP)
        self._thread.join()
        if exc is None:
            self._raise_error()

    def put(self, batch: Any) -> None:
        self._raise_error()
        self._queue.put(batch)

    def _loop(self) -> None:
        while (batch := self._queue.get()) is not self._STOP:
            if self._error is None:
                try:
                    self._store(batch)
                except BaseException as exc:  # handed to the caller's thread, which stops the run
                    self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


def summarise(probabilities: torch.Tensor, classes: list[str]) -> list[results.Score | None]:
    """A score per row, computed for the whole batch at once; None for a row that is not finite."""
    probabilities = probabilities.float()
    finite = torch.isfinite(probabilities).all(dim=1).tolist()
    best = probabilities.argmax(dim=1).tolist()
    entropy = normalised_entropy(probabilities).tolist()
    return [results.Score({name: round(p, 6) for name, p in zip(classes, row, strict=True)}, classes[b], row[b], e)
            if ok else None
            for row, b, e, ok in zip(probabilities.tolist(), best, entropy, finite, strict=True)]


def _counts_text(counts: Counts) -> str:
    return ", ".join(f"{name} {value}" for name, value in counts.as_dict().items())


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Callable[[int], Any]]:
    """A tqdm bar on a terminal; a no-op otherwise (the caller logs every N files instead)."""
    if not enabled:
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar.update


def score(engine: Engine, checkpoint: Checkpoint, files: list[FileStat], model_version_id: int, run_id: int,
          options: ScoringOptions, counts: Counts, challengers: Sequence[Challenger] = (),
          runner: Callable[[ScoringPass, list[Job]], None] = ScoringPass.run) -> dict[str, Any]:
    """Triage then score ``files`` with the active version and, in its shadow, ``challengers``, updating
    ``counts`` and the challengers' own; returns the seconds each phase took, and each model's (by version id).
    ``runner`` decodes and scores the jobs: here (:meth:`ScoringPass.run`), or on a Ray cluster
    (:class:`scoring.ray_engine.RayRunner`)."""
    started = time.perf_counter()
    jobs = Triage(engine, model_version_id, run_id, options, counts,
                  [challenger.model_version_id for challenger in challengers]).run(files)
    triaged = time.perf_counter()
    log.info("triage of %d files took %.2f s: %d to decode; %s", len(files), triaged - started, len(jobs),
             _counts_text(counts))
    scorer = Scorer(checkpoint, options.device, options.precision)
    scoring = ScoringPass(engine, scorer, model_version_id, run_id, options, counts, challengers)
    runner(scoring, jobs)
    models = {model_version_id: scoring.model_seconds} | {c.model_version_id: c.counts.seconds for c in challengers}
    return {"triage": round(triaged - started, 3), "decode_and_score": round(time.perf_counter() - triaged, 3),
            "model": {str(version_id): round(seconds, 3) for version_id, seconds in models.items()}}
