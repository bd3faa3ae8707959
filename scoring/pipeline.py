"""The scoring pipeline: triage files against the database, decode new ones in DataLoader workers, run the
model on batches, and commit each batch (predictions, images, file locations and failures) atomically.

Triage never decodes: a path whose size and mtime are unchanged is looked up by path; any other file is
hashed and looked up by content. Only content this model version has not handled yet is decoded.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session
from torch.utils.data import DataLoader, Dataset

from db import results
from db.engine import read_session, write_session
from db.hashing import file_sha256
from db.results import FileStat, KnownFile
from scoring import imaging
from scoring.model import Checkpoint, autocast, autocast_dtype, calibrated_probabilities, normalised_entropy

log = logging.getLogger("cxr.score")

TRIAGE_CHUNK = 2000
HASH_THREADS = 4

# Failure reasons of the scorer itself, beside the reader's (scoring.imaging.REASONS).
PREPROCESS_FAILED = "preprocess_failed"
INVALID_SCORE = "invalid_score"  # the model gave NaN or infinite probabilities
SCORE_FAILED = "score_failed"  # the model raised on this image
WRITE_FAILED = "write_failed"  # storing the image's result raised (a constraint, a value the driver refused)

# Errors that say nothing about an image (a full disk, a read-only or unreachable database, a lost connection):
# recording them as the images' failures would skip good files until they change, so they stop the run instead.
DATABASE_ERRORS = (OperationalError, InterfaceError, OSError, MemoryError)


@dataclass
class Counts:
    scanned: int = 0  # files looked at (all of the categories below)
    scored: int = 0  # scored by the model in this run
    skipped: int = 0  # content already scored by this model version (at this or another path)
    out_of_scope: int = 0  # not a frontal chest radiograph (recorded with its reason, not scored)
    failed: int = 0  # could not be read or scored in this run (recorded with reason)
    known_failures: int = 0  # failed in an earlier run and unchanged since: not retried
    deferred: int = 0  # modified moments ago, probably still being written: left for the next run

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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


@dataclass
class Job:
    """One file whose content must be decoded (and, if in scope, scored)."""

    stat: FileStat
    sha256: str
    same_content: list[FileStat] = field(default_factory=list)  # other new paths holding identical bytes


@dataclass
class Decoded:
    index: int
    tensor: torch.Tensor | None = None
    meta: dict[str, Any] | None = None
    scope: tuple[bool, str] | None = None
    error: tuple[str, str] | None = None


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
    """Sorts discovered files into skipped / out of scope / known failures / to decode, recording what it can."""

    def __init__(self, engine: Engine, model_version_id: int, run_id: int, options: ScoringOptions,
                 counts: Counts):
        self.engine, self.model_version_id, self.run_id = engine, model_version_id, run_id
        self.options, self.counts = options, counts
        self.jobs: list[Job] = []
        self._job_by_sha: dict[str, Job] = {}

    def run(self, files: list[FileStat]) -> list[Job]:
        with ThreadPoolExecutor(HASH_THREADS) as hashers:
            for start in range(0, len(files), TRIAGE_CHUNK):
                self._triage_chunk(files[start:start + TRIAGE_CHUNK], hashers)
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
            results.update_run(session, self.run_id, **self.counts.as_dict())

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


# --- decoding (in DataLoader workers) -------------------------------------------------------------------

class DecodeDataset(Dataset):
    """Reads, checks scope and preprocesses one file; errors come back as data, never as exceptions."""

    def __init__(self, jobs: list[Job], preprocess: Callable[[Any], torch.Tensor], read_timeout: float,
                 min_side: int | None = None):
        self.paths = [job.stat.path for job in jobs]
        self.preprocess = preprocess
        self.read_timeout = read_timeout
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Decoded:
        try:
            image = imaging.read_xray(self.paths[index], timeout=self.read_timeout, min_side=self.min_side)
        except imaging.XRayReadError as exc:
            return Decoded(index, error=(exc.reason, str(exc)))
        scope = imaging.in_scope(image.meta)
        if not scope[0]:
            return Decoded(index, meta=image.meta, scope=scope)
        try:
            tensor = self.preprocess(image.pixels)
        except (ValueError, RuntimeError) as exc:
            return Decoded(index, meta=image.meta, error=(PREPROCESS_FAILED, f"{self.paths[index]}: {exc}"))
        return Decoded(index, tensor=tensor, meta=image.meta, scope=scope)


def collate_decoded(items: list[Decoded]) -> tuple[list[Decoded], torch.Tensor | None]:
    tensors = [item.tensor for item in items if item.tensor is not None]
    for item in items:
        item.tensor = None  # the batch tensor carries the pixels; don't send them twice
    return items, (torch.stack(tensors) if tensors else None)


def make_loader(jobs: list[Job], checkpoint: Checkpoint, options: ScoringOptions) -> DataLoader:
    on_cuda = options.device.type == "cuda"
    return DataLoader(
        DecodeDataset(jobs, checkpoint.preprocessing, options.read_timeout,
                      2 * checkpoint.input_size if options.reduced_decode else None),
        batch_size=options.batch_size,
        num_workers=options.workers,
        collate_fn=collate_decoded,
        pin_memory=on_cuda,
        prefetch_factor=4 if options.workers > 0 else None,
        worker_init_fn=_start_worker_reader,
    )


def _start_worker_reader(_worker_id: int) -> None:
    """Each worker starts its isolated decoder at once, so the first batch doesn't wait for it."""
    imaging.start_reader_process()


# --- the model ------------------------------------------------------------------------------------------

class Scorer:
    """The checkpoint's model on a device, returning calibrated probabilities for a batch.

    channels_last everywhere (oneDNN and cuDNN convolutions are faster that way); the precision is the one
    training uses too (:func:`scoring.model.autocast_dtype`).
    """

    def __init__(self, checkpoint: Checkpoint, device: torch.device, precision: str = "auto"):
        self.checkpoint, self.device = checkpoint, device
        self.model = checkpoint.build().to(device, memory_format=torch.channels_last)
        self.autocast_dtype = autocast_dtype(device, precision)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=self.device.type == "cuda", memory_format=torch.channels_last)
        with autocast(self.device, self.autocast_dtype):
            logits = self.model(batch)
        return calibrated_probabilities(logits.float(), self.checkpoint.temperature).cpu()


# --- the run --------------------------------------------------------------------------------------------

class ScoringPass:
    """Decodes and scores the triaged jobs, committing one transaction per batch."""

    def __init__(self, engine: Engine, scorer: Scorer, model_version_id: int, run_id: int,
                 options: ScoringOptions, counts: Counts):
        self.engine, self.scorer = engine, scorer
        self.model_version_id, self.run_id = model_version_id, run_id
        self.options, self.counts = options, counts

    def run(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        loader = make_loader(jobs, self.scorer.checkpoint, self.options)
        done = 0
        with progress_bar(len(jobs), self.options.progress_bar) as advance:
            for items, batch in loader:
                self._commit_batch(jobs, items, self._score(batch))
                done += len(items)
                advance(len(items))
                if not self.options.progress_bar and (done // self.options.log_every
                                                      != (done - len(items)) // self.options.log_every):
                    log.info("decoded %d/%d new files: %s", done, len(jobs), _counts_text(self.counts))

    def _score(self, batch: torch.Tensor | None) -> list[torch.Tensor | None]:
        """A row of probabilities per in-scope image; None for an image the model raised on."""
        if batch is None:
            return []
        try:
            return list(self.scorer.probabilities(batch))
        except RuntimeError as exc:  # e.g. out of memory on the GPU: one image at a time, failing alone
            log.warning("the model failed on a batch of %d images (%s); scoring them one by one", len(batch),
                        type(exc).__name__)
        rows: list[torch.Tensor | None] = []
        for image in batch:
            try:
                rows.append(self.scorer.probabilities(image[None])[0])
            except RuntimeError:
                rows.append(None)
        return rows

    def _commit_batch(self, jobs: list[Job], items: list[Decoded], rows: list[torch.Tensor | None]) -> None:
        """One transaction per batch. Its writes go in one savepoint; if any of them fails, the batch is written
        again image by image, each in its own savepoint, so one bad row becomes that image's recorded failure
        and never costs the rest of the batch (nor stops the run: the same file would stop every rerun)."""
        outcomes = self._outcomes(jobs, items, rows)
        with write_session(self.engine) as session:
            try:
                with session.begin_nested():
                    for outcome in outcomes:
                        outcome.write(session, self.model_version_id, self.run_id)
            except DATABASE_ERRORS:
                raise  # the database or the machine, not this batch's images: the run stops, nothing half-written
            except Exception as exc:
                log.warning("storing a batch of %d files failed (%s); storing them one by one", len(outcomes),
                            type(exc).__name__)
                outcomes = [self._write_alone(session, outcome) for outcome in outcomes]
            for outcome in outcomes:
                outcome.count(self.counts)
            results.update_run(session, self.run_id, **self.counts.as_dict())

    def _outcomes(self, jobs: list[Job], items: list[Decoded], rows: list[torch.Tensor | None]) -> list[Outcome]:
        in_scope_rows = iter(rows)
        outcomes = []
        for item in items:
            job = jobs[item.index]
            if item.error is not None:
                outcomes.append(Outcome(job, error=item.error))
                continue
            in_scope, reason = item.scope
            outcome = Outcome(job, meta=item.meta, scope=item.scope)
            if in_scope:
                row = next(in_scope_rows)
                if row is None:
                    outcome = Outcome(job, error=(SCORE_FAILED, f"{job.stat.path}: the model failed on this image"))
                elif not torch.isfinite(row).all():
                    outcome = Outcome(job, error=(INVALID_SCORE, f"{job.stat.path}: the model gave non-finite "
                                                                 "probabilities for this image"))
                else:
                    outcome.prediction = summarise(row, self.scorer.checkpoint.classes)
            outcomes.append(outcome)
        return outcomes

    def _write_alone(self, session: Session, outcome: Outcome) -> Outcome:
        try:
            with session.begin_nested():
                outcome.write(session, self.model_version_id, self.run_id)
            return outcome
        except DATABASE_ERRORS:
            raise
        except Exception as exc:
            # The type only: the exception's text may quote the row's values, which come from file headers.
            log.warning("could not store the result of one file (%s); recorded as %s", type(exc).__name__,
                        WRITE_FAILED)
            failed = Outcome(outcome.job, error=(WRITE_FAILED, f"{outcome.job.stat.path}: storing the result "
                                                               f"failed ({type(exc).__name__})"))
            with session.begin_nested():
                failed.write(session, self.model_version_id, self.run_id)
            return failed


@dataclass
class Outcome:
    """What one decoded job adds to the database: a failure, an out-of-scope image, or a scored image."""

    job: Job
    error: tuple[str, str] | None = None
    meta: dict[str, Any] | None = None
    scope: tuple[bool, str] | None = None
    prediction: dict[str, Any] | None = None

    @property
    def stats(self) -> list[FileStat]:
        return [self.job.stat, *self.job.same_content]

    def write(self, session: Session, model_version_id: int, run_id: int) -> None:
        if self.error is not None:
            for stat in self.stats:
                results.add_failure(session, run_id, stat, *self.error)
            return
        in_scope, reason = self.scope
        image_id = results.upsert_image(session, sha256=self.job.sha256, stat=self.job.stat, meta=self.meta,
                                        in_scope=in_scope, scope_reason=reason)
        for stat in self.stats:
            results.record_file(session, stat, image_id)
        if self.prediction is not None:
            results.add_prediction(session, image_id=image_id, model_version_id=model_version_id, run_id=run_id,
                                   **self.prediction)

    def count(self, counts: Counts) -> None:
        if self.error is not None:
            counts.failed += len(self.stats)
        elif self.prediction is None:
            counts.out_of_scope += len(self.stats)
        else:
            counts.scored += 1
            counts.skipped += len(self.job.same_content)


def summarise(probabilities: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    best = int(probabilities.argmax())
    return {
        "probabilities": {name: round(float(p), 6) for name, p in zip(classes, probabilities, strict=True)},
        "predicted_class": classes[best],
        "confidence": float(probabilities[best]),
        "entropy": float(normalised_entropy(probabilities)),
    }


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
          options: ScoringOptions, counts: Counts) -> dict[str, float]:
    """Triage then score ``files``, updating ``counts``; returns the seconds each phase took."""
    started = time.perf_counter()
    jobs = Triage(engine, model_version_id, run_id, options, counts).run(files)
    triaged = time.perf_counter()
    log.info("triage of %d files took %.2f s: %d to decode; %s", len(files), triaged - started, len(jobs),
             _counts_text(counts))
    scorer = Scorer(checkpoint, options.device, options.precision)
    ScoringPass(engine, scorer, model_version_id, run_id, options, counts).run(jobs)
    return {"triage": round(triaged - started, 3), "decode_and_score": round(time.perf_counter() - triaged, 3)}
